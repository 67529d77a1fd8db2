"""The spectrum predicted by the resolved SED fit against the synthetic truth."""

import numpy as np
import pytest

from pegleg import synth
from pegleg.exceptions import SchemaError


BANDS = ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F410M", "F444W"]
#: a star-forming population (rising recent SFH: strong emission lines)
STAR_FORMING = {"av": 0.4, "log_metallicity": -0.5, "log_u": -2.0, "dsfr1": 0.5, "dsfr2": 0.4, "dsfr3": 0.2}


def _fit_central_pixels(bands=BANDS, redshift=2.0, emulator="default", seed=5, fit_seed=2, sedfit_kw=None,
                        **components):
    from pegleg.sed import load_emulator

    emu = load_emulator(emulator)
    obs, truth = synth.galaxy(list(bands), shape=(33, 33), redshift=redshift, physical=True, emulator=emu,
                              seed=seed, snr_peak=150.0, **components)
    region = np.zeros((33, 33), bool)
    region[15:18, 15:18] = True                      # the central 3x3 pixels
    fit = obs.pegleg.deconvolve(n_workers=1).pegleg.sedfit(region=region, keep_samples=12, seed=fit_seed,
                                                           emulator=emu, **(sedfit_kw or {}))
    return truth, fit, region


@pytest.fixture(scope="module")
def fitted():
    """A star-forming disk around an old bulge: every pixel mixes two populations."""
    return _fit_central_pixels(disk={"log_mass": 9.9, "sed": STAR_FORMING})


#: the line test: z = 2.3 puts H-beta+[OIII] in F162M and H-alpha in F210M; the 'accurate'
#: emulator (exact bagpipes lines) makes the truth's photometry and fits it -- the default
#: emulator's F162M barely moves with log U (0.01 mag from log U -4 to -2 where bagpipes
#: moves 0.45 mag), so with it the photometry carries no line information.  More proposal
#: draws keep every pixel's ESS >= 50 under that emulator's likelihood.
LINES_SETUP = dict(redshift=2.3, emulator="accurate", sedfit_kw=dict(n_draws=8192, max_rounds=6))


@pytest.fixture(scope="module")
def fitted_lines():
    from pegleg.sed.fit import JOF_FILTERS

    return _fit_central_pixels(JOF_FILTERS, **LINES_SETUP, bulge={"log_mass": 9.9, "sed": STAR_FORMING}, disk=False)


@pytest.fixture(scope="module")
def fitted_single():
    """One star-forming population (no disk): every pixel has the same known parameters; the 19
    JOF bands (the medium bands constrain the lines)."""
    from pegleg.sed.fit import JOF_FILTERS

    return _fit_central_pixels(JOF_FILTERS, bulge={"log_mass": 9.9, "sed": STAR_FORMING}, disk=False)


def test_predicted_spectrum_matches_truth(fitted):
    from pegleg.sed import sps
    from pegleg.spectrum import predict_spectrum

    truth, fit, region = fitted
    wl = np.exp(np.linspace(np.log(0.9), np.log(4.8), 300))
    pred = predict_spectrum(fit, region, wavelength=wl)
    assert pred["flux"].dims == ("quantile", "wavelength") and pred.attrs["n_pixels"] == 9
    # truth: every component's exact spectrum times its light fraction in the region
    theta = truth["component_sed_params"].values
    frac = truth["component_profile"].values[:, region].sum(axis=1)
    spec = sps.spectrum(theta, wl)
    true = (frac[:, None] * spec).sum(axis=0)
    med = pred["flux"].sel(quantile=0.5).values
    ratio = med / true
    # continuum between the Balmer break and 1.6 um rest (observed 1.2-4.8 um at z = 2)
    sel = wl > 1.2
    assert np.median(np.abs(ratio[sel] - 1)) < 0.1, np.median(np.abs(ratio[sel] - 1))
    lo, hi = pred["flux"].sel(quantile=0.16).values, pred["flux"].sel(quantile=0.84).values
    assert np.all(lo <= med) and np.all(med <= hi)
    # predicted line fluxes (z = 2: H-alpha+[NII] blend at 1.97 um, H-beta, [OIII], [OII] covered)
    lines = [str(v) for v in pred["line"].values]
    assert any("Halpha" in n for n in lines) and "Hbeta" in lines, lines
    lf = pred["line_flux"].sel(quantile=0.5).values
    assert np.all(np.isfinite(lf)) and np.all(lf > 0)


