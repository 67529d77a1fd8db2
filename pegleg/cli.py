"""The ``pegleg`` command line.

``pegleg demo [--out DIR]``
    Make a synthetic galaxy (fully offline), PSF-correct it, save NetCDF files and
    figures, and print recovered against true fluxes and sizes.
``pegleg info FILE``
    Summarise a pegleg NetCDF file (bands, shape, resolution, history).
``pegleg run CATALOG --config CONFIG.toml --out DIR [--scheduler ADDR] [--workers N] [--no-resume] [--quiet]``
    Run the whole chain for every galaxy of a catalogue on dask.distributed
    (:func:`pegleg.pipeline.run_catalog`): one NetCDF file per galaxy and
    ``DIR/summary.csv``.  Exit code 0 when the run completed (also when some galaxies
    failed: their errors are in the summary), 2 for a bad configuration or catalogue.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._version import __version__
from .exceptions import PeglegError

DEMO_BANDS = ("F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F444W")


def _demo(args: argparse.Namespace) -> int:
    from . import synth

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    observed, truth = synth.galaxy(list(DEMO_BANDS), seed=args.seed)
    nc = observed.pegleg.to_netcdf(out / "demo_observed.nc")
    truth.pegleg.to_netcdf(out / "demo_truth.nc")
    observed.pegleg.plot.stamps().savefig(out / "demo_stamps.png", dpi=110)
    dec = observed.pegleg.deconvolve(sky_model="none", progress=not args.quiet)
    dec.pegleg.to_netcdf(out / "demo_deconvolved.nc")
    dec.pegleg.plot.deconvolution().savefig(out / "demo_deconvolution.png", dpi=90)
    dt = time.perf_counter() - t0
    print(f"pegleg {__version__} demo: synthetic galaxy with {observed.sizes['band']} bands "
          f"{observed.sizes['y']}x{observed.sizes['x']} px at {observed.attrs['pixel_scale']}\"/px")
    print("band    PSF FWHM[\"]  true flux[uJy]  recovered   true r50[\"]  recovered")
    for b in observed.pegleg.bands:
        t, d = truth.sel(band=b), dec.sel(band=b)
        print(f"{b:7s} {float(t['psf_fwhm']):11.4f} {float(t['flux_total']):15.4f} {float(d['flux_total']):10.4f}"
              f" {float(t['r50']):13.4f} {float(d['r50']):10.4f}")
    print(f"wrote {nc}, demo_truth.nc, demo_deconvolved.nc and figures to {out}/ in {dt:.1f} s")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .io import open_dataset
    from .schema import read_history

    ds = open_dataset(args.file)
    print(ds)
    print("history:")
    for step in read_history(ds):
        print(f"  {step.get('time', '')}  {step.get('step')}  (pegleg {step.get('pegleg_version')})")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .pipeline import Config, counts_line, read_catalog, run_catalog

    config = Config.from_toml(args.config)
    if args.out is not None:
        config = config.with_output_dir(args.out)
    catalog = read_catalog(args.catalog)  # bad catalogue -> exit 2 before any cluster starts
    if args.workers is not None and args.workers < 1:
        raise PeglegError(f"--workers: expected at least 1, got {args.workers}")
    try:
        df = run_catalog(catalog, config, scheduler=args.scheduler, n_workers=args.workers,
                         resume=not args.no_resume, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"pegleg run: interrupted; finished galaxies are in {config.output_dir} (summary.csv lists the "
              "others as pending); run the same command again to resume", file=sys.stderr)
        return 130
    if args.quiet:  # otherwise run_catalog has printed the same counts
        print(counts_line(df, config.output_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pegleg`` command."""
    p = argparse.ArgumentParser(prog="pegleg", description="PSF-corrected resolved SED fitting of galaxies.")
    p.add_argument("--version", action="version", version=f"pegleg {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run pegleg on a synthetic galaxy (offline)")
    d.add_argument("--out", default="pegleg_demo", help="output folder (default: ./pegleg_demo)")
    d.add_argument("--seed", type=int, default=0, help="random seed of the synthetic galaxy")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    d.set_defaults(func=_demo)
    i = sub.add_parser("info", help="summarise a pegleg NetCDF file")
    i.add_argument("file")
    i.set_defaults(func=_info)
    r = sub.add_parser("run", help="run the chain for every galaxy of a catalogue (dask.distributed)")
    r.add_argument("catalog", help="catalogue: CSV or FITS table with id, ra, dec, redshift[, size]")
    r.add_argument("--config", required=True, help="TOML configuration (see pegleg.pipeline.Config)")
    r.add_argument("--out", default=None, help="output folder (overrides the configuration's output_dir)")
    r.add_argument("--scheduler", default=None, help="address of a running dask scheduler "
                   "(default: a local cluster)")
    r.add_argument("--workers", type=int, default=None, help="worker processes of the local cluster (default 2)")
    r.add_argument("--no-resume", action="store_true", help="recompute galaxies whose output file exists")
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    r.set_defaults(func=_run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pegleg`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PeglegError as exc:
        print(f"pegleg: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
