#!/usr/bin/env python
"""Train a posterior network (pegleg.sed.npe) on emulator simulations (long job; never run by CI).

For a filter set and a redshift range, every epoch draws fresh parameters from the
emulator's prior, computes fluxes with the emulator and adds noise with pegleg's noise
model (:mod:`pegleg.sed.simulate`) over a wide range of conditions -- reference-band S/N
log-uniform in [0.3, 1000], per-band depth scatter 0.3 dex, an error floor uniform in
[0, 0.1], the emulator's own sigma, and randomly missing bands (each band dropped with a
per-pixel probability up to 0.3; in 15% of pixels only 4-8 random bands are kept).  The
network learns ``q(theta | data)`` by maximum likelihood (mixture-density network,
PyTorch on the CPU); the result is written pickle-free with its provenance and a
held-out validation (negative log-likelihood and 68% coverage of the summary
quantities) in its metadata.

Usage::

    OMP_NUM_THREADS=1 python scripts/train_posterior.py OUT.npz [--minutes 40] \
        [--emulator default] [--filters F435W,...] [--zmin 0.1 --zmax 7]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

import numpy as np

from pegleg.sed import load_emulator
from pegleg.sed.fit import JOF_FILTERS, effective_error
from pegleg.sed.npe import (MASS_PER_FLUX, SUMMARY_NAMES, TRANSFORMS, ParameterTransform, PosteriorNetwork,
                            features, head_size, save_posterior_network)
from pegleg.sed.simulate import emulator_fraction


SNR_RANGE = (0.3, 1000.0)


def parameter_transform(emu, kind):
    """The proposal's :class:`~pegleg.sed.npe.ParameterTransform` for ``emu``'s fitted parameters."""
    names = [p for p in emu.param_names if p not in ("log_mass_formed", "redshift")]
    bounds = emu.bounds[[emu.param_names.index(p) for p in names]]
    return ParameterTransform(kind, names, bounds, {p: emu.prior[p] for p in names if p in emu.prior})


def simulate(emu, filters, n, rng, zrange, snr_range=SNR_RANGE, transform=None):
    """(X features, targets A, targets B) for n fresh simulated pixels."""
    P = len(emu.param_names)
    im, iz = emu.param_names.index("log_mass_formed"), emu.param_names.index("redshift")
    fit_idx = [i for i in range(P) if i not in (im, iz)]
    theta = emu.sample_prior(n, seed=rng)
    theta[:, iz] = rng.uniform(zrange[0], zrange[1], n)
    theta[:, im] = 9.0
    flux_true, der = emu.evaluate(theta, filters)
    nb = len(filters)
    snr = 10 ** rng.uniform(np.log10(snr_range[0]), np.log10(snr_range[1]), n)
    depth = 10 ** (0.3 * rng.standard_normal((n, nb)))
    depth[:, -1] = 1.0
    error = (flux_true[:, -1] / snr)[:, None] * depth
    floor = rng.uniform(0.0, 0.1, n)[:, None]
    efrac = emulator_fraction(emu, filters)
    sig_true = effective_error(flux_true, error, floor, efrac)
    flux = flux_true + sig_true * rng.standard_normal(flux_true.shape)
    valid = rng.random((n, nb)) >= rng.uniform(0.0, 0.3, n)[:, None]
    few = rng.random(n) < 0.15
    if few.any():
        keep = rng.integers(4, 9, few.sum())
        order = np.argsort(rng.random((few.sum(), nb)), axis=1)
        valid[few] = order < keep[:, None]
    valid[~valid.any(axis=1), -1] = True
    sig = effective_error(flux, error, floor, efrac)
    X, log_scale = features(flux, sig, valid, theta[:, iz])
    transform = parameter_transform(emu, "logit") if transform is None else transform
    ya = np.column_stack([transform.forward(theta[:, fit_idx]), theta[:, im] - log_scale])
    yb = np.column_stack([der["log_stellar_mass"] - log_scale, der["log_sfr100"] - log_scale,
                          der["log_sfr10"] - log_scale, der["log_age_mw"]])
    ok = np.all(np.isfinite(ya), axis=1) & np.all(np.isfinite(yb), axis=1) & np.all(np.isfinite(X), axis=1)
    return X[ok], ya[ok], yb[ok]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--emulator", default="default")
    ap.add_argument("--filters", default=",".join(JOF_FILTERS))
    ap.add_argument("--zmin", type=float, default=0.1)
    ap.add_argument("--zmax", type=float, default=7.0)
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--width", type=int, default=384)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--ka", type=int, default=8, help="mixture components of the proposal")
    ap.add_argument("--kb", type=int, default=6, help="mixture components of the summary")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epoch-size", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--snr-min", type=float, default=SNR_RANGE[0])
    ap.add_argument("--snr-max", type=float, default=SNR_RANGE[1])
    ap.add_argument("--init", default=None, help="start from this network file (same architecture): fine-tuning")
    ap.add_argument("--transform", default="normal", choices=TRANSFORMS,
                    help="proposal variables: prior CDF -> standard normal (default) or logit of the bounds")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    emu = load_emulator(args.emulator)
    filters = [f.strip() for f in args.filters.split(",") if f.strip()]
    zr = (args.zmin, args.zmax)
    P = len(emu.param_names)
    im, iz = emu.param_names.index("log_mass_formed"), emu.param_names.index("redshift")
    fit_names = [emu.param_names[i] for i in range(P) if i not in (im, iz)]
    da, db = len(fit_names) + 1, len(SUMMARY_NAMES)

    sr = (args.snr_min, args.snr_max)
    tr = parameter_transform(emu, args.transform)
    Xv, yav, ybv = simulate(emu, filters, 20_000, np.random.default_rng(args.seed + 1), zr, sr, tr)
    X0, ya0, yb0 = simulate(emu, filters, 100_000, rng, zr, sr, tr)
    x_mean, x_std = X0.mean(0), X0.std(0) + 1e-6
    ya_mean, ya_std = ya0.mean(0), ya0.std(0)
    yb_mean, yb_std = yb0.mean(0), yb0.std(0)
    init = None
    if args.init:
        from pegleg.sed.npe import load_posterior_network

        init = load_posterior_network(args.init)
        x_mean, x_std = init.x_mean.astype(np.float64), init.x_std.astype(np.float64)
        ya_mean, ya_std, yb_mean, yb_std = init.ya_mean, init.ya_std, init.yb_mean, init.yb_std

    n_in = X0.shape[1]
    trunk, w = [], n_in
    for _ in range(args.depth):
        trunk += [torch.nn.Linear(w, args.width), torch.nn.SiLU()]
        w = args.width
    trunk = torch.nn.Sequential(*trunk)
    headA = torch.nn.Linear(w, head_size(args.ka, da))
    headB = torch.nn.Linear(w, head_size(args.kb, db))
    params = list(trunk.parameters()) + list(headA.parameters()) + list(headB.parameters())
    if init is not None:
        with torch.no_grad():
            lin = [m for m in trunk if isinstance(m, torch.nn.Linear)]
            for m, W, b in zip(lin, init.trunk_weights, init.trunk_biases):
                m.weight.copy_(torch.tensor(W.T))
                m.bias.copy_(torch.tensor(b))
            headA.weight.copy_(torch.tensor(init.WA.T))
            headA.bias.copy_(torch.tensor(init.bA))
            headB.weight.copy_(torch.tensor(init.WB.T))
            headB.bias.copy_(torch.tensor(init.bB))
    opt = torch.optim.Adam(params, lr=args.lr)
    D = torch.distributions

    def mixture(y, k, d):
        n = y.shape[0]
        logits = y[:, :k]
        o = k
        mu = y[:, o:o + k * d].reshape(n, k, d)
        o += k * d
        draw = y[:, o:o + k * d].reshape(n, k, d)
        o += k * d
        off = y[:, o:].reshape(n, k, d * (d - 1) // 2)
        L = torch.zeros(n, k, d, d)
        i, j = torch.tril_indices(d, d, -1)
        L[:, :, i, j] = off
        idx = torch.arange(d)
        L[:, :, idx, idx] = torch.nn.functional.softplus(draw) + 1e-3
        return D.MixtureSameFamily(D.Categorical(logits=logits), D.MultivariateNormal(mu, scale_tril=L))

    def nll(X, ya, yb):
        h = trunk(X)
        la = mixture(headA(h), args.ka, da).log_prob(ya)
        lb = mixture(headB(h), args.kb, db).log_prob(yb)
        return -(la.mean() + lb.mean()), -la.mean(), -lb.mean()

    def tens(X, ya, yb):
        return (torch.tensor((X - x_mean) / x_std, dtype=torch.float32),
                torch.tensor((ya - ya_mean) / ya_std, dtype=torch.float32),
                torch.tensor((yb - yb_mean) / yb_std, dtype=torch.float32))

    Vt = tens(Xv, yav, ybv)
    t0 = time.perf_counter()
    budget = args.minutes * 60.0
    epoch, steps, Xe, yae, ybe = 0, 0, X0, ya0, yb0
    best = (np.inf, None)
    while True:
        Xt, yat, ybt = tens(Xe, yae, ybe)
        perm = torch.randperm(len(Xt))
        for i in range(0, len(Xt) - args.batch + 1, args.batch):
            frac = min((time.perf_counter() - t0) / budget, 1.0)
            for g in opt.param_groups:
                g["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * frac))
            idx = perm[i:i + args.batch]
            loss, _, _ = nll(Xt[idx], yat[idx], ybt[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            steps += 1
        epoch += 1
        with torch.no_grad():
            v, va, vb = nll(*Vt)
        elapsed = time.perf_counter() - t0
        print(f"epoch {epoch}  steps {steps}  val nll {float(v):.4f} (A {float(va):.3f}, B {float(vb):.3f})"
              f"  ({elapsed:.0f} s)", flush=True)
        if float(v) < best[0]:
            best = (float(v), [p.detach().clone() for p in params])
        if elapsed >= budget:
            break
        Xe, yae, ybe = simulate(emu, filters, args.epoch_size, rng, zr, sr, tr)

    with torch.no_grad():
        for p, b in zip(params, best[1]):
            p.copy_(b)
    lin = [m for m in trunk if isinstance(m, torch.nn.Linear)]
    meta = {
        "filters": filters, "param_names": fit_names + [MASS_PER_FLUX],
        "bounds": emu.bounds[[emu.param_names.index(n) for n in fit_names]].tolist(),
        "transform": args.transform, "prior": {n: emu.prior[n] for n in fit_names if n in emu.prior},
        "summary_names": list(SUMMARY_NAMES), "n_components": [args.ka, args.kb],
        "activation": "silu", "redshift_range": [args.zmin, args.zmax],
        "emulator": {"name": str(args.emulator), "training": emu.metadata.get("training", {}).get("date")},
        "training": {"seconds": round(time.perf_counter() - t0, 1), "epochs": epoch, "steps": steps,
                     "batch": args.batch, "lr": args.lr, "width": args.width, "depth": args.depth,
                     "epoch_size": args.epoch_size, "seed": args.seed, "init": args.init,
                     "init_training": init.metadata.get("training") if init is not None else None, "torch": torch.__version__,
                     "best_val_nll": best[0], "noise_model": {
                         "snr_reference": [args.snr_min, args.snr_max], "depth_scatter_dex": 0.3, "error_floor": [0.0, 0.1],
                         "emulator_sigma": True, "band_drop_max": 0.3, "few_bands_fraction": 0.15},
                     "command": " ".join(sys.argv),
                     "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")},
    }
    net = PosteriorNetwork([m.weight.detach().numpy().T for m in lin], [m.bias.detach().numpy() for m in lin],
                           headA.weight.detach().numpy().T, headA.bias.detach().numpy(),
                           headB.weight.detach().numpy().T, headB.bias.detach().numpy(),
                           x_mean, x_std, ya_mean, ya_std, yb_mean, yb_std, meta, name=str(args.out))
    save_posterior_network(net, args.out)
    print(f"wrote {args.out} (best validation nll {best[0]:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