def test_integrated_prediction(fitted):
    """method='integrated': one fit of the region's summed photometry.  Measured: continuum
    (observed 1.2-4.8 um) within 2.6% median of the truth (resolved pixels: 2.9%), ESS 70."""
    from pegleg.sed import sps
    from pegleg.spectrum import predict_spectrum

    truth, fit, region = fitted
    wl = np.exp(np.linspace(np.log(0.9), np.log(4.8), 300))
    pred = predict_spectrum(fit.drop_vars("posterior_samples"), region, wavelength=wl, method="integrated",
                            n_draws=60)
    assert pred.attrs["method"] == "integrated" and pred.attrs["n_pixels"] == 9 and pred.attrs["n_draws"] == 60
    assert pred.attrs["integrated_ess"] > 20 and pred.attrs["integrated_n_bands"] == len(BANDS)
    theta = truth["component_sed_params"].values
    frac = truth["component_profile"].values[:, region].sum(axis=1)
    true = (frac[:, None] * sps.spectrum(theta, wl)).sum(axis=0)
    ratio = pred["flux"].sel(quantile=0.5).values / true
    assert np.median(np.abs(ratio[wl > 1.2] - 1)) < 0.1
    with pytest.raises(SchemaError, match="method"):
        predict_spectrum(fit, region, method="bins")
    with pytest.raises(SchemaError, match="sedfit"):
        predict_spectrum(fit.drop_vars("posterior_samples").assign_attrs(pegleg_history="[]"), region,
                         method="integrated")


def test_coupled_pixels_move_together(fitted):
    """coupling='log_u' sorts every pixel's draws by log U: the sum's spread in the
    ionisation-sensitive lines is that of a shared error, not 1/sqrt(pixels)."""
    from pegleg.spectrum import predict_spectrum

    truth, fit, region = fitted
    wl = np.exp(np.linspace(np.log(0.9), np.log(4.8), 200))
    kw = dict(wavelength=wl, line_fluxes_of=["[OIII]5008", "Hbeta"], progress=False)
    ind = predict_spectrum(fit, region, **kw)
    cpl = predict_spectrum(fit, region, coupling="log_u", **kw)
    assert cpl.attrs["coupling"] == "log_u" and "coupling" not in ind.attrs
    width = lambda p: float(np.log(p["line_flux"].sel(line="[OIII]5008", quantile=0.84)  # noqa: E731
                                   / p["line_flux"].sel(line="[OIII]5008", quantile=0.16)))
    assert width(cpl) > 1.5 * width(ind), (width(cpl), width(ind))
    # the draws are the same pixels' draws, recombined: the mean over draws is unchanged
    np.testing.assert_allclose(cpl["flux_draws"].mean("draw"), ind["flux_draws"].mean("draw"), rtol=1e-9)
    with pytest.raises(SchemaError, match="coupling"):
        predict_spectrum(fit, region, coupling="log_U", **kw)
    with pytest.raises(SchemaError, match="coupling"):
        predict_spectrum(fit.drop_vars("posterior_samples"), region, method="integrated", coupling="log_u", **kw)


def test_predict_spectrum_needs_samples(fitted):
    from pegleg.spectrum import predict_spectrum

    truth, fit, region = fitted
    with pytest.raises(SchemaError, match="keep_samples"):
        predict_spectrum(fit.drop_vars("posterior_samples"))
    with pytest.raises(SchemaError, match="n_draws"):
        predict_spectrum(fit, region, n_draws=999)
    with pytest.raises(SchemaError, match="Paalpha"):               # the error lists the known lines
        predict_spectrum(fit, region, line_fluxes_of=["Hdelta"])


def _write_s3d(path, flux_ujy, err_ujy, wl0, dwl, scale):
    """An s3d-like cube (MJy/sr, linear wavelength WCS) on the image pixel grid."""
    from astropy.io import fits

    area_sr = (scale / 3600 * np.pi / 180) ** 2
    h = fits.Header()
    h["BUNIT"] = "MJy/sr"
    ny, nx = flux_ujy.shape[1:]
    for k, v in {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CTYPE3": "WAVE", "CUNIT1": "deg", "CUNIT2": "deg",
                 "CUNIT3": "um", "CRPIX1": (nx + 1) / 2, "CRPIX2": (ny + 1) / 2, "CRPIX3": 1.0, "CRVAL1": 53.1,
                 "CRVAL2": -27.86, "CRVAL3": wl0, "CDELT1": -scale / 3600, "CDELT2": scale / 3600,
                 "CDELT3": dwl}.items():
        h[k] = v
    to_mjysr = 1.0 / (area_sr * 1e12)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(flux_ujy * to_mjysr, h, name="SCI"),
                  fits.ImageHDU(err_ujy * to_mjysr, h, name="ERR")]).writeto(path)


