"""The ``pegleg`` command line.

``pegleg demo [--out DIR]``
    The whole chain on a synthetic galaxy with known per-pixel SEDs (fully offline):
    PSF-match to F444W, deconvolve, fit every pixel's SED, build the continuous mass
    profile and the M/L-colour relation; save NetCDF files, figures and
    ``demo_summary.txt`` (recovered against true fluxes, sizes, masses and radii).
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

DEMO_BANDS = ("F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F410M", "F444W")
DEMO_REDSHIFT = 2.0


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    from . import synth

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    lines = []

    def say(text=""):
        lines.append(text)
        print(text)

    observed, truth = synth.galaxy(list(DEMO_BANDS), redshift=DEMO_REDSHIFT, physical=True, seed=args.seed,
                                   snr_peak=150.0)
    nc = observed.pegleg.to_netcdf(out / "demo_observed.nc")
    truth.pegleg.to_netcdf(out / "demo_truth.nc")
    observed.pegleg.plot.stamps().savefig(out / "demo_stamps.png", dpi=110)
    progress = not args.quiet
    # PSF-match to the reddest band, then correct with that band's PSF (deconvolve uses the matched PSF)
    matched = observed.pegleg.psf_match("F444W")
    dec = matched.pegleg.deconvolve(sky_model="none", progress=progress)
    dec.pegleg.to_netcdf(out / "demo_deconvolved.nc")
    dec.pegleg.plot.deconvolution().savefig(out / "demo_deconvolution.png", dpi=90)
    fit = dec.pegleg.sedfit(progress=progress)
    mp = fit.pegleg.mass_profile("F444W")
    mlc = fit.pegleg.ml_colour("F444W", ("F150W", "F444W"))
    fit.pegleg.to_netcdf(out / "demo_fit.nc")
    fit.pegleg.plot.maps().savefig(out / "demo_maps.png", dpi=80)
    cy, cx = (int(round(float(truth.attrs["centre_y"]))), int(round(float(truth.attrs["centre_x"]))))
    fit.pegleg.plot.sed(cy, cx).savefig(out / "demo_sed_centre.png", dpi=90)
    mp.pegleg.plot.profiles().savefig(out / "demo_mass_profile.png", dpi=90)
    mlc.pegleg.plot.ml_colour().savefig(out / "demo_ml_colour.png", dpi=90)
    dt = time.perf_counter() - t0

    say(f"pegleg {__version__} demo: synthetic galaxy at z = {DEMO_REDSHIFT} with {observed.sizes['band']} bands "
        f"{observed.sizes['y']}x{observed.sizes['x']} px at {observed.attrs['pixel_scale']}\"/px")
    say("chain: psf_match(F444W) -> deconvolve -> sedfit -> mass_profile, ml_colour")
    say("band    PSF FWHM[\"]  true flux[uJy]  recovered   true r50[\"]  recovered")
    for b in observed.pegleg.bands:
        t, d = truth.sel(band=b), dec.sel(band=b)
        say(f"{b:7s} {float(t['psf_fwhm']):11.4f} {float(t['flux_total']):15.4f} {float(d['flux_total']):10.4f}"
            f" {float(t['r50']):13.4f} {float(d['r50']):10.4f}")
    true_mass = float(truth.attrs["log_stellar_mass_total"])
    ps = fit.attrs["sedfit_log_mass_pixel_sum"]
    integ = fit.attrs["sedfit_log_mass_integrated"]
    tp = truth.pegleg.radial_profile("stellar_mass_density", center=(mp.attrs["centre_y"], mp.attrs["centre_x"]),
                                     ellipticity=1 - mp.attrs["axis_ratio"], position_angle=mp.attrs["position_angle"])
    m = fit["log_stellar_mass"].sel(quantile=0.5).values
    peak = tuple(int(i) for i in np.unravel_index(np.nanargmax(m), m.shape))
    tpeak = tuple(int(i) for i in np.unravel_index(np.argmax(truth["log_stellar_mass"].values), m.shape))
    say("")
    say("stellar mass [log Msun]      true    recovered (16-84)")
    say(f"  pixel sum (fitted region) {true_mass:7.3f}  {ps[1]:.3f} ({ps[0]:.3f}-{ps[2]:.3f})")
    say(f"  integrated photometry     {true_mass:7.3f}  {integ[1]:.3f} ({integ[0]:.3f}-{integ[2]:.3f})")
    lt = mp.attrs["log_mass_total"]
    say(f"  mass profile (M/L extrap.) {true_mass:6.3f}  {lt[1]:.3f} ({lt[0]:.3f}-{lt[2]:.3f})")
    r50m = mp.attrs["r50_mass"]
    say(f"half-mass radius [\"]        {float(tp['r50']):.4f}   {r50m[1]:.4f} ({r50m[0]:.4f}-{r50m[2]:.4f})")
    say(f"mass-map peak (y, x)        {tpeak}  {peak}")
    say(f"M/L(F444W)-colour slope     {mlc.attrs['slope']:.3f} +- {mlc.attrs['slope_error']:.3f} per mag (F150W-F444W)")
    say(f"sedfit: {fit.attrs['sedfit_n_fitted']} pixels, median ESS {fit.attrs['sedfit_median_ess']:.0f}, "
        f"median reduced chi2 {fit.attrs['sedfit_median_reduced_chi2']:.2f}, {fit.attrs['sedfit_seconds']:.1f} s")
    say(f"wrote {nc}, demo_truth.nc, demo_deconvolved.nc, demo_fit.nc and figures to {out}/ in {dt:.1f} s")
    (out / "demo_summary.txt").write_text("\n".join(lines) + "\n")
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
