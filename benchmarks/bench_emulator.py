"""Emulator accuracy and speed against the exact bagpipes reference, in one run.

Draws N fresh parameter vectors from the emulator's prior with a seed that the training
set did not use, computes exact photometry with :mod:`pegleg.sed.sps` (bagpipes, worker
processes) and the emulator's prediction, and prints:

- per filter: median and 99th percentile |Delta m| over the draws where the filter's
  rest-frame pivot is redward of Lyman-alpha (1216 A), and for the bluer (IGM-absorbed)
  draws the 99th percentile of |Delta f| / f(F444W);
- derived quantities: median |Delta| of log surviving mass, log formed mass, log SFR100;
- the same per filter restricted to *detectable* draws, where the band is at most
  ``--detectable`` (5) mag fainter than F444W (fainter bands carry < 1% of its flux; a
  magnitude error there is irrelevant for fitting);
- speed: emulator SEDs/s (one thread, 100,000 SEDs, best of 5 calls) for all filters and
  for the 19 JOF bands through ``evaluate`` (the fitter's path) -- with the draws' own
  redshifts, and with one redshift for all (a galaxy's fit) -- bagpipes models/s (one
  process, 300 models after its model_galaxy is built), and the ratio.

Usage::

    python benchmarks/bench_emulator.py [--emulator default|PATH] [--n 10000] [--seed 987654321]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

LYA_UM = 0.1216


def _best_rate(fn, n, repeats=5):
    """Items per second of ``fn`` (``n`` items), best of ``repeats`` timed calls after a warm-up
    (as ``timeit`` does: the fastest run is the one least disturbed by other processes)."""
    fn()
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def _exact_chunk(args):
    params, filters = args
    from pegleg.sed import sps

    mags, derived = sps.evaluate(params, filters)
    return mags, derived


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--emulator", default="default")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=987654321)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--detectable", type=float, default=5.0)
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    from pegleg._parallel import parallel_map
    from pegleg.filters import pivot_wavelength
    from pegleg.sed import load_emulator

    emu = load_emulator(args.emulator)
    filters = list(emu.filters)
    params = emu.sample_prior(args.n, seed=args.seed)
    chunks = np.array_split(params, max(1, args.n // 500))
    t0 = time.perf_counter()
    out = parallel_map(_exact_chunk, [(c, filters) for c in chunks], n_workers=args.workers, desc="bagpipes")
    t_exact_wall = time.perf_counter() - t0
    exact = np.concatenate([o[0] for o in out])
    dexact = {k: np.concatenate([o[1][k] for o in out]) for k in out[0][1]}
    # one-process bagpipes speed on a small sample, same run; the model_galaxy is built (a few
    # seconds, once per process) before the clock starts, so this is the per-model rate
    _exact_chunk((params[:2], filters))
    t0 = time.perf_counter()
    _exact_chunk((params[:300], filters))
    rate_exact = 300 / (time.perf_counter() - t0)

    with threadpool_limits(1):
        big = np.repeat(params, max(1, 100_000 // len(params)), axis=0)[:100_000]
        from pegleg.sed.fit import JOF_FILTERS

        jof = list(JOF_FILTERS)
        rate_emu = _best_rate(lambda: emu.predict(big, strict=False), len(big))
        rate_jof = _best_rate(lambda: emu.evaluate(big, jof, strict=False), len(big))
        iz = list(emu.param_names).index("redshift")
        one_z = big.copy()   # a galaxy's fit: every model at one redshift (here the draws' median)
        one_z[:, iz] = float(np.median(params[:, iz]))
        rate_jof_z = _best_rate(lambda: emu.evaluate(one_z, jof, strict=False), len(big))
        pred = emu.predict(params, strict=False)
        d = emu.derived(params, strict=False)

    z = params[:, list(emu.param_names).index("redshift")]
    iref = filters.index("F444W")
    tr = getattr(emu, "metadata", {}).get("training", {})
    kind = type(emu).__name__
    shape = f"{tr['depth']}x{tr['width']} " if "depth" in tr and "width" in tr else ""
    print(f"emulator {args.emulator!r} ({kind}, {shape}{getattr(emu, 'activation', '')} network; training provenance "
          f"in its metadata): {len(filters)} filters, {args.n} fresh prior draws (seed {args.seed})")
    print(f"{'filter':8s} {'n_red':>6s} {'med|dm|':>8s} {'p99|dm|':>8s} {'n_det':>6s} {'med_det':>8s} "
          f"{'p99_det':>8s} {'n_blue':>6s} {'p99|df|/f444':>12s}")
    worst_med = worst_p99 = worst_blue = worst_dmed = worst_dp99 = 0.0
    for j, f in enumerate(filters):
        red = pivot_wavelength(f) / (1 + z) > LYA_UM
        dm = np.abs(pred[:, j] - exact[:, j])
        med = float(np.nanmedian(dm[red])) if red.any() else np.nan
        p99 = float(np.nanpercentile(dm[red], 99)) if red.any() else np.nan
        blue = ~red
        if blue.any():
            df = np.abs(10 ** (-0.4 * pred[blue, j]) - 10 ** (-0.4 * exact[blue, j])) / 10 ** (-0.4 * exact[blue, iref])
            pb = float(np.nanpercentile(df, 99))
        else:
            pb = np.nan
        det = red & (exact[:, j] - exact[:, iref] <= args.detectable)
        dmed = float(np.nanmedian(dm[det])) if det.any() else np.nan
        dp99 = float(np.nanpercentile(dm[det], 99)) if det.any() else np.nan
        worst_med, worst_p99 = np.nanmax([worst_med, med]), np.nanmax([worst_p99, p99])
        worst_dmed, worst_dp99 = np.nanmax([worst_dmed, dmed]), np.nanmax([worst_dp99, dp99])
        worst_blue = np.nanmax([worst_blue, pb])
        print(f"{f:8s} {int(red.sum()):6d} {med:8.4f} {p99:8.4f} {int(det.sum()):6d} {dmed:8.4f} {dp99:8.4f} "
              f"{int(blue.sum()):6d} {pb:12.5f}")
    for k in ("log_stellar_mass", "log_mass_formed", "log_sfr100"):
        if k in d and k in dexact:
            e = np.abs(np.asarray(d[k]) - dexact[k])
            print(f"{k}: median |delta| {np.nanmedian(e):.4f} dex")
    print(f"worst filter: median |dm| {worst_med:.4f} mag, p99 |dm| {worst_p99:.4f} mag (redward of Lya); "
          f"blue p99 |df|/f(F444W) {worst_blue:.5f}")
    print(f"worst filter, detectable draws (<= {args.detectable} mag below F444W): median |dm| {worst_dmed:.4f}, "
          f"p99 |dm| {worst_dp99:.4f} mag")
    print(f"speed: emulator {rate_emu:,.0f} SEDs/s (1 thread, {len(filters)} filters); bagpipes {rate_exact:,.0f} "
          f"models/s (1 process); ratio {rate_emu / rate_exact:,.0f}x; exact set took {t_exact_wall:.0f} s wall")
    print(f"speed, 19 JOF bands via evaluate (fluxes + derived): {rate_jof:,.0f} SEDs/s; "
          f"{rate_jof / rate_exact:,.0f}x bagpipes")
    print(f"speed, 19 JOF bands, one redshift for all models (a galaxy's fit): {rate_jof_z:,.0f} SEDs/s; "
          f"{rate_jof_z / rate_exact:,.0f}x bagpipes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