def _ifu_comparison(fitted, folder, method="pixels", coupling=None):
    """An IFU cube made from the same truth (PRISM resolution, noise) and the comparison of its
    region spectrum with the spectrum predicted by the resolved fit of the image pixels."""
    from pegleg import spectrum as sp
    from pegleg.sed import sps

    truth, fit, region = fitted
    wl = np.linspace(0.9, 5.0, 411)
    theta = truth["component_sed_params"].values
    spec = np.array([sp.convolve_to_resolution(wl, s, "prism") for s in sps.spectrum(theta, wl)])   # (comp, W)
    cube = np.einsum("cw,cyx->wyx", spec, truth["component_profile"].values)
    region_true = cube[:, region].sum(axis=1)
    n_spax = region.sum()
    sig_spax = np.median(region_true) / 30 / np.sqrt(n_spax)        # S/N ~ 30 for the region's spectrum
    noisy = cube + np.random.default_rng(7).normal(0, sig_spax, cube.shape)
    path = folder / "synthetic_s3d.fits"
    _write_s3d(path, noisy, np.full(cube.shape, sig_spax), wl[0], wl[1] - wl[0], float(truth.attrs["pixel_scale"]))
    observed = sp.extract(sp.read(path), region)
    np.testing.assert_allclose(observed["flux"].values, noisy[:, region].sum(axis=1), rtol=1e-5)
    pred = sp.predict_spectrum(fit, region, method=method, coupling=coupling)
    z = float(truth["component_sed_params"].sel(sed_param="redshift").values[0])
    return observed, pred, sp.compare(pred, observed, z=z)


@pytest.fixture(scope="module")
def ifu_comparison(fitted, tmp_path_factory):
    return _ifu_comparison(fitted, tmp_path_factory.mktemp("ifu"))


@pytest.fixture(scope="module")
def ifu_single(fitted_single, tmp_path_factory):
    return _ifu_comparison(fitted_single, tmp_path_factory.mktemp("ifu_single"))


@pytest.fixture(scope="module")
def ifu_single_integrated(fitted_single, tmp_path_factory):
    return _ifu_comparison(fitted_single, tmp_path_factory.mktemp("ifu_single_int"), method="integrated")


@pytest.fixture(scope="module")
def ifu_integrated(fitted, tmp_path_factory):
    return _ifu_comparison(fitted, tmp_path_factory.mktemp("ifu_int"), method="integrated")


def test_synthetic_ifu_continuum(ifu_comparison):
    """Measured: D4000 1.35 observed vs 1.26-1.27 predicted; reduced chi2 after calibration ~1.1-1.5."""
    observed, pred, res = ifu_comparison
    assert abs(float(res.d4000_observed) / float(res.d4000_model) - 1) < 0.10
    assert 0.5 < float(res.chi2_reduced_after) < 3.0
    # continuum shape: every window's median fractional residual within 4 sigma (+1%); measured: the
    # bluest window (rest 0.3-0.45 um) is 17% high, the others within 2%
    cr, cre = res.continuum_residual.values, res.continuum_residual_error.values
    assert np.all(np.abs(cr) < 4 * cre + 0.01), (cr, cre)
    assert np.all(np.abs(cr[1:]) < 0.05)


def _check_lines(observed, pred, res):
    """Issue 9: line ratios within 3 sigma of the cube's; absolute line fluxes of the lines the
    cube detects at S/N >= 5 (at least 3) within 3 combined sigma.  Returns the compared lines."""
    from pegleg import spectrum as sp

    ro, roe, rm = res.line_ratio_observed.values, res.line_ratio_observed_error.values, res.line_ratio_model.values
    ok = roe > 0
    assert ok.sum() >= 2
    rme = res.line_ratio_model_error.values
    assert np.all(np.abs(ro[ok] - rm[ok]) < 3 * np.hypot(roe[ok], rme[ok])), (res.line.values[ok], ro[ok], roe[ok],
                                                                                rm[ok], rme[ok])
    # absolute line fluxes through the same instrument (PRISM resolution, pixels, blends)
    z = float(res.attrs["redshift"])
    meas = sp.line_fluxes(observed, z)
    wlo = observed["wavelength"].values
    pl = {}
    for qv in (0.16, 0.5, 0.84):
        f = sp.convolve_to_resolution(pred["wavelength"].values, pred["flux"].sel(quantile=qv).values, "prism")
        one = observed.copy()
        one["flux"] = ("wavelength", np.interp(wlo, pred["wavelength"].values, f), observed["flux"].attrs)
        pl[qv] = sp.line_fluxes(one, z)["line_flux"]
    compared = []
    for name in meas["line"].values:
        if meas["line_snr"].sel(line=name) < 5 or name not in pl[0.5]["line"].values:
            continue
        compared.append(str(name))
        m, me = float(meas["line_flux"].sel(line=name)), float(meas["line_flux_error"].sel(line=name))
        lo, mid, hi = (float(pl[qv].sel(line=name)) for qv in (0.16, 0.5, 0.84))
        assert abs(m - mid) < 3 * np.hypot(me, 0.5 * abs(hi - lo)), (str(name), m, me, lo, mid, hi)
    assert len(compared) >= 3, compared
    return compared


