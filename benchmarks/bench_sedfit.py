"""Pixel SED fitting: speed, calibration and agreement with per-pixel nested sampling.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_sedfit.py [--n 10000] [--nested 10] [--memory 1000000]

Synthetic pixels drawn from the emulator's prior (19 JOF bands, redshift 2 unless
``--redshift``), fluxes from the emulator, Gaussian noise with reference-band (F444W)
S/N log-uniform in [5, 100] and 0.2 dex band-to-band depth scatter.  The fits use the
same likelihood as the simulation (no error floor, no emulator sigma) so coverage tests
the posterior machinery.  In the same run: the importance-sampling fitter (default
method), the fast (amortised-only) mode and per-pixel nested sampling (dynesty, the
baseline) on the first ``--nested`` pixels; prints pixels/s, the speed ratio, the ESS
distribution, 68% coverage and bias (mass, SFR100, A_V), and the median differences
to the nested reference.  ``--memory N`` fits N pixels in a child process (fast mode
unless ``--memory-method importance``) and reports its peak RSS.  BLAS is limited to
one thread; ``--workers`` processes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

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


def child_memory(args) -> None:
    emu = load_emulator()
    n = args.memory
    chunk = 100_000
    # simulate in chunks so the input itself is the only O(N) memory
    flux = np.empty((n, len(JOF_FILTERS)))
    error = np.empty_like(flux)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        s = simulate_photometry(emu, JOF_FILTERS, m, redshift=args.redshift, snr=(5.0, 100.0),
                                depth_scatter=0.2, seed=i)
        flux[i:i + m], error[i:i + m] = s["flux"], s["error"]
    t0 = time.perf_counter()
    with threadpool_limits(1):
        r = fit_photometry(flux, error, JOF_FILTERS, args.redshift, method=args.memory_method, emulator=emu,
                           n_workers=1, progress=False)
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(json.dumps({"n": n, "seconds": dt, "peak_rss_gb": rss, "input_gb": 2 * flux.nbytes / 1e9,
                      "fitted": int(np.isfinite(r["log_stellar_mass"][:, 1]).sum())}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--nested", type=int, default=10)
    ap.add_argument("--nlive", type=int, default=200)
    ap.add_argument("--redshift", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--draws", type=int, default=128)
    ap.add_argument("--memory", default="0", help="pixels for the peak-memory run(s), comma-separated (0 = skip)")
    ap.add_argument("--memory-method", default="fast")
    ap.add_argument("--memory-only", action="store_true", help="only the peak-memory runs (--memory N[,N2...])")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.memory = int(args.memory)
        child_memory(args)
        return
    sizes = [int(v) for v in str(args.memory).split(",") if int(v) > 0]
    if args.memory_only:
        _memory_runs(args, sizes)
        return
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
    print(f"fast (network only): {pps_fast:,.0f} pixels/s")
    report("fast", r_fast, sim)
    if r_nest is not None:
        pps_n = k / r_nest["seconds"]
        print(f"nested (dynesty, nlive={args.nlive}): {pps_n:.3f} pixels/s ({1 / pps_n:.1f} s/pixel)")
        print(f"speed ratio importance / nested: {pps_is / pps_n:,.0f}x; fast / nested: {pps_fast / pps_n:,.0f}x")
        for q in ("log_stellar_mass", "log_sfr100", "av", "log_age_mw"):
            d = r_is[q][:k, 1] - r_nest[q][:, 1]
            w = (r_nest[q][:, 2] - r_nest[q][:, 0]) / 2
            print(f"  median |importance - nested| {q}: {np.median(np.abs(d)):.3f} "
                  f"(max {np.max(np.abs(d)):.3f}; nested 1-sigma median {np.median(w):.3f})")
    _memory_runs(args, sizes)


def _memory_runs(args, sizes) -> None:
    """Each size in a fresh child process; peak RSS (ru_maxrss) of the child."""
    res = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--child", "--memory", str(n), "--redshift", str(args.redshift),
               "--memory-method", args.memory_method]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        res.append(m)
        print(f"memory: {m['n']:,} pixels ({args.memory_method}) in {m['seconds']:.0f} s, peak RSS "
              f"{m['peak_rss_gb']:.2f} GB (flux + error input {m['input_gb']:.2f} GB)")
    if len(res) > 1:
        print(f"peak RSS ratio {res[-1]['n']:,} / {res[0]['n']:,} pixels: "
              f"{res[-1]['peak_rss_gb'] / res[0]['peak_rss_gb']:.2f}")


if __name__ == "__main__":
    main()
