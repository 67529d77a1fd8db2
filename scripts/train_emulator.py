"""Train pegleg's SED emulator on a bagpipes training set (long job; never run by CI).

Input: the chunk folder written by ``scripts/make_training_set.py`` (``chunk_*.npz`` +
``provenance.json``).  Output: one pickle-free emulator file (``pegleg.sed.save_emulator``)
with its training provenance and held-out accuracy in the metadata, ready to be copied to
``pegleg/sed/data/default_emulator.npz``.

Targets (what trained well in the prototype): the magnitude of the reference filter
(F444W) at ``log_mass_formed = 10``, every other filter as a colour relative to it,
softened as ``-2.5 log10(f / f_ref + 1e-8)`` so IGM-absorbed bands stay finite, and the
derived quantities relative to the formed mass.  The network never sees the mass: flux
is exactly linear in it (:class:`pegleg.sed.MLPEmulator` adds it back).

Training: PyTorch (CPU), Adam with a cosine learning-rate schedule, mean absolute
error on standardised targets; ``sigma`` per filter is the 68th percentile of the
held-out absolute magnitude errors.  Deterministic for a seed (single thread).

Usage::

    python scripts/train_emulator.py TRAINING_DIR OUT.npz [--epochs 60] [--width 256] [--depth 4]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np

REFERENCE_FILTER = "F444W"
REFERENCE_LOG_MASS = 10.0
DERIVED = ("log_stellar_mass", "log_sfr100", "log_sfr10", "log_age_mw", "av")
MASS_SCALED = ("log_stellar_mass", "log_sfr100", "log_sfr10")
SOFTENING = 1e-8
#: Magnitudes are capped here before training (fainter = undetectable; colours saturate at 20 mag).
MAG_CAP = 99.0
#: Accuracy and sigma use only bands at most this much fainter than F444W (detectable ones).
DETECTABLE_MAG = 10.0
#: log10 SFR floor: models with no star formation in a window get this (bagpipes gives -inf).
LOG_SFR_FLOOR = -6.0


def load_training_set(folder: Path):
    """Concatenate all chunks: params (N, P), mags (N, F), derived dict, names, provenance."""
    files = sorted(folder.glob("chunk_*.npz"))
    if not files:
        sys.exit(f"no chunk_*.npz files in {folder}")
    params, mags, derived = [], [], {k: [] for k in DERIVED}
    for f in files:
        with np.load(f, allow_pickle=False) as d:
            params.append(d["params"])
            mags.append(d["mags"])
            for k in DERIVED:
                derived[k].append(d[k])
            names = [str(s) for s in d["param_names"]]
            filters = [str(s) for s in d["filters"]]
    prov = json.loads((folder / "provenance.json").read_text())
    return (np.concatenate(params), np.concatenate(mags), {k: np.concatenate(v) for k, v in derived.items()},
            names, filters, prov, len(files))


def build_targets(params, mags, derived, names, filters):
    """(X without mass, Y, output names) in the emulator's layout."""
    im = names.index("log_mass_formed")
    dm = params[:, im] - REFERENCE_LOG_MASS
    iref = filters.index(REFERENCE_FILTER)
    mag_ref = mags[:, iref] + 2.5 * dm                         # at the reference mass
    flux_ratio = 10 ** (-0.4 * (mags - mags[:, [iref]]))
    colors = -2.5 * np.log10(flux_ratio + SOFTENING)
    others = [i for i in range(len(filters)) if i != iref]
    cols = [mag_ref[:, None], colors[:, others]]
    outputs = [f"mag:{REFERENCE_FILTER}"] + [f"color:{filters[i]}" for i in others]
    for k in DERIVED:
        v = derived[k].astype(np.float64).copy()
        if k.startswith("log_sfr"):
            v = np.maximum(np.nan_to_num(v, neginf=LOG_SFR_FLOOR), LOG_SFR_FLOOR + dm)
        if k in MASS_SCALED:
            v = v - dm
        cols.append(v[:, None])
        outputs.append(k)
    X = np.delete(params, im, axis=1)
    return X.astype(np.float64), np.hstack(cols).astype(np.float64), outputs


