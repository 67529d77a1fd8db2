"""JOF-36 from FITS to maps, profiles and NetCDF: wall time of every stage.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_end_to_end.py [--galaxy 36] [--workers 2]

Needs ``../shared/data`` (skips with a message otherwise).  The chain: ``open_stamps``
(19 bands, declared PSF-matched to F444W) -> ``deconvolve`` (F444W PSF) ->
``calibrate_errors`` -> ``sedfit`` -> ``mass_profile`` + ``profiles`` -> ``to_netcdf``,
run with ``--workers`` processes and, as the baseline in the same process, with one.
Prints the seconds per stage, the totals and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "jades-origins-field"


def chain(gid: str, workers: int, out_dir: Path) -> dict[str, float]:
    import pegleg
    from pegleg import PeglegWarning

    times = {}
    t = time.perf_counter()
    src = json.loads((DATA / "galaxies" / gid / "source.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PeglegWarning)
        ds = pegleg.open_stamps(DATA / "galaxies" / gid, psf=DATA / "psf", matched_to="F444W",
                                redshift=src["redshift_phot"])
    times["open_stamps"] = time.perf_counter() - t
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PeglegWarning)
        dec = ds.pegleg.deconvolve(n_workers=workers, progress=False)
    times["deconvolve"] = time.perf_counter() - t
    t = time.perf_counter()
    dec = dec.pegleg.calibrate_errors()
    times["calibrate_errors"] = time.perf_counter() - t
    t = time.perf_counter()
    fit = dec.pegleg.sedfit(n_workers=workers, progress=False)
    times["sedfit"] = time.perf_counter() - t
    t = time.perf_counter()
    mp = fit.pegleg.mass_profile("F444W")
    prof = fit.pegleg.profiles()
    times["profiles"] = time.perf_counter() - t
    t = time.perf_counter()
    fit.pegleg.to_netcdf(out_dir / f"jof{gid}_w{workers}.nc")
    mp.to_netcdf(out_dir / f"jof{gid}_w{workers}_mass_profile.nc")
    del prof
    times["to_netcdf"] = time.perf_counter() - t
    times["pixels"] = float(fit.attrs["sedfit_n_fitted"])
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--galaxy", default="36")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"shared data not found at {DATA}; nothing to do")
        return 0
    import pegleg  # noqa: F401  (import time is not part of the chain)

    with tempfile.TemporaryDirectory() as tmp:
        par = chain(args.galaxy, args.workers, Path(tmp))
        ser = chain(args.galaxy, 1, Path(tmp))
    stages = [k for k in par if k != "pixels"]
    print(f"JOF-{args.galaxy}: 19 bands, {int(par['pixels'])} fitted pixels")
    print(f"{'stage':18s} {args.workers} workers [s]   1 worker [s]")
    for k in stages:
        print(f"{k:18s} {par[k]:14.1f} {ser[k]:14.1f}")
    tp, ts = sum(par[k] for k in stages), sum(ser[k] for k in stages)
    print(f"{'total':18s} {tp:14.1f} {ts:14.1f}   (1 worker / {args.workers} workers = {ts / tp:.2f}x; "
          f"budget 60 s: {'met' if tp <= 60 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
