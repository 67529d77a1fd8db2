"""The ``pegleg`` command line.

``pegleg demo [--out DIR]``
    Make a synthetic galaxy (fully offline), save it as NetCDF and draw its stamps.
``pegleg info FILE``
    Summarise a pegleg NetCDF file (bands, shape, resolution, history).
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
    fig = observed.pegleg.plot.stamps()
    png = out / "demo_stamps.png"
    fig.savefig(png, dpi=110)
    dt = time.perf_counter() - t0
    print(f"pegleg {__version__} demo: synthetic galaxy with {observed.sizes['band']} bands "
          f"{observed.sizes['y']}x{observed.sizes['x']} px at {observed.attrs['pixel_scale']}\"/px")
    print("band    flux_total[uJy]  r50[arcsec]  psf_fwhm[arcsec]")
    for b in observed.pegleg.bands:
        t = truth.sel(band=b)
        print(f"{b:7s} {float(t['flux_total']):15.4f} {float(t['r50']):12.4f} {float(t['psf_fwhm']):17.4f}")
    print(f"wrote {nc}, {out / 'demo_truth.nc'} and {png} in {dt:.1f} s")
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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``pegleg`` command."""
    p = argparse.ArgumentParser(prog="pegleg", description="PSF-corrected resolved SED fitting of galaxies.")
    p.add_argument("--version", action="version", version=f"pegleg {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="run pegleg on a synthetic galaxy (offline)")
    d.add_argument("--out", default="pegleg_demo", help="output folder (default: ./pegleg_demo)")
    d.add_argument("--seed", type=int, default=0, help="random seed of the synthetic galaxy")
    d.set_defaults(func=_demo)
    i = sub.add_parser("info", help="summarise a pegleg NetCDF file")
    i.add_argument("file")
    i.set_defaults(func=_info)
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
