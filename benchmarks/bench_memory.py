"""Peak memory of out-of-core pixel SED fits and of mosaic cutouts vs input size.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_memory.py [--sedfit 100000,1000000] [--mosaic 500,2000]

``--sedfit N1,N2``: for each N, a 19-band (JOF filters) synthetic image of N pixels
(1000 pixels per row; fluxes from the emulator's prior at z = 2, F444W S/N 5-100,
float32 like JWST mosaics) is written to NetCDF block by block, then a fresh child
process opens it lazily (``pegleg.open_dataset(path, chunks={})``) and runs
``sedfit(out=..., method=--method)`` writing every block of rows as it is fitted; its
peak RSS (``VmHWM``: this process's own; see ``benchmarks/_rss.py``) and wall time are printed with the ratio to the smallest N.

``--mosaic S1,S2``: 6-band FITS mosaics (SCI, ERR, SEG; float32) of S x S pixels with one
galaxy at the centre (``pegleg.synth.write_field``), and a child process per size
cutting a 65 x 65 stamp with ``open_stamps(center=, size=)`` (the mosaic is
memory-mapped, so only the cutout is read); peak RSS and its ratio.

The acceptance (issue 11) is peak RSS within 20% between 1e5 and 1e6 pixels.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NX = 1000  # pixels per row of the synthetic sedfit images


def _rss_gb() -> float:
    """Peak RSS of this process alone, GiB (not the parent's it was started from; see _rss)."""
    from _rss import peak_rss_mib

    return peak_rss_mib() / 1024


def make_image(path: Path, n: int, seed: int = 0) -> None:
    """N pixels (n // NX rows) of prior photometry in 19 bands, written by blocks of rows."""
    import pegleg
    from pegleg.io.netcdf import BlockWriter
    from pegleg.sed import load_emulator, simulate_photometry
    from pegleg.sed.fit import JOF_FILTERS

    emu = load_emulator()
    ny = max(1, n // NX)
    psf = np.zeros((len(JOF_FILTERS), 3, 3))
    psf[:, 1, 1] = 1.0
    rows = 64
    with BlockWriter(path, "y") as w:
        for y0 in range(0, ny, rows):
            m = min(rows, ny - y0)
            s = simulate_photometry(emu, JOF_FILTERS, m * NX, redshift=2.0, snr=(5.0, 100.0), depth_scatter=0.2,
                                    seed=[seed, y0])
            img = s["flux"].T.reshape(len(JOF_FILTERS), m, NX).astype(np.float32)
            err = s["error"].T.reshape(len(JOF_FILTERS), m, NX).astype(np.float32)
            blk = pegleg.from_arrays(img, err, psf, JOF_FILTERS, 0.03, redshift=2.0, units="uJy",
                                     source_id=f"prior{n}")
            w.append(blk)
            if y0 == 0:
                w.attrs = dict(blk.attrs)
            del blk, img, err, s


def child_sedfit(args) -> None:
    from threadpoolctl import threadpool_limits

    import pegleg

    src = pegleg.open_dataset(args.input, chunks={})
    t0 = time.perf_counter()
    with threadpool_limits(1):
        res = src.pegleg.sedfit(method=args.method, region="all", out=args.output, progress=False, n_workers=1)
    dt = time.perf_counter() - t0
    print(json.dumps({"n": int(src.sizes["y"] * src.sizes["x"]), "seconds": dt, "peak_rss_gb": _rss_gb(),
                      "fitted": int(res.attrs["sedfit_n_fitted"]),
                      "input_gb": os.path.getsize(args.input) / 1e9,
                      "pixel_sum": float(res.attrs["sedfit_log_mass_pixel_sum"][1])}))


def make_mosaic(folder: Path, size: int, seed: int = 0) -> None:
    """6-band S x S float32 mosaics (SCI, ERR, SEG, PSFs) with one galaxy at the centre
    (:func:`pegleg.synth.write_field`)."""
    from pegleg.synth import write_field

    c = size // 2
    write_field(folder, galaxies=[{"id": "centre", "y": c, "x": c, "redshift": 2.0}], mosaic_shape=(size, size),
                seed=seed, config=None)


def child_mosaic(args) -> None:
    import pegleg
    from pegleg.synth import FIELD_BANDS

    size = int(args.size)
    folder = Path(args.input)
    source = {b: {k: folder / "mosaics" / f"{b}_{k}.fits" for k in ("sci", "err")} | {"seg": folder / "mosaics" / "seg.fits"}
              for b in FIELD_BANDS}
    t0 = time.perf_counter()
    ds = pegleg.open_stamps(source, center=(size // 2, size // 2), size=65, psf=folder / "psf")
    dt = time.perf_counter() - t0
    print(json.dumps({"size": size, "seconds": dt, "peak_rss_gb": _rss_gb(),
                      "mosaic_gb": sum(p.stat().st_size for p in (folder / "mosaics").glob("*.fits")) / 1e9,
                      "stamp": [int(v) for v in ds["image"].shape],
                      "peak_flux": float(ds["image"].sel(band="F444W").max())}))


def _child(extra: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, __file__, *extra], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"child {extra} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sedfit", default="100000,1000000", help="pixel counts, comma-separated ('' = skip)")
    ap.add_argument("--mosaic", default="500,2000", help="mosaic sides in pixels, comma-separated ('' = skip)")
    ap.add_argument("--method", default="fast", help="sedfit method of the memory runs")
    ap.add_argument("--workdir", default=None, help="folder for the temporary files (default: a temp folder)")
    ap.add_argument("--child", choices=["sedfit", "mosaic"], help=argparse.SUPPRESS)
    ap.add_argument("--input", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "sedfit":
        return child_sedfit(args)
    if args.child == "mosaic":
        return child_mosaic(args)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        sizes = [int(v) for v in args.sedfit.split(",") if v.strip()]
        res = []
        for n in sizes:
            t0 = time.perf_counter()
            make_image(tmp / f"in{n}.nc", n)
            t_make = time.perf_counter() - t0
            r = _child(["--child", "sedfit", "--input", str(tmp / f"in{n}.nc"), "--output", str(tmp / f"out{n}.nc"),
                        "--method", args.method])
            r["make_seconds"] = t_make
            res.append(r)
            print(f"sedfit ({args.method}, out=file): {r['n']:,} pixels x 19 bands ({r['input_gb']:.3f} GB input file) "
                  f"in {r['seconds']:.0f} s ({r['n'] / r['seconds']:,.0f} px/s), peak RSS {r['peak_rss_gb']:.3f} GB, "
                  f"fitted {r['fitted']:,}", flush=True)
            for f in (tmp / f"in{n}.nc", tmp / f"out{n}.nc"):
                f.unlink()
        if len(res) > 1:
            print(f"sedfit peak RSS ratio {res[-1]['n']:,} / {res[0]['n']:,} pixels: "
                  f"{res[-1]['peak_rss_gb'] / res[0]['peak_rss_gb']:.3f}")
        sides = [int(v) for v in args.mosaic.split(",") if v.strip()]
        mres = []
        for s in sides:
            make_mosaic(tmp / f"mosaic{s}", s)
            r = _child(["--child", "mosaic", "--input", str(tmp / f"mosaic{s}"), "--size", str(s)])
            mres.append(r)
            print(f"mosaic cutout: {s} x {s} x 6 bands ({r['mosaic_gb']:.3f} GB of FITS) -> stamp {r['stamp']} "
                  f"in {r['seconds']:.2f} s, peak RSS {r['peak_rss_gb']:.3f} GB", flush=True)
        if len(mres) > 1:
            print(f"cutout peak RSS ratio {sides[-1]} / {sides[0]} mosaic: "
                  f"{mres[-1]['peak_rss_gb'] / mres[0]['peak_rss_gb']:.3f}")


if __name__ == "__main__":
    main()