@pytest.mark.xfail(strict=True, reason="issue 9, measured 2026-11-27 with the prior-CDF posterior network (model line "
                   "ratios from the posterior draws): D4000 within 6%; line ratios to Hbeta+[OIII] within 2.4 sigma, but "
                   "the absolute Hbeta+[OIII] flux is 2.9x low (7.4e-18 predicted, 16-84% 6.5e-18-9.2e-18, vs 2.14e-17 "
                   "+- 0.06e-17) and [SIII] 2x low: summed independently, the 9 pixels' posteriors -- each pulled the "
                   "same way by the prior on the ionisation parameter, metallicity and recent SFH -- give a spread far "
                   "too small for a shared error (the integrated fit of the same pixels passes: "
                   "test_synthetic_ifu_lines_integrated).  Re-measured with the 16-width deconvolution and the "
                   "fine-tuned network: Hbeta+[OIII] 0.35x the cube's (7.6e-18, 16-84% 5.5e-18-9.9e-18); the model's "
                   "own line fluxes: [OIII]5008 0.33x the truth (-6.7 half-widths), Hbeta 0.64x (-3.1), Halpha "
                   "0.73x (-2.1).  Noise-free truth "
                   "photometry with these pixels' errors (F444W S/N 5-12 after deconvolution) gives the same "
                   "prior-dominated recent SFH and log U: the information is not in one pixel.  Re-measured "
                   "2026-11-28 with the 'accurate' emulator making and fitting the photometry (n_draws 8192): "
                   "Hbeta+[OIII] 0.58x the cube's (1.25e-17, 16-84% 1.01e-17-1.46e-17), [OIII]5008 4.0 half-widths "
                   "low (3.7 with coupling='log_u'): at z = 2 no JOF medium band holds H-beta+[OIII] (F150W only) "
                   "or H-alpha (F200W only); at z = 2.3 (F162M, F210M) the same test passes: "
                   "test_synthetic_ifu_lines_medium_bands")
def test_synthetic_ifu_lines_single_population(ifu_single):
    observed, pred, res = ifu_single
    assert abs(float(res.d4000_observed) / float(res.d4000_model) - 1) < 0.10
    _check_lines(observed, pred, res)


@pytest.mark.xfail(strict=True, reason="issue 9, measured 2026-11-27 with the prior-CDF posterior network (model line "
                   "ratios from the posterior draws): the composite (old bulge + star-forming disk) pixels fitted with "
                   "one population each under-predict [OIII]: Hbeta+[OIII] relative to the cube's highest-S/N line "
                   "0.96 +- 0.28 predicted vs 2.16 +- 0.11 in the cube (4.0 sigma); HeI and Pa-beta 2.6-3.1 sigma high "
                   "(outshining).  Re-measured 2026-11-28 at z = 2.3 with the 'accurate' emulator, n_draws 8192 and "
                   "coupling='log_u' (the setup of test_synthetic_ifu_lines_medium_bands): the model's lines are within "
                   "3 half-widths of the truth's, but relative to Hbeta+[OIII] the red lines are too strong: "
                   "Halpha+[NII] 0.522 +- 0.026 vs 0.423 +- 0.018, HeI 0.073 +- 0.006 vs 0.045 +- 0.004, Pa-beta "
                   "0.057 +- 0.006 vs 0.031 +- 0.003 (3.1-3.9 sigma)")
def test_synthetic_ifu_lines_composite(ifu_comparison):
    _check_lines(*ifu_comparison)


