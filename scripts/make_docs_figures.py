#!/usr/bin/env python
"""Make the real-data figures of the documentation (needs ../shared/data; long-ish job).

For JOF-36, JOF-531 and JOF-778 (declared PSF-matched to F444W, registered to F444W,
deconvolved with the F444W PSF, errors calibrated to the sky rms, SED-fitted at the
catalogue redshift) and NGDEEP-645 (native resolution, registered, deconvolved per band;
fitted at z = 1.0, no catalogue redshift): maps, mass/colour/light profiles and the M/L-colour relation, written to
``docs/_static/realdata/`` with a ``numbers.txt`` summary.

Usage::

    OMP_NUM_THREADS=1 python scripts/make_docs_figures.py [--galaxies 36,531,778,ngdeep]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "docs" / "_static" / "realdata"


def load(gid: str):
    import pegleg
    from pegleg import PeglegWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PeglegWarning)
        if gid == "ngdeep":
            ds = pegleg.open_stamps(DATA / "ngdeep" / "galaxies" / "645", psf=DATA / "jades-origins-field" / "psf",
                                    redshift=1.0)
        else:
            jof = DATA / "jades-origins-field"
            src = json.loads((jof / "galaxies" / gid / "source.json").read_text())
            ds = pegleg.open_stamps(jof / "galaxies" / gid, psf=jof / "psf", matched_to="F444W",
                                    redshift=src["redshift_phot"])
        return ds.pegleg.register(apply=True).pegleg.deconvolve(progress=False).pegleg.calibrate_errors()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--galaxies", default="36,531,778,ngdeep")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"no shared data at {DATA}")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    lines = []
    for gid in args.galaxies.split(","):
        fit = load(gid).pegleg.sedfit(progress=False)
        name = f"jof{gid}" if gid != "ngdeep" else "ngdeep645"
        fit.pegleg.plot.maps().savefig(OUT / f"{name}_maps.png", dpi=70)
        mp = fit.pegleg.mass_profile("F444W")
        prof = fit.pegleg.profiles()
        mp.pegleg.plot.profiles().savefig(OUT / f"{name}_mass_profile.png", dpi=70)
        prof.pegleg.plot.profiles().savefig(OUT / f"{name}_profiles.png", dpi=70)
        try:
            mlc = fit.pegleg.ml_colour("F444W", ("F150W", "F444W"))
            mlc.pegleg.plot.ml_colour().savefig(OUT / f"{name}_ml_colour.png", dpi=70)
            slope = f"{mlc.attrs['slope']:.3f} +- {mlc.attrs['slope_error']:.3f}"
        except Exception as exc:  # too few pixels with S/N >= 10 in all three bands
            slope = f"n/a ({exc})"
        a = fit.attrs
        lines.append(f"{name}: z = {fit.attrs['redshift']:.3f}, {a['sedfit_n_fitted']} pixels, median reduced "
                     f"chi2 {a['sedfit_median_reduced_chi2']:.2f}, median ESS {a['sedfit_median_ess']:.0f}, "
                     f"log M* pixel sum {a['sedfit_log_mass_pixel_sum'][1]:.2f} vs integrated "
                     f"{a['sedfit_log_mass_integrated'][1]:.2f}; mass profile total "
                     f"{mp.attrs['log_mass_total'][1]:.2f}, r50 mass {mp.attrs['r50_mass'][1]:.3f}\" vs light "
                     f"{mp.attrs['r50_light'][1]:.3f}\"; M/L(F444W)-colour slope {slope}")
        print(lines[-1], flush=True)
    (OUT / "numbers.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
