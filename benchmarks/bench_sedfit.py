"""Pixel SED fitting: speed, calibration and agreement with per-pixel nested sampling.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_sedfit.py [--n 10000] [--nested 10]

Synthetic pixels drawn from the emulator's prior (19 JOF bands, redshift 2 unless
``--redshift``), fluxes from the emulator, Gaussian noise with reference-band (F444W)
S/N log-uniform in [5, 100] and 0.2 dex band-to-band depth scatter.  The fits use the
same likelihood as the simulation (no error floor, no emulator sigma) so coverage tests
the posterior machinery.  In the same run: the importance-sampling fitter (default
method), the fast (amortised-only) mode and per-pixel nested sampling (dynesty, the
baseline) on the first ``--nested`` pixels, and the importance sampler's speed setting
(``--quick-draws 160 --quick-rounds 2`` on ``--quick-workers 2`` processes: the two
vCPUs of the development machine); prints pixels/s, the speed ratio, the ESS
distribution, 68% coverage and bias (mass, SFR100, A_V), and the median differences
to the nested reference.  BLAS is limited to one thread; ``--workers`` processes.
Peak memory for 1e5 and 1e6 pixels (fitted block by block into a file) is measured by
``benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import argparse

import numpy as np
from threadpoolctl import threadpool_limits

from pegleg.sed import fit_photometry, load_emulator, load_posterior_network, simulate_photometry
from pegleg.sed.fit import JOF_FILTERS

TRUTH = {"log_stellar_mass": lambda s: s["derived"]["log_stellar_mass"],
         "log_sfr100": lambda s: s["derived"]["log_sfr100"],
         "av": lambda s: s["params"][:, 3],
         "log_age_mw": lambda s: s["derived"]["log_age_mw"]}


def report(name, res, sim, sel=None):
    sel = np.ones(len(sim["snr"]), bool) if sel is None else sel
    rows = []
    for k, f in TRUTH.items():
        t = f(sim)[sel]
        q = res[k][sel]
        ok = np.isfinite(q[:, 1])
        cover = np.mean((t[ok] >= q[ok, 0]) & (t[ok] <= q[ok, 2]))
        hi = (sim["snr"][sel] >= 20) & ok
        bias = np.median(q[hi, 1] - t[hi]) if hi.any() else np.nan
        rows.append(f"{k} cov68 {cover:.3f} bias(S/N>=20) {bias:+.3f}")
    print(f"  {name}: " + "; ".join(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--nested", type=int, default=10)
    ap.add_argument("--nlive", type=int, default=200)
    ap.add_argument("--redshift", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--draws", type=int, default=128)
    ap.add_argument("--quick-draws", type=int, default=160, help="n_draws of the speed setting")
    ap.add_argument("--quick-rounds", type=int, default=2, help="max_rounds of the speed setting")
    ap.add_argument("--quick-workers", type=int, default=2, help="processes of the speed setting")
    args = ap.parse_args()
    emu = load_emulator()
    net = load_posterior_network()
    sim = simulate_photometry(emu, JOF_FILTERS, args.n, redshift=args.redshift, snr=(5.0, 100.0),
                              depth_scatter=0.2, seed=2024)
    common = dict(emulator=emu, network=net, error_floor=0.0, emulator_sigma=False, n_workers=args.workers,
                  progress=False)
    print(f"{args.n} synthetic pixels, {len(JOF_FILTERS)} bands, z = {args.redshift}, F444W S/N 5-100, "
          f"{args.workers} worker(s), 1 BLAS thread")
    with threadpool_limits(1):
        r_is = fit_photometry(sim["flux"], sim["error"], JOF_FILTERS, args.redshift, n_draws=args.draws, **common)
        # the speed setting: fewer top-up rounds, every core of the machine
        quick = dict(common, n_workers=args.quick_workers)
        r_quick = fit_photometry(sim["flux"], sim["error"], JOF_FILTERS, args.redshift, n_draws=args.quick_draws,
                                 max_rounds=args.quick_rounds, **quick)
        r_fast = fit_photometry(sim["flux"], sim["error"], JOF_FILTERS, args.redshift, method="fast",
                                n_draws=100, **common)
        k = args.nested
        r_nest = fit_photometry(sim["flux"][:k], sim["error"][:k], JOF_FILTERS, args.redshift, method="nested",
                                nlive=args.nlive, **common) if k else None
    pps_is = args.n / r_is["seconds"]
    pps_fast = args.n / r_fast["seconds"]
    ess = r_is["ess"]
    print(f"importance sampling: {pps_is:,.0f} pixels/s; ESS percentiles 5/16/50/84: "
          f"{np.nanpercentile(ess, [5, 16, 50, 84]).round(1).tolist()}; below 50: {np.mean(ess < 50):.1%}")
    report("importance", r_is, sim)
    e = r_quick["ess"]
    print(f"importance sampling, n_draws={args.quick_draws}, max_rounds={args.quick_rounds}, "
          f"{args.quick_workers} process(es): {args.n / r_quick['seconds']:,.0f} pixels/s; ESS percentiles 5/16/50/84: "
          f"{np.nanpercentile(e, [5, 16, 50, 84]).round(1).tolist()}; below 50: {np.mean(e < 50):.1%}")
    report("importance (speed setting)", r_quick, sim)
    print(f"fast (network only): {pps_fast:,.0f} pixels/s")
    report("fast", r_fast, sim)
    if r_nest is not None:
        pps_n = k / r_nest["seconds"]
        print(f"nested (dynesty, nlive={args.nlive}): {pps_n:.3f} pixels/s ({1 / pps_n:.1f} s/pixel)")
        print(f"speed ratio importance / nested: {pps_is / pps_n:,.0f}x; speed setting / nested: "
              f"{args.n / r_quick['seconds'] / pps_n:,.0f}x; fast / nested: {pps_fast / pps_n:,.0f}x")
        for q in ("log_stellar_mass", "log_sfr100", "av", "log_age_mw"):
            d = r_is[q][:k, 1] - r_nest[q][:, 1]
            w = (r_nest[q][:, 2] - r_nest[q][:, 0]) / 2
            print(f"  median |importance - nested| {q}: {np.median(np.abs(d)):.3f} "
                  f"(max {np.max(np.abs(d)):.3f}; nested 1-sigma median {np.median(w):.3f})")


if __name__ == "__main__":
    main()
