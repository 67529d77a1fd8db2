#!/usr/bin/env python
"""Make the real-data figures of the documentation (needs ../shared/data; long-ish job).

For JOF-36, JOF-531 and JOF-778 (declared PSF-matched to F444W, registered to F444W,
deconvolved with the F444W PSF, errors calibrated to the sky rms, SED-fitted at the
catalogue redshift) and NGDEEP-645 (native resolution, registered, deconvolved per band;
no catalogue redshift: fitted at the peak of pegleg's photometric-redshift posterior,
``pegleg.sed.photo_z``, of the catalogue's 0.32" aperture fluxes): maps, mass/colour/light profiles and the M/L-colour relation, written to
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


def ngdeep_photo_z():
    """pegleg's photometric redshift of NGDEEP-645 from the catalogue's aperture fluxes (cached)."""
    global _PZ
    if _PZ is None:
        import numpy as np

        from pegleg.sed import photo_z

        src = json.loads((DATA / "ngdeep" / "galaxies" / "645" / "source.json").read_text())
        bands = src["bands"]
        f = np.array([src["aperture_0p32arcsec_flux_uJy"][b] for b in bands])
        e = np.array([src["aperture_0p32arcsec_flux_err_uJy"][b] for b in bands])
        _PZ = photo_z(f, e, bands, seed=0)
    return _PZ


_PZ = None


def load(gid: str):
    import pegleg
    from pegleg import PeglegWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PeglegWarning)
        if gid == "ngdeep":
            ds = pegleg.open_stamps(DATA / "ngdeep" / "galaxies" / "645", psf=DATA / "jades-origins-field" / "psf",
                                    redshift=float(ngdeep_photo_z()["z_peak"][0]))
        else:
            jof = DATA / "jades-origins-field"
            src = json.loads((jof / "galaxies" / gid / "source.json").read_text())
            ds = pegleg.open_stamps(jof / "galaxies" / gid, psf=jof / "psf", matched_to="F444W",
                                    redshift=src["redshift_phot"])
        return ds.pegleg.register(apply=True).pegleg.deconvolve(progress=False).pegleg.calibrate_errors()


def ceers() -> str:
    """The CEERS PRISM spectrum: redshift from its lines, one bagpipes model compared through
    ``pegleg.spectrum.compare`` (figure ``ceers_comparison.png``); returns the numbers line."""
    import numpy as np

    from pegleg import spectrum as sp
    from pegleg.plot import spectrum_comparison
    from pegleg.sed import sps

    obs = sp.read(DATA / "nirspec-prism" / "ceers1345_933.spec.fits")
    z, det = sp.redshift_from_lines(obs)
    p = np.zeros(len(sps.PARAM_NAMES))
    # a young, low-metallicity star-forming galaxy (the test's model: extreme [OIII] needs a recent burst)
    for k, v in dict(log_mass_formed=7.55, redshift=z, log_metallicity=-1.0, av=0.1, delta=0.0, eta=1.0, log_u=-1.5,
                     dsfr1=1.5, dsfr2=1.0).items():
        p[sps.PARAM_NAMES.index(k)] = v
    res = sp.compare(sp.predict(p), obs)
    fig = spectrum_comparison(res)
    fig.savefig(OUT / "ceers_comparison.png", dpi=70)
    good = ~obs["mask"].values
    lines = ", ".join(f"{n} ({s_:.0f})" for n, s_ in zip(det["lines"].line.values, det["lines"].line_snr.values)
                      if s_ >= 5)
    return (f"ceers1345_933 (PRISM): z = {z:.4f} +- {det['z_error']:.4f} from {lines}; bagpipes model "
            f"(log M 7.55, Z 0.1 Zsun, A_V 0.1, log U -1.5, rising SFH): reduced chi2 "
            f"{float(res.chi2_reduced_before):.1f} -> {float(res.chi2_reduced_after):.1f} after a "
            f"{res.attrs['poly_order']}-order calibration ({res.calibration.values[good].min():.2f}-"
            f"{res.calibration.values[good].max():.2f}); D4000 {float(res.d4000_observed):.2f} +- "
            f"{float(res.d4000_observed_error):.2f} observed, {float(res.d4000_model):.2f} model")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--galaxies", default="36,531,778,ngdeep,ceers",
                    help="JOF ids, 'ngdeep' and 'ceers' (the PRISM spectrum compared with a bagpipes model)")
    args = ap.parse_args()
    if not DATA.is_dir():
        print(f"no shared data at {DATA}")
        return 0
    OUT.mkdir(parents=True, exist_ok=True)
    lines = []
    for gid in args.galaxies.split(","):
        if gid == "ceers":
            lines.append(ceers())
            print(lines[-1], flush=True)
            continue
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
            slope = (f"{mlc.attrs['slope']:.3f} +- {mlc.attrs['slope_error']:.3f} ({mlc.sizes['pixel']} pixels at "
                     f"S/N >= {mlc.attrs['min_snr']:.0f})")
        except Exception as exc:  # too few pixels with S/N >= 10 in all three bands
            slope = f"n/a ({exc})"
        a = fit.attrs
        lines.append(f"{name}: z = {fit.attrs['redshift']:.3f}, {a['sedfit_n_fitted']} pixels, median reduced "
                     f"chi2 {a['sedfit_median_reduced_chi2']:.2f}, median ESS {a['sedfit_median_ess']:.0f}, "
                     f"log M* pixel sum {a['sedfit_log_mass_pixel_sum'][1]:.2f} vs integrated "
                     f"{a['sedfit_log_mass_integrated'][1]:.2f}; mass profile total "
                     f"{mp.attrs['log_mass_total'][1]:.2f}, r50 mass {mp.attrs['r50_mass'][1]:.3f}\" vs light "
                     f"{mp.attrs['r50_light'][1]:.3f}\" (light tail: {mp.attrs['light_tail']}"
                     + (f" beyond {mp.attrs['r_tail']:.2f}\"" if mp.attrs['light_tail'] != "model" else "")
                     + f"); M/L(F444W)-colour slope {slope}")
        print(lines[-1], flush=True)
    if "ngdeep" in args.galaxies.split(","):
        import matplotlib.pyplot as plt

        pz = ngdeep_photo_z()
        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(pz["redshift"], pz["pdf"][0], color="k")
        ax.axvline(float(pz["z_peak"][0]), color="C3", ls="--", label=f"peak z = {float(pz['z_peak'][0]):.2f}")
        ax.axvspan(float(pz["z_p16"][0]), float(pz["z_p84"][0]), color="0.85", label="16-84%")
        ax.set(xlabel="redshift", ylabel="p(z | 6 aperture fluxes)", title="NGDEEP-645 photo-z (pegleg.sed.photo_z)")
        ax.legend(frameon=False)
        fig.tight_layout()
        fig.savefig(OUT / "ngdeep645_photoz.png", dpi=70)
        plt.close(fig)
        lines.append(f"ngdeep645 photo-z (catalogue 0.32\" aperture fluxes, flat prior on 0.1-7): peak "
                     f"{float(pz['z_peak'][0]):.2f}, median {float(pz['z_median'][0]):.2f}, 16-84% "
                     f"{float(pz['z_p16'][0]):.2f}-{float(pz['z_p84'][0]):.2f}, P(z > 1) = "
                     f"{float((pz['pdf'][0] * (pz['redshift'] > 1)).integrate('redshift')):.2f}")
        print(lines[-1], flush=True)
    (OUT / "numbers.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