def _prior(prov: dict, names) -> dict:
    """The fitting prior in the emulator's format from the generator's provenance."""
    spec = prov.get("model", {}).get("dsfr_prior", {})
    if not spec:
        return {}
    t = {"type": "student_t", "loc": 0.0, "scale": float(spec["scale"]), "nu": float(spec["nu"]),
         "clip": float(spec.get("truncated_at", np.inf))}
    return {n: dict(t) for n in names if n.startswith("dsfr")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("training_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--holdout", type=float, default=0.05, help="fraction kept out for accuracy and sigma")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 = deterministic)")
    ap.add_argument("--censor-mag", type=float, default=None,
                    help="colours fainter than this (mag below the reference filter) are censored: "
                         "the loss only asks the prediction to be at least this faint")
    ap.add_argument("--mse-weight", type=float, default=0.0,
                    help="add this times the mean squared error to the L1 loss (pulls in the tail)")
    args = ap.parse_args(argv)

    import torch

    from pegleg.sed.emulator import MLPEmulator, save_emulator

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    params, mags, derived, names, filters, prov, nchunks = load_training_set(args.training_dir)
    # IGM-absorbed bands reach hundreds of mag (or +inf): keep those models (most at z > 2!)
    # and let the softened colours saturate; drop only rows with NaN
    good = ~np.any(np.isnan(mags), axis=1)
    mags = np.minimum(mags, MAG_CAP)
    X, Y, outputs = build_targets(params[good], mags[good], {k: v[good] for k, v in derived.items()}, names, filters)
    ok = np.all(np.isfinite(Y), axis=1)
    X, Y = X[ok], Y[ok]
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(X))
    nho = max(int(args.holdout * len(X)), 1)
    ho, tr = order[:nho], order[nho:]
    x_mean, x_std = X[tr].mean(0), X[tr].std(0) + 1e-12
    y_mean, y_std = Y[tr].mean(0), Y[tr].std(0) + 1e-12
    Xt = torch.tensor((X[tr] - x_mean) / x_std, dtype=torch.float32)
    Yt = torch.tensor((Y[tr] - y_mean) / y_std, dtype=torch.float32)
    censored = torch.zeros_like(Yt, dtype=torch.bool)
    cap_t = torch.zeros(Y.shape[1], dtype=torch.float32)
    if args.censor_mag is not None:
        is_colour = np.array([o.startswith("color:") for o in outputs])
        cap = (args.censor_mag - y_mean) / y_std
        cap_t = torch.tensor(np.where(is_colour, cap, np.inf), dtype=torch.float32)
        censored = Yt > cap_t
        print(f"censored {float(censored.float().mean()):.3%} of the targets (colours > {args.censor_mag} mag)")
    layers, n_in = [], X.shape[1]
    for _ in range(args.depth):
        layers += [torch.nn.Linear(n_in, args.width), torch.nn.GELU(approximate="tanh")]
        n_in = args.width
    layers.append(torch.nn.Linear(n_in, Y.shape[1]))
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    steps = args.epochs * int(np.ceil(len(Xt) / args.batch))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        perm = torch.randperm(len(Xt), generator=gen)
        total = 0.0
        for i in range(0, len(Xt), args.batch):
            idx = perm[i:i + args.batch]
            pred, targ, cen = net(Xt[idx]), Yt[idx], censored[idx]
            # censored targets only need the prediction to be at least as faint as the cap
            resid = torch.where(cen, torch.relu(cap_t - pred), pred - targ)
            loss = resid.abs().mean()
            if args.mse_weight:
                loss = loss + args.mse_weight * (resid ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{args.epochs}  train loss {total / len(Xt):.5f}  ({time.perf_counter() - t0:.0f} s)",
              flush=True)

    lin = [m for m in net if isinstance(m, torch.nn.Linear)]
    weights = [m.weight.detach().numpy().T.copy() for m in lin]
    biases = [m.bias.detach().numpy().copy() for m in lin]
    meta = {
        "param_names": names, "bounds": prov["bounds"], "prior": _prior(prov, names),
        "filters": filters, "reference_filter": REFERENCE_FILTER, "reference_log_mass": REFERENCE_LOG_MASS,
        "outputs": outputs, "activation": "gelu_tanh", "mass_scaled_outputs": list(MASS_SCALED),
        "training": {"set": str(args.training_dir), "n_chunks": nchunks, "n_train": int(len(tr)),
                     "n_holdout": int(nho), "generator": prov, "epochs": args.epochs, "width": args.width,
                     "depth": args.depth, "batch": args.batch, "lr": args.lr, "seed": args.seed,
                     "censor_mag": args.censor_mag, "mse_weight": args.mse_weight,
                     "threads": args.threads,
                     "torch": torch.__version__, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                     "seconds": round(time.perf_counter() - t0, 1)},
    }
    emu = MLPEmulator(weights, biases, x_mean, x_std, y_mean, y_std, np.zeros(len(filters)), meta)
    p_ho = params[good][ok][ho]
    pred = emu.predict(p_ho, strict=False)
    true_ho = mags[good][ok][ho]
    err = np.abs(pred - true_ho)
    iref = filters.index(REFERENCE_FILTER)
    err[true_ho - true_ho[:, [iref]] > DETECTABLE_MAG] = np.nan  # undetectable next to F444W
    sigma = np.nanpercentile(err, 68, axis=0)
    acc = {"median_abs_mag": dict(zip(filters, np.round(np.nanmedian(err, 0), 5).tolist())),
           "p99_abs_mag": dict(zip(filters, np.round(np.nanpercentile(err, 99, 0), 5).tolist()))}
    d = emu.derived(p_ho, strict=False)
    for k in ("log_stellar_mass", "log_sfr100"):
        truth = derived[k][good][ok][ho]
        fin = np.isfinite(truth) & np.isfinite(d[k])
        acc[f"median_abs_{k}"] = float(np.median(np.abs(d[k][fin] - truth[fin])))
    meta["accuracy"] = acc
    emu = MLPEmulator(weights, biases, x_mean, x_std, y_mean, y_std, sigma, meta)
    save_emulator(emu, args.out)
    worst = max(acc["p99_abs_mag"].values())
    print(f"wrote {args.out}: held-out median |dm| {np.nanmedian(err):.4f} mag, worst-filter p99 {worst:.3f} mag, "
          f"log M* median error {acc['median_abs_log_stellar_mass']:.4f} dex")
    return 0


if __name__ == "__main__":
    sys.exit(main())
