#!/usr/bin/env python
"""Which posterior is right where importance sampling and nested sampling disagree? (long job)

``scripts/check_nested_agreement.py`` found that importance sampling (IS) and dynesty
disagree on some of the 20 reference pixels by more than dynesty disagrees with itself
(log M* up to 0.78 dex on one pixel).  Both sample the same posterior (same emulator,
likelihood and priors), so the one that explored it better has found more of its mass:
its estimate of the evidence Z = integral of likelihood x prior is larger.  Both
estimates are consistent: IS's mean weight is an unbiased estimate of Z, and dynesty
reports log Z with an error.  A sampler that misses a mode underestimates Z.

For the same 20 pixels (19 JOF bands, z = 2, S/N 10-50, seed 22; no error floor, no
emulator sigma, as in the agreement script) this script computes

- IS with the bundled posterior network as proposal, ``--is-rounds`` rounds of 4,096
  draws pooled (65,536 by default): log Z, its ESS and the weighted medians of log M*
  and log SFR100;
- dynesty with ``--nlive`` live points (default 400): log Z +- its error and the medians;

and writes ``docs/_generated/nested_evidence.txt``: per pixel both log Z, the medians and
their differences, and a summary of the pixels whose medians differ by > 0.05 dex: on how
many is IS's log Z higher than dynesty's by more than 3 dynesty sigma (dynesty missed
posterior mass), lower (IS missed it), or the same.

Usage::

    OMP_NUM_THREADS=1 python scripts/check_nested_evidence.py [--nlive 400] [--is-rounds 16] [--cache f.pkl]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "_generated" / "nested_evidence.txt"
QUANTITIES = ("log_stellar_mass", "log_sfr100")


def _weighted_median(x: np.ndarray, log_w: np.ndarray) -> float:
    """The fitter's own weighted quantile (:func:`pegleg.sed.fit.weighted_quantiles`)."""
    from pegleg.sed.fit import weighted_quantiles

    return float(weighted_quantiles(x[None], log_w[None], (0.5,))[0, 0])


def _derived(prob, theta, log10a) -> dict:
    """log M* and log SFR100 of parameter vectors (reference mass) scaled by 10^log10a."""
    _, der = prob.emu.evaluate(theta, prob.filters, strict=False)
    return {q: der[q] + log10a for q in QUANTITIES}


def importance(prob, net, r: int, rounds: int, rng) -> dict:
    from scipy.special import logsumexp

    from pegleg.sed.fit import _check_network, _importance_round, _normalise

    idx = _check_network(net, prob)
    rows = np.array([r])
    lw, vals = [], {q: [] for q in QUANTITIES}
    for _ in range(rounds):
        rd = _importance_round(prob, net, idx, rows, 4096, rng)
        lw.append(rd["log_w"][0])
        for q in QUANTITIES:
            vals[q].append(rd["der"][q][0] + rd["log10A"][0])
    lw = np.concatenate(lw)
    _, ess = _normalise(lw[None])
    out = {"logz": float(logsumexp(lw) - np.log(lw.size)), "ess": float(ess[0]), "n": int(lw.size)}
    for q in QUANTITIES:
        out[q] = _weighted_median(np.concatenate(vals[q]), lw)
    return out


