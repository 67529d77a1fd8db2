"""Train pegleg's SFH-bin emulator (long job; never run by CI).

Input: the folder written by ``scripts/make_training_set.py --bins`` (per-bin photometry of
Sobol points over redshift, metallicity, A_V, delta, eta, log U) and, for the accuracy
and ``sigma``, a folder of full prior draws written by ``scripts/make_training_set.py``
without ``--bins`` (never used for training).  Output: one pickle-free
:class:`pegleg.sed.sfh_emulator.SFHBinEmulator` file, ready to be copied to
``pegleg/sed/data/default_emulator.npz``.

Targets (:meth:`pegleg.sed.sfh_emulator.SFHBinEmulator.targets`): per bin k and filter f,
``r_kf = m_kf - DM(z) + 2.5 log10 T_f(z)`` (the AB magnitude of one solar mass formed in
the bin, without distance and IGM, through the emulator's own tables), capped at 45 mag
fainter than the bin's F444W magnitude; the log10 surviving fraction of each bin.  With a
training set made with ``--split-dust`` (version-3 emulator, :mod:`pegleg.sed.components`)
``m_kf`` excludes the dust re-emission and the ``--max-lines`` strongest emission lines,
which the emulator adds exactly, and the network also learns ``ln(L_abs / A_V)`` per bin
(the luminosity dust absorbs and re-emits).  Entries with ``T_f < 1e-4`` (Lyman-absorbed) get a
small weight (0.05): the emulator sets their transmission to 0 (their flux is below 1e-4 of the
band's unabsorbed flux), the weight only keeps the network's outputs there sane.

Loss (PyTorch, CPU, Adam, one-cycle learning rate): the mean absolute magnitude error of
the **combined** photometry of models whose SFH is drawn from the prior afresh for every
batch (Student-t continuity prior: each bin weighted by how much light it gives, as in
the fit), plus ``--template-weight`` times the mean absolute error of the per-bin
magnitudes (0.05 on capped entries) and of the log surviving fractions.  ``sigma`` per
filter is the 68th percentile of the absolute magnitude errors on the full prior draws
(bands within 10 mag of F444W).

Usage::

    python scripts/train_sfh_emulator.py BINS_DIR FULL_DIR OUT.npz [--epochs 150] [--width 192] [--depth 3]
        [--minutes 50] [--max-lines 48]
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
CAP_MAG = 45.0
IGM_MIN = 1e-4
DETECTABLE_MAG = 10.0
INPUTS = ("redshift", "log_metallicity", "av", "delta", "eta", "log_u")
DSFR = tuple(f"dsfr{k}" for k in range(1, 7))


def load_bins(folder: Path):
    files = sorted(folder.glob("chunk_*.npz"))
    if not files:
        sys.exit(f"no chunk_*.npz files in {folder}")
    params, flux, surv, dust = [], [], [], []
    for f in files:
        with np.load(f, allow_pickle=False) as d:
            params.append(d["params"])
            flux.append(d["bin_flux"])
            surv.append(d["surviving"])
            dust.append(d["dust_lum"] if "dust_lum" in d.files else None)
            names = [str(s) for s in d["param_names"]]
            filters = [str(s) for s in d["filters"]]
    prov = json.loads((folder / "provenance.json").read_text())
    if any(d is None for d in dust) and not all(d is None for d in dust):
        sys.exit(f"{folder}: some chunks have dust_lum (--split-dust) and some do not")
    dust = None if dust[0] is None else np.concatenate(dust)
    return np.concatenate(params), np.concatenate(flux), np.concatenate(surv), dust, names, filters, prov, len(files)


def load_full(folder: Path, n_max: int):
    params, mags, mstar, sfr = [], [], [], []
    for f in sorted(folder.glob("chunk_*.npz")):
        with np.load(f, allow_pickle=False) as d:
            params.append(d["params"])
            mags.append(d["mags"])
            mstar.append(d["log_stellar_mass"])
            sfr.append(d["log_sfr100"])
        if sum(len(p) for p in params) >= n_max:
            break
    cut = lambda a: np.concatenate(a)[-n_max:]  # noqa: E731  the END of the set (least used before)
    return cut(params), cut(mags), cut(mstar), cut(sfr)


def tables(filters, max_lines=None, components=True):
    """The emulator's tables: SFH grid, IGM transmission, distance modulus and (with
    ``components``) the exact line and dust-emission tables."""
    from pegleg.sed import components as comp
    from pegleg.sed import sps

    g = sps.sfh_age_grid()
    keep = g["z"] <= 11.0
    igm_z = np.round(np.arange(1001) * 0.01, 6)             # 0 ... 10 (bagpipes IGM grid limit)
    t = sps.igm_band_transmission(filters, np.maximum(igm_z, 1e-4))
    lnz = np.linspace(np.log(0.009), np.log(10.02), 2000)
    out = {"sfh_ages": g["ages"], "sfh_widths": g["widths"], "sfh_z": g["z"][keep],
           "sfh_age_gyr": g["age_gyr"][keep], "igm_z": igm_z, "igm_trans": t,
           "dm_lnz": lnz, "dm": sps.distance_modulus(np.exp(lnz))}
    if components:
        out.update(comp.build_tables(filters, max_lines=max_lines))
    return out


def prior_dsfr(rng, n):
    """(n, 6) ``dsfr`` draws from the fitting prior (:func:`pegleg.sed.sps.sample_prior`)."""
    from pegleg.sed import sps

    return sps.sample_prior(n, seed=rng)[:, [sps.PARAM_NAMES.index(d) for d in DSFR]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bins_dir", type=Path)
    ap.add_argument("full_dir", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--epochs", type=int, default=150)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--template-weight", type=float, default=0.3)
    ap.add_argument("--holdout", type=float, default=0.03)
    ap.add_argument("--n-full", type=int, default=20000, help="full prior draws for accuracy and sigma")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this SFH-bin emulator's weights and normalisations (fine-tuning)")
    ap.add_argument("--mse-weight", type=float, default=0.0,
                    help="add this times the mean squared combined error (mag^2) to the loss: pulls in the tail")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-lines", type=int, default=32,
                    help="emission lines computed exactly (the strongest; with a --split-dust training set)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="train for this long instead of --epochs: the one-cycle learning rate follows the "
                         "elapsed fraction of the budget (not bit-reproducible)")
    args = ap.parse_args(argv)

    import torch

    from pegleg.sed import sps
    from pegleg.sed.emulator import save_emulator
    from pegleg.sed.sfh import BinGrid
    from pegleg.sed.sfh_emulator import SFHBinEmulator

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    params, flux, surv, dust_lum, names, filters, prov, nchunks = load_bins(args.bins_dir)
    F = len(filters)
    use_comp = dust_lum is not None
    tab = tables(filters, args.max_lines, components=use_comp)
    n_out = 7 * F + 7 * (2 if use_comp else 1)
    grid = BinGrid.from_arrays(tab)
    iz = names.index("redshift")
    meta = {"param_names": names, "bounds": sps.BOUNDS.tolist(),
            "prior": {n: {"type": "student_t", "loc": 0.0, "scale": sps.DSFR_SCALE, "nu": sps.DSFR_NU,
                          "clip": sps.DSFR_LIMIT} for n in DSFR},
            "filters": filters, "activation": "gelu_tanh", "inputs": list(INPUTS), "dsfr_names": list(DSFR),
            "training": {}, "accuracy": {}}
    # a network-less instance only for the tables' interpolation (the same code as inference)
    dummy = SFHBinEmulator([np.zeros((len(INPUTS), n_out))], [np.zeros(n_out)], np.zeros(len(INPUTS)),
                           np.ones(len(INPUTS)), np.zeros(n_out), np.ones(n_out), np.zeros(F), tab, meta)
    z = params[:, iz]
    T = dummy.igm_transmission(z).astype(np.float64)                    # (n, F)
    DM = dummy.distance_modulus(z)
    r, q, lines = dummy.targets(params, flux, dust_lum)
    if use_comp:
        # the smooth part can only go below zero through rounding: floor it at 1e-6 of the bin
        ref = -2.5 * np.log10(flux * 10.0 ** (0.4 * DM)[:, None, None]) + 23.9 + \
            2.5 * np.log10(np.maximum(T, 1e-30))[:, None, :]
        bad = ~(r < ref + 15.0)
        print(f"lines: {dummy.components.n_lines}; smooth part floored at 1e-6 of the bin flux in "
              f"{bad.mean():.4%} of entries", flush=True)
        r = np.where(bad, ref + 15.0, r)
        av = params[:, names.index("av")]
        dresp = dummy.components.dust_response(z, np.arange(F)).astype(np.float64)
    iref = filters.index(REFERENCE_FILTER)
    cap = r[:, :, [iref]] + CAP_MAG
    capped = ~(r < cap)
    r = np.where(capped, cap, r)
    use = (T >= IGM_MIN)[:, None, :] & np.isfinite(r)
    r = np.where(np.isfinite(r), r, cap)
    w_tmpl = np.where(use & ~capped, 1.0, 0.05)
    lsurv = np.log10(surv)
    X = params[:, [names.index(n) for n in INPUTS]]
    Y = np.concatenate([r.reshape(len(r), -1), lsurv] + ([q] if use_comp else []), axis=1)
    bw, _ = grid.bin_sums(z)                                             # (n, 7) bin widths (yr)
    print(f"{len(X)} models, {F} filters; capped {capped.mean():.3%}, IGM-masked {(~use).mean():.3%} "
          f"of the per-bin entries ({time.perf_counter() - t0:.0f} s)", flush=True)

    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(X))
    nho = max(int(args.holdout * len(X)), 1)
    ho, tr = order[:nho], order[nho:]
    x_mean, x_std = X[tr].mean(0), X[tr].std(0) + 1e-12
    y_mean, y_std = Y[tr].mean(0), Y[tr].std(0) + 1e-6
    init = None
    if args.init is not None:
        from pegleg.sed.emulator import load_emulator

        init = load_emulator(str(args.init))
        x_mean, x_std = init.x_mean.astype(np.float64), init.x_std.astype(np.float64)
        y_mean, y_std = init.y_mean.astype(np.float64), init.y_std.astype(np.float64)
    tt = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    Xt, Yt = tt((X - x_mean) / x_std), tt((Y - y_mean) / y_std)
    Wt = tt(np.concatenate([w_tmpl.reshape(len(r), -1), np.ones((len(r), n_out - 7 * F))], axis=1))
    ysd = tt(y_std)
    ln_w = tt(np.log(np.maximum(bw, 1e-30)))
    fmask = tt(use.all(axis=1))                                          # (n, F) band usable for every bin
    Yr = tt(r)
    if use_comp:
        ln_T = tt(np.log(np.maximum(T, 1e-30)))                          # (n, F)
        ln_lines = tt(np.log(lines + 1e-30))                             # (n, 2, F)
        ln_dresp = tt(np.log(dresp + 1e-30) + np.log(av)[:, None])       # (n, F), with ln A_V
        Yq = tt(q)
    layers, n_in = [], X.shape[1]
    for _ in range(args.depth):
        layers += [torch.nn.Linear(n_in, args.width), torch.nn.GELU(approximate="tanh")]
        n_in = args.width
    layers.append(torch.nn.Linear(n_in, Y.shape[1]))
    net = torch.nn.Sequential(*layers)
    if init is not None:
        lin = [mod for mod in net if isinstance(mod, torch.nn.Linear)]
        if len(lin) != len(init.weights) or any(m.weight.shape != w.T.shape for m, w in zip(lin, init.weights)):
            sys.exit(f"--init {args.init}: its network shape differs from --width/--depth")
        with torch.no_grad():
            for mod, w, b in zip(lin, init.weights, init.biases):
                mod.weight.copy_(torch.tensor(w.T))
                mod.bias.copy_(torch.tensor(b))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    n_batches = int(np.ceil(len(tr) / args.batch))
    n_epochs = args.epochs if args.minutes is None else 10 ** 6
    t_start = time.perf_counter()

    def lr_at(frac):
        """One-cycle: linear warm-up over 5%, cosine down to lr / 1e4."""
        if frac < 0.05:
            return args.lr * (0.04 + 0.96 * frac / 0.05)
        return args.lr * (1e-4 + (1 - 1e-4) * 0.5 * (1 + np.cos(np.pi * min(1.0, (frac - 0.05) / 0.95))))
    gen = torch.Generator().manual_seed(args.seed)
    k_ln = -0.4 * np.log(10.0)
    tr_t = torch.tensor(tr)
    y_mean_t = tt(y_mean)

    def combined_error(pred_std, idx, dsfr):
        """|dm| of the combined photometry for SFHs ``dsfr`` (B, 6) -> (B, F)."""
        full = pred_std * ysd + y_mean_t
        pr = full[:, :7 * F].reshape(-1, 7, F)
        ls = torch.zeros(len(idx), 7)
        ls[:, 1:] = -torch.cumsum(dsfr, dim=1)
        lm = ls * np.log(10.0) + ln_w[idx]                               # ln bin mass (unnormalised)
        lm = lm[:, :, None]
        if not use_comp:
            a = torch.logsumexp(lm + k_ln * pr, dim=1)
            b = torch.logsumexp(lm + k_ln * Yr[idx], dim=1)
            return (a - b).abs() / -k_ln * fmask[idx]
        # smooth part (IGM-transmitted) + exact lines of bins 0-1 + dust re-emission of every bin
        lt = ln_T[idx][:, None, :]
        fixed = lm[:, :2] + ln_lines[idx]                                 # (B, 2, F)

        def total(r_, q_):
            terms = [lm + lt + k_ln * (r_ - 23.9), fixed, lm + q_[:, :, None] + ln_dresp[idx][:, None, :]]
            return torch.logsumexp(torch.cat(terms, dim=1), dim=1)
        a = total(pr, full[:, 7 * F + 7:])
        b = total(Yr[idx], Yq[idx])
        return (a - b).abs() / -k_ln * fmask[idx]

    epochs_run = 0
    step, done = 0, False
    for epoch in range(n_epochs):
        perm = tr_t[torch.randperm(len(tr), generator=gen)]
        tot_c = tot_t = 0.0
        for i in range(0, len(perm), args.batch):
            frac = (step / (args.epochs * n_batches) if args.minutes is None
                    else (time.perf_counter() - t_start) / (60 * args.minutes))
            if frac >= 1:
                done = True
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(frac)
            step += 1
            idx = perm[i:i + args.batch]
            pred = net(Xt[idx])
            dsfr = tt(prior_dsfr(rng, len(idx)))
            ce = combined_error(pred, idx, dsfr)
            nb = fmask[idx].sum().clamp(min=1)
            lc = ce.sum() / nb
            if args.mse_weight:
                lc = lc + args.mse_weight * (ce ** 2).sum() / nb
            lt = ((pred - Yt[idx]).abs() * ysd * Wt[idx]).sum() / Wt[idx].sum()
            loss = lc + args.template_weight * lt
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot_c += float(lc.detach()) * len(idx)
            tot_t += float(lt.detach()) * len(idx)
        epochs_run = epoch + 1
        with torch.no_grad():
            hidx = torch.tensor(ho)
            e = combined_error(net(Xt[hidx]), hidx, tt(prior_dsfr(np.random.default_rng(1), len(ho))))
            e = e[fmask[hidx] > 0].numpy()
        print(f"epoch {epoch + 1}  lr {lr_at(frac):.2e}  combined {tot_c / len(tr):.5f}  template {tot_t / len(tr):.5f}  "
              f"held-out combined median {np.median(e):.4f} p99 {np.percentile(e, 99):.4f} mag  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        if done:
            break

    lin = [mod for mod in net if isinstance(mod, torch.nn.Linear)]
    weights = [mod.weight.detach().numpy().T.copy() for mod in lin]
    biases = [mod.bias.detach().numpy().copy() for mod in lin]
    meta["training"] = {
        "set": str(args.bins_dir), "n_chunks": nchunks, "n_train": int(len(tr)), "n_holdout": int(nho),
        "generator": prov, "epochs": args.epochs, "minutes": args.minutes, "epochs_run": epochs_run, "steps": step, "width": args.width,
        "depth": args.depth, "batch": args.batch, "lr": args.lr, "seed": args.seed,
        "template_weight": args.template_weight, "init": str(args.init) if args.init else None,
        "mse_weight": args.mse_weight, "cap_mag": CAP_MAG, "igm_min": IGM_MIN,
        "components": ({"lines": int(tab["comp_line_wav"].size), "max_lines": args.max_lines,
                        "line_min_fraction": 1e-3, "dust": "network ln(L_abs / A_V) x tabulated DL07 response"}
                       if use_comp else None),
        "threads": args.threads, "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 1)}
    emu = SFHBinEmulator(weights, biases, x_mean, x_std, y_mean, y_std, np.zeros(F), tab, meta)
    p_full, m_full, ms_full, sfr_full = load_full(args.full_dir, args.n_full)
    pred = emu.predict(p_full, strict=False)
    err = np.abs(pred - m_full)
    err[m_full - m_full[:, [iref]] > DETECTABLE_MAG] = np.nan
    sigma = np.nan_to_num(np.nanpercentile(err, 68, axis=0), nan=0.01)
    d = emu.derived(p_full, strict=False)
    acc = {"full_draws": {"set": str(args.full_dir), "n": int(len(p_full))},
           "median_abs_mag": dict(zip(filters, np.round(np.nanmedian(err, 0), 5).tolist())),
           "p99_abs_mag": dict(zip(filters, np.round(np.nanpercentile(err, 99, 0), 5).tolist())),
           "median_abs_log_stellar_mass": float(np.median(np.abs(d["log_stellar_mass"] - ms_full))),
           "median_abs_log_sfr100": float(np.nanmedian(np.abs(d["log_sfr100"] - sfr_full)))}
    meta["accuracy"] = acc
    emu = SFHBinEmulator(weights, biases, x_mean, x_std, y_mean, y_std, sigma, tab, meta)
    save_emulator(emu, args.out)
    print(f"wrote {args.out}: full draws (bands within {DETECTABLE_MAG} mag of F444W) median |dm| "
          f"{np.nanmedian(err):.4f}, worst-filter p99 {max(acc['p99_abs_mag'].values()):.3f} mag; "
          f"log M* {acc['median_abs_log_stellar_mass']:.5f} dex, log SFR100 {acc['median_abs_log_sfr100']:.5f} dex")
    return 0


if __name__ == "__main__":
    sys.exit(main())