@pytest.mark.parametrize("which", ["single", "composite"])
def test_synthetic_ifu_lines_integrated(which, request):
    """Issue 9 through the integrated fit of the same pixels (method='integrated', 200 draws of
    one posterior).  Measured 2026-11-27: every line ratio within 0.8 sigma (single population)
    and 2.1 sigma (composite); D4000 within 6%.  The photometry leaves the line ratios
    uncertain (e.g. Halpha+[NII] / (Hbeta+[OIII]) 1.0 +- 1.4): the agreement is that of an
    honest, wide prediction."""
    observed, pred, res = request.getfixturevalue("ifu_single_integrated" if which == "single" else "ifu_integrated")
    assert res.attrs["model_line_errors"] == "posterior draws"
    assert abs(float(res.d4000_observed) / float(res.d4000_model) - 1) < 0.10
    _check_lines(observed, pred, res)
    # the model's own line fluxes (bagpipes' Cloudy lines) against the truth's: within 3 of the
    # prediction's half 16-84% widths.  Measured (16 widths, fine-tuned network): Halpha 0.62x /
    # 0.70x the truth (-1.1 / -0.5 half-widths), Hbeta 0.62x / 0.58x (-1.3 / -1.2), [OIII]5008
    # 0.36x / 0.27x (-2.1 / -1.9: the photometry leaves log U to the prior; the cube's
    # Hbeta+[OIII] is 2.6x / 3.4x the median prediction, inside the wide interval)
    truth, _, region = request.getfixturevalue("fitted_single" if which == "single" else "fitted")
    _check_model_lines(pred, truth, region)


@pytest.fixture(scope="module")
def ifu_lines(fitted_lines, tmp_path_factory):
    return _ifu_comparison(fitted_lines, tmp_path_factory.mktemp("ifu_lines"), coupling="log_u")


def test_synthetic_ifu_lines_medium_bands(fitted_lines, ifu_lines):
    """Issue 9's synthetic end-to-end check where the photometry measures the lines: z = 2.3
    (H-beta+[OIII] in F162M, H-alpha+[NII] in F210M), the 'accurate' emulator, the 9 pixels'
    draws combined with their log U errors shared (``coupling="log_u"``: each pixel's
    photometry constrains log U the same way, so their errors do not average out).

    Measured 2026-11-28 (ESS 52-102 per pixel): D4000 0.95 of the model's; every line ratio
    of the cube within 3 sigma and the absolute fluxes of Hbeta+[OIII], Halpha+[NII],
    [SII], [SIII], HeI and Pa-beta within 3 combined sigma; the model's own lines within 3
    half-widths of the truth's: Halpha 0.97x the truth (16-84% 0.91-1.03), Hbeta 0.89x
    (0.84-0.93), [OIII]5008 0.86x (0.72-0.92), [OII]3727 0.57x (0.43-0.90) -- 0.5, 2.5, 1.4
    and 1.8 half-widths.  The same holds with synthetic seed 6 and fit seed 3.  Combined
    independently (no coupling), [OIII]5008 (0.83x, 0.74-0.90) and [OII] (0.60x, 0.57-0.75)
    are 2.2 and 4.4 half-widths low and the line-ratio check fails."""
    observed, pred, res = ifu_lines
    truth, fit, region = fitted_lines
    assert np.median(fit["ess"].values[region]) >= 50
    assert pred.attrs["coupling"] == "log_u"
    assert abs(float(res.d4000_observed) / float(res.d4000_model) - 1) < 0.10
    compared = _check_lines(observed, pred, res)
    assert {"Hbeta+[OIII]4960+[OIII]5008", "[NII]6550+Halpha+[NII]6585"} <= set(compared), compared
    _check_model_lines(pred, truth, region)


def _true_lines(truth, region, names):
    """The truth's emission-line fluxes in ``region`` (erg/s/cm2): every component's lines times
    its light fraction there."""
    from pegleg.sed import sps

    theta = truth["component_sed_params"].values
    frac = truth["component_profile"].values[:, region].sum(axis=1)
    return frac @ sps.spectrum(theta, np.array([1.0, 2.0]), lines=list(names))[1]


def _check_model_lines(pred, truth, region, n_half_widths=3.0):
    names = [str(n) for n in pred["line"].values]
    assert {"Halpha", "Hbeta", "[OIII]5008", "[OII]3727", "[NII]6585"} <= set(names), names
    true = _true_lines(truth, region, names)
    lo, mid, hi = pred["line_flux"].transpose("quantile", "line").values
    assert np.all(lo < mid) and np.all(mid < hi)
    off = (mid - true) / (0.5 * (hi - lo))
    assert np.all(np.abs(off) < n_half_widths), dict(zip(names, off.round(2)))