def nested(prob, r: int, nlive: int, seed: int) -> dict:
    import dynesty

    from pegleg.sed.nested import pixel_problem

    d = len(prob.fit_idx)
    theta_of, loglike, transform, ndim = pixel_problem(prob, r)
    sampler = dynesty.NestedSampler(loglike, transform, ndim, nlive=nlive, rstate=np.random.default_rng(seed))
    sampler.run_nested(print_progress=False, dlogz=0.1)
    res = sampler.results
    theta = np.array([theta_of(x) for x in res.samples])
    vals = _derived(prob, theta, res.samples[:, d] - prob.ref_mass)
    out = {"logz": float(res.logz[-1]), "logz_err": float(res.logzerr[-1]), "n": int(len(res.logwt))}
    for q in QUANTITIES:
        out[q] = _weighted_median(vals[q], res.logwt - res.logz[-1])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nlive", type=int, default=400)
    ap.add_argument("--is-rounds", type=int, default=16)
    ap.add_argument("--cache", type=Path, default=None, help="pickle of finished pixels (resumable)")
    args = ap.parse_args(argv)
    from pegleg.sed import load_emulator, load_posterior_network
    from pegleg.sed.fit import JOF_FILTERS, _Problem
    from pegleg.sed.simulate import simulate_photometry

    em, net = load_emulator(), load_posterior_network()
    s = simulate_photometry(em, JOF_FILTERS, 20, redshift=2.0, snr=(10.0, 50.0), depth_scatter=0.2, seed=22)
    prob = _Problem(s["flux"], s["error"], JOF_FILTERS, 2.0, None, em, 0.0, False, (0.0, 13.0), None)
    done = pickle.load(open(args.cache, "rb")) if args.cache is not None and args.cache.exists() else {}
    for r in range(prob.n):
        if r in done:
            continue
        t = time.time()
        res = {"is": importance(prob, net, r, args.is_rounds, np.random.default_rng(100 + r)),
               "nested": nested(prob, r, args.nlive, 200 + r)}
        res["seconds"] = time.time() - t
        done[r] = res
        if args.cache is not None:
            pickle.dump(done, open(args.cache, "wb"))
        print(f"pixel {r}: IS log Z {res['is']['logz']:.2f} (ESS {res['is']['ess']:.0f}), dynesty "
              f"{res['nested']['logz']:.2f} +- {res['nested']['logz_err']:.2f}; log M* "
              f"{res['is']['log_stellar_mass']:.3f} vs {res['nested']['log_stellar_mass']:.3f} "
              f"({res['seconds']:.0f} s)", file=sys.stderr, flush=True)
    lines = ["# made by scripts/check_nested_evidence.py",
             f"20 prior pixels, 19 JOF bands, z = 2, S/N 10-50 (seed 22); importance sampling {args.is_rounds} x 4,096 "
             f"draws (bundled posterior network, trained {net.metadata.get('training', {}).get('date', '?')}); "
             f"dynesty nlive = {args.nlive}, dlogz = 0.1; {sum(v['seconds'] for v in done.values()):.0f} s in all",
             "log Z: natural log of the evidence (same likelihood normalisation for both); d = IS - dynesty",
             "S/N: median over the 19 bands (F444W: 10-50); sigma: dynesty's log Z error",
             "pixel  S/N | log Z IS   ESS | log Z dynesty | d log Z / sigma | log M* IS  dyn     d | log SFR100 IS  dyn  "
             "   d"]
    snr = np.median(s["flux"] / s["error"], axis=1)
    rows = []
    for r in range(prob.n):
        a, b = done[r]["is"], done[r]["nested"]
        dz = a["logz"] - b["logz"]
        sig = max(b["logz_err"], 0.05)
        dm = a["log_stellar_mass"] - b["log_stellar_mass"]
        ds = a["log_sfr100"] - b["log_sfr100"]
        rows.append((dz, sig, dm, ds))
        lines.append(f"{r:5d} {snr[r]:4.0f} | {a['logz']:8.2f} {a['ess']:5.0f} | {b['logz']:7.2f} +- {b['logz_err']:.2f} "
                     f"| {dz / sig:+7.1f} | {a['log_stellar_mass']:6.3f} {b['log_stellar_mass']:6.3f} {dm:+6.3f} | "
                     f"{a['log_sfr100']:7.3f} {b['log_sfr100']:7.3f} {ds:+6.3f}")
    rows = np.array(rows)
    for j, q in ((2, "log M*"), (3, "log SFR100")):
        off = np.abs(rows[:, j]) > 0.05
        hi = off & (rows[:, 0] > 3 * rows[:, 1])
        lo = off & (rows[:, 0] < -3 * rows[:, 1])
        lines.append(f"{q}: medians within 0.05 dex on {int((~off).sum())}/20; of the {int(off.sum())} others, IS's log Z "
                     f"is higher by > 3 sigma on {int(hi.sum())} (dynesty missed posterior mass), lower on {int(lo.sum())}, "
                     f"the same on {int((off & ~hi & ~lo).sum())}")
    lines.append(f"all pixels: IS log Z - dynesty log Z median {np.median(rows[:, 0]):+.2f}, range "
                 f"{rows[:, 0].min():+.2f} to {rows[:, 0].max():+.2f}")
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
