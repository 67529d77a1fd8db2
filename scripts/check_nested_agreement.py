#!/usr/bin/env python
"""Importance sampling against nested sampling, and nested sampling against itself (long job).

Issue 7 asks that the posterior medians of importance sampling agree with the nested
reference within 0.05 dex for 20 pixels at S/N 10-50.  This script measures how well the
reference agrees with *itself*: 20 prior pixels (19 JOF bands, z = 2, S/N 10-50, depth
scatter 0.2; the draws of ``tests/test_sedfit.py::test_matches_nested_sampling_20_pixels``)
are fitted by

- importance sampling (``n_draws=512``, seed 3), with and without ``low_ess="nested"``,
  and with an ESS target of 1000 (``n_draws=4096``, up to 32x top-ups): the same
  posterior with little Monte Carlo noise in its medians;
- dynesty twice with 400 live points (seeds 3 and 4) and once with 1000 (seed 5),

and every pair of runs is compared (median |difference| of the posterior medians, how many
of the 20 pixels agree within 0.05 dex) for log M* and log SFR100.  About an hour on one
core of this machine.  Writes ``docs/_generated/nested_agreement.txt``.

Usage::

    OMP_NUM_THREADS=1 python scripts/check_nested_agreement.py [--cache results.pkl]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "_generated" / "nested_agreement.txt"
QUANTITIES = ("log_stellar_mass", "log_sfr100")
JOBS = {"importance": dict(n_draws=512, seed=3),
        "importance+nested": dict(n_draws=512, seed=3, low_ess="nested", nlive=400),
        "importance ESS 1000": dict(n_draws=4096, seed=3, ess_target=1000.0, max_rounds=6),
        "nested400 (seed 3)": dict(method="nested", nlive=400, seed=3),
        "nested400 (seed 4)": dict(method="nested", nlive=400, seed=4),
        "nested1000 (seed 5)": dict(method="nested", nlive=1000, seed=5)}


def run(cache: Path | None):
    from pegleg.sed import load_emulator, load_posterior_network
    from pegleg.sed.fit import JOF_FILTERS, fit_photometry
    from pegleg.sed.simulate import simulate_photometry

    em, net = load_emulator(), load_posterior_network()
    s = simulate_photometry(em, JOF_FILTERS, 20, redshift=2.0, snr=(10.0, 50.0), depth_scatter=0.2, seed=22)
    kw = dict(emulator=em, network=net, error_floor=0.0, emulator_sigma=False, n_workers=1)
    res, secs = {}, {"network": f"posterior network trained {net.metadata.get('training', {}).get('date', '?')}"
                       if isinstance(net.metadata.get("training"), dict) else "bundled posterior network"}
    jobs = JOBS
    if cache is not None and cache.exists():       # resume: keep the runs already made
        _, res, old = pickle.load(open(cache, "rb"))
        secs.update({k: v for k, v in old.items() if k in res})
    for name, opts in jobs.items():
        if name in res:
            continue
        t = time.perf_counter()
        res[name] = fit_photometry(s["flux"], s["error"], JOF_FILTERS, 2.0, **kw, **opts)
        secs[name] = time.perf_counter() - t
        print(f"{name}: {secs[name]:.0f} s", flush=True)
        if cache is not None:
            pickle.dump((s, res, secs), open(cache, "wb"))
    return s, res, secs


def report(s, res, secs) -> str:
    names = list(res)
    secs = dict(secs)
    network = secs.pop("network", "bundled posterior network")
    lines = ["20 prior pixels, 19 JOF bands, z = 2, S/N 10-50 (seed 22); posterior medians compared pairwise",
             "(median |difference|, pixels within 0.05 dex, largest difference), dex",
             f"importance sampling with the {network}",
             "run times: " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()),
             "importance-sampling ESS: " + " ".join(str(int(e)) for e in res[names[0]]["ess"]), ""]
    for q in QUANTITIES:
        ref = res[names[-1]][q]
        lines.append(f"{q} (posterior 16-84 half-width, median: {np.median(0.5 * (ref[:, 2] - ref[:, 0])):.3f} dex)")
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                d = np.abs(res[a][q][:, 1] - res[b][q][:, 1])
                lines.append(f"  {a:20s} vs {b:20s}: median {np.median(d):.3f}, within 0.05: {int(np.sum(d < 0.05)):2d}/20, "
                             f"max {d.max():.3f}")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=None, help="pickle of the runs: written as they finish, "
                    "and read instead of running when it holds every run")
    args = ap.parse_args(argv)
    if args.cache is not None and args.cache.exists():
        s, res, secs = pickle.load(open(args.cache, "rb"))
        if len(res) < len(JOBS):
            s, res, secs = run(args.cache)
    else:
        s, res, secs = run(args.cache)
    text = report(s, res, secs)
    OUT.write_text(f"# made by scripts/check_nested_agreement.py\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
