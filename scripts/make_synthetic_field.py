#!/usr/bin/env python
"""Write a synthetic field for catalogue runs: per-band FITS mosaics, PSFs, a catalogue.

A thin command line around :func:`pegleg.synth.write_field` (the tests use the same
function): N physical synthetic galaxies (emulator SEDs, known stellar masses and
radii) on a grid, pasted into per-band mosaics with a TAN WCS and Gaussian noise.
Deterministic: the same arguments give identical image data.

Writes into ``OUT``::

    mosaics/<BAND>_sci.fits, mosaics/<BAND>_err.fits   flux and 1-sigma error (uJy/pixel)
    mosaics/seg.fits                                    segmentation (unless --no-segmentation)
    psf/<BAND>.fits                                     PSFs (header PIXELSCL)
    catalog.csv                                         id, ra, dec, redshift (degrees)
    truth.csv                                           true log M*, log SFR100, radii
    run.toml                                            a configuration for ``pegleg run``

Example::

    OMP_NUM_THREADS=1 python scripts/make_synthetic_field.py field/ --n 20 --seed 1
    pegleg run field/catalog.csv --config field/run.toml --out field/results --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")


def _parser() -> argparse.ArgumentParser:
    from pegleg.synth import FIELD_BANDS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output folder (created)")
    ap.add_argument("--n", type=int, default=20, help="number of galaxies (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the layout and the noise (default 0)")
    ap.add_argument("--bands", default=",".join(FIELD_BANDS),
                    help=f"comma-separated filters (default {','.join(FIELD_BANDS)})")
    ap.add_argument("--stamp", type=int, default=33, help="odd side of each galaxy's render, pixels (default 33)")
    ap.add_argument("--spacing", type=int, default=44, help="grid step between galaxies, pixels (default 44)")
    ap.add_argument("--pixel-scale", type=float, default=0.03, help="arcsec/pixel (default 0.03)")
    ap.add_argument("--depth", type=float, default=6e-4, help="1-sigma noise per pixel, uJy (default 6e-4)")
    ap.add_argument("--stamp-size", type=int, default=41,
                    help="cutout side written to run.toml, pixels (default 41)")
    ap.add_argument("--no-segmentation", action="store_true", help="do not write mosaics/seg.fits")
    ap.add_argument("--network", default=None,
                    help="sedfit.network of run.toml (a bundled name or a .npz path; default: pegleg's default)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pegleg import PeglegError
    from pegleg.synth import write_field

    sedfit = {"method": "fast"}
    if args.network:
        sedfit["network"] = args.network
    t0 = time.perf_counter()
    try:
        info = write_field(args.out, args.n, bands=[b.strip() for b in args.bands.split(",") if b.strip()],
                           stamp=args.stamp, spacing=args.spacing, pixel_scale=args.pixel_scale, depth=args.depth,
                           seed=args.seed, segmentation=not args.no_segmentation, stamp_size=args.stamp_size,
                           sedfit=sedfit)
    except PeglegError as exc:
        print(f"make_synthetic_field: {exc}", file=sys.stderr)
        return 2
    ny, nx = info["shape"]
    print(f"{args.n} galaxies in {len(info['bands'])} bands, mosaics {ny}x{nx} pixels, "
          f"{time.perf_counter() - t0:.1f} s")
    print(f"catalogue: {info['catalog']}\ntruth: {info['truth_file']}\nconfiguration: {info['config']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
