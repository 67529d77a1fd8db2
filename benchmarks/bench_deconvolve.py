"""Wall time and accuracy: pegleg's deconvolve step against imcascade used as its docs show.

Run (one process, one thread)::

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \\
        python benchmarks/bench_deconvolve.py [--quick]

Two cases:

(a) JOF-36, 19 bands PSF-matched to F444W (real data from ``../shared/data``; skipped
    when the folder is absent): ``ds.pegleg.deconvolve()`` with default settings, against
    imcascade per band.
(b) A 6-band synthetic galaxy (:func:`pegleg.synth.galaxy`, seed 0) with known truth:
    the same two pipelines, flux and r50 errors against the truth per band.

imcascade per band, as its documentation does it: ``PSFFitter(psf).auto_fit()`` for the
PSF mixture; the widths chosen as ``initialize_fitter`` does (7 log-spaced widths from
0.75 px to 8 x the sep semi-major axis ``a`` of the object for a stamp <= 100 px) and
``init_dict={"re": a, "flux": sep flux}`` as in the docs' example; then
``Fitter(img, sig, psf_sig, psf_a, weight=1/err**2, mask=mask, init_dict=...)``,
``run_ls_min()`` and ``ImcascadeResults(fitter).calc_flux()/calc_r50()``.  Its only
wrapping: float64 native-byte-order copies with non-finite pixels masked (imcascade
breaks on big-endian arrays and overwrites NaNs in place), ``verbose=False`` and its
root-logger configuration undone.  Everything else (tilted-plane sky with its default
bounds, flux bounds, starting point) is imcascade's default.  Numba's compilation of
imcascade's renderer is done before timing (reported separately); pegleg is warmed up
the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

import pegleg  # noqa: E402
from pegleg import schema as S  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
JOF = DATA / "jades-origins-field"
SYNTH_BANDS = ["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]
QUICK_IMC_BANDS_JOF = ["F606W", "F150W", "F277W", "F444W"]


def _threads_one() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover
        pass
    try:
        import numba

        numba.set_num_threads(1)
    except Exception:  # pragma: no cover
        pass


def imcascade_band(img, err, mask, psf):
    """One band through imcascade as documented; returns a dict of results and timings."""
    import sep
    from imcascade import Fitter, ImcascadeResults
    from imcascade.psf_fitter import PSFFitter
    from imcascade.utils import log_scale

    from pegleg.deconvolve.imcascade_backend import quiet_root_logger

    t0 = time.perf_counter()
    img = np.array(img, dtype=np.float64)
    err = np.array(err, dtype=np.float64)
    bad = np.asarray(mask, bool) | ~np.isfinite(img) | ~np.isfinite(err) | ~(err > 0)
    img[bad] = 0.0
    err[bad] = 1.0
    with quiet_root_logger():
        psf_sig, psf_a = PSFFitter(np.array(psf, dtype=np.float64)).auto_fit()
        t_psf = time.perf_counter() - t0
        # the object's size and flux as initialize_fitter estimates them (sep)
        bkg = sep.Background(img, bw=32, bh=32)
        obj, seg = sep.extract(img, 2.5, err=bkg.globalrms, segmentation_map=True, deblend_cont=1e-3)
        xc, yc = img.shape[0] / 2.0, img.shape[1] / 2.0
        lab = seg[int(xc), int(yc)]
        if lab == 0:  # centre pixel not detected: the nearest object
            lab = int(np.argmin(np.hypot(obj["y"] - xc, obj["x"] - yc))) + 1
        a_guess, fl_guess = float(obj["a"][lab - 1]), float(obj["flux"][lab - 1])
        sig = log_scale(0.75, 8 * a_guess, 9 if img.shape[0] > 100 else 7)
        fitter = Fitter(img, sig, psf_sig, psf_a, weight=1.0 / err**2, mask=bad,
                        init_dict={"re": a_guess, "flux": fl_guess}, verbose=False)
        fitter.run_ls_min()
    res = ImcascadeResults(fitter)
    flux = float(res.calc_flux())
    r50 = float(res.calc_r50())
    return {"flux": flux, "r50_pix": r50, "time": time.perf_counter() - t0, "time_psf": t_psf,
            "n_psf": len(psf_sig), "sig_max": float(sig[-1]), "nfev": int(fitter.min_res.nfev),
            "success": bool(fitter.min_res.success), "sky": np.asarray(res.sky_params, float),
            "sky_ub": float(fitter.ub[-3]), "q": float(fitter.min_param[2])}


def warm_up() -> dict:
    """Compile imcascade's numba renderer and touch pegleg's code paths before timing."""
    from pegleg.deconvolve.gaussians import component_images

    shape = (31, 31)
    rng = np.random.default_rng(0)
    model = 50 * component_images(shape, (15.2, 14.9), np.array([1.0, 3.0]), 0.7, 0.4, [1.0], [1.0]).sum(0)
    err = np.full(shape, 0.5)
    img = model + rng.normal(0, 0.5, shape)
    psf = component_images((15, 15), (7, 7), np.array([1.2]), 1.0, 0.0)[0]
    psf /= psf.sum()
    t0 = time.perf_counter()
    imcascade_band(img, err, np.zeros(shape, bool), psf)
    t_imc = time.perf_counter() - t0
    t0 = time.perf_counter()
    ds = pegleg.from_arrays(img[None], err[None], bands=["F444W"], psf=psf[None], pixel_scale=0.03)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.pegleg.deconvolve(progress=False)
    return {"imcascade": t_imc, "pegleg": time.perf_counter() - t0}


def run_case(ds, imc_bands, truth=None):
    """pegleg on all bands (one call) and imcascade per band in ``imc_bands``."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = ds.pegleg.deconvolve(progress=False)
    t_peg = time.perf_counter() - t0
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.pegleg.deconvolve(progress=False, n_workers=1)
    t_serial = time.perf_counter() - t0
    print(f"    pegleg: {t_peg:.2f} s with default workers, {t_serial:.2f} s in one process "
          f"(parallel speed-up {t_serial / t_peg:.2f}x)", flush=True)
    _, neighbours = S.source_region(ds)
    psf_all = ds[S.PSF]
    match = ds.attrs.get(S.RESOLUTION, "")
    imc = {}
    for b in imc_bands:
        d = ds.sel({S.BAND: b})
        psf = psf_all.sel({S.BAND: match.split(":", 1)[1]}).values if match.startswith("matched:") else d[S.PSF].values
        try:
            imc[b] = imcascade_band(d[S.IMAGE].values, d[S.ERROR].values, d[S.MASK].values | neighbours, psf)
        except Exception as exc:  # imcascade failing is a result too
            imc[b] = {"error": f"{type(exc).__name__}: {exc}", "time": np.nan}
        print(f"    imcascade {b}: {imc[b].get('time', np.nan):.2f} s", file=sys.stderr, flush=True)
    return out, t_peg, imc


def report(name, ds, out, t_peg, imc, truth=None):
    bands = [str(b) for b in ds[S.BAND].values]
    ps = float(ds.attrs[S.PIXEL_SCALE])
    print(f"\n=== {name}: {len(bands)} bands, stamp {ds.sizes[S.Y]}x{ds.sizes[S.X]}, "
          f"resolution {ds.attrs.get(S.RESOLUTION)} ===")
    if truth is not None:
        print(f"{'band':7s} {'true F':>8s} {'dF peg':>8s} {'dF imc':>8s} | {'true r50':>8s} {'dr50 peg':>8s} "
              f"{'dr50 imc':>8s} | {'t imc':>6s} {'nPSF':>4s} {'nfev':>4s} {'sky0/ub':>8s}")
    else:
        print(f"{'band':7s} {'F peg':>9s} {'F imc':>9s} {'imc/peg':>8s} | {'r50 peg':>7s} {'r50 imc':>7s} "
              f"{'imc/peg':>8s} | {'t imc':>6s} {'nPSF':>4s} {'nfev':>4s} {'sky0/ub':>8s}")
    rows = []
    for b in bands:
        fp = float(out[S.FLUX_TOTAL].sel({S.BAND: b}))
        rp = float(out[S.R50].sel({S.BAND: b}))
        r = imc.get(b)
        fi = r["flux"] if r and "flux" in r else np.nan
        ri = r["r50_pix"] * ps if r and "r50_pix" in r else np.nan
        tail = ""
        if r and "flux" in r:
            sky_frac = r["sky"][0] / r["sky_ub"] if r["sky_ub"] else np.nan
            tail = f"| {r['time']:6.2f} {r['n_psf']:4d} {r['nfev']:4d} {sky_frac:8.2f}"
        elif r:
            tail = f"| imcascade failed: {r['error']}"
        if truth is not None:
            ft = float(truth["flux_total"].sel({S.BAND: b}))
            rt = float(truth["r50"].sel({S.BAND: b}))
            row = (fp / ft - 1, fi / ft - 1, rp / rt - 1, ri / rt - 1)
            print(f"{b:7s} {ft:8.4f} {row[0]:+8.2%} {row[1]:+8.2%} | {rt:8.4f} {row[2]:+8.2%} {row[3]:+8.2%} {tail}")
        else:
            row = (fi / fp - 1, ri / rp - 1)
            print(f"{b:7s} {fp:9.5f} {fi:9.5f} {row[0]:+8.2%} | {rp:7.4f} {ri:7.4f} {row[1]:+8.2%} {tail}")
        rows.append(row)
    rows = np.array(rows)
    t_imc = sum(r["time"] for r in imc.values() if np.isfinite(r["time"]))
    n_imc = sum(1 for r in imc.values() if np.isfinite(r["time"]))
    t_psf = sum(r.get("time_psf", 0.0) for r in imc.values())
    per_peg = t_peg / len(bands)
    per_imc = t_imc / max(n_imc, 1)
    print(f"wall time: pegleg {t_peg:.2f} s for {len(bands)} bands ({per_peg:.3f} s/band, incl. output assembly); "
          f"imcascade {t_imc:.2f} s for {n_imc} bands ({per_imc:.2f} s/band, of which PSFFitter {t_psf / max(n_imc, 1):.2f})")
    print(f"ratio imcascade/pegleg per band: {per_imc / per_peg:.1f}x"
          + ("" if n_imc == len(bands) else f"  [imcascade run on {n_imc} of {len(bands)} bands (--quick); "
                                             f"all-band estimate {per_imc * len(bands):.1f} s]"))
    return {"t_peg": t_peg, "t_imc": t_imc, "n": len(bands), "n_imc": n_imc, "ratio": per_imc / per_peg, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"imcascade on {len(QUICK_IMC_BANDS_JOF)} JOF bands ({', '.join(QUICK_IMC_BANDS_JOF)}) "
                         "and 3 synthetic bands only (pegleg still does all)")
    args = ap.parse_args(argv)
    try:
        import imcascade  # noqa: F401
    except ImportError:
        print("imcascade is not installed: pip install imcascade")
        return 1
    _threads_one()
    from importlib.metadata import version

    print(f"pegleg {pegleg.__version__}, imcascade {version('imcascade')}, "
          f"numpy {np.__version__}, threads=1{', QUICK mode' if args.quick else ''}")
    w = warm_up()
    print(f"warm-up (not timed below): imcascade {w['imcascade']:.2f} s (numba compilation), pegleg {w['pegleg']:.2f} s")
    summary = {}

    if (JOF / "galaxies" / "36").is_dir():
        ds = pegleg.open_stamps(JOF / "galaxies" / "36", psf=JOF / "psf", matched_to="F444W")
        bands = [str(b) for b in ds[S.BAND].values]
        imc_bands = [b for b in bands if b in QUICK_IMC_BANDS_JOF] if args.quick else bands
        out, t_peg, imc = run_case(ds, imc_bands)
        summary["JOF-36"] = report("JOF-36 (real, matched to F444W; no truth: imcascade relative to pegleg)",
                                   ds, out, t_peg, imc)
    else:
        print(f"\n=== JOF-36 skipped: {DATA} not found ===")

    obs, truth = pegleg.synth.galaxy(SYNTH_BANDS, seed=0)
    imc_bands = SYNTH_BANDS[::2] if args.quick else SYNTH_BANDS
    out, t_peg, imc = run_case(obs, imc_bands, truth)
    summary["synthetic"] = report("synthetic galaxy (seed 0; errors against truth)", obs, out, t_peg, imc, truth)

    print("\n=== summary ===")
    for k, s in summary.items():
        line = (f"{k:10s} pegleg {s['t_peg']:7.2f} s / {s['n']} bands; imcascade {s['t_imc']:7.2f} s / "
                f"{s['n_imc']} bands; per-band ratio {s['ratio']:.1f}x")
        r = s["rows"]
        if r.shape[1] == 4:
            ok = np.isfinite(r[:, 1])
            line += (f"; max |dF| pegleg {np.nanmax(np.abs(r[:, 0])):.2%} imcascade {np.nanmax(np.abs(r[ok, 1])):.2%}"
                     f"; max |dr50| pegleg {np.nanmax(np.abs(r[:, 2])):.2%} imcascade {np.nanmax(np.abs(r[ok, 3])):.2%}")
        else:
            line += (f"; imcascade/pegleg flux median {np.nanmedian(r[:, 0]):+.2%} (max |.| {np.nanmax(np.abs(r[:, 0])):.2%})"
                     f", r50 median {np.nanmedian(r[:, 1]):+.2%} (max |.| {np.nanmax(np.abs(r[:, 1])):.2%})")
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
