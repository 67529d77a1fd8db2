"""Pixel SED fitting against known truth: calibration, nested reference, synthetic galaxy, real data."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr

import pegleg
from pegleg import PeglegWarning, synth
from pegleg.exceptions import FitError
from pegleg.sed import fit_photometry, simulate_photometry
from pegleg.sed.fit import FLAG_NO_DATA, JOF_FILTERS
from pegleg.sed.information import information_curve

Z = 2.0


@pytest.fixture(scope="module")
def network():
    from pegleg.sed import load_posterior_network

    return load_posterior_network("default")


@pytest.fixture(scope="module")
def prior_pixels(emulator):
    return simulate_photometry(emulator, JOF_FILTERS, 400, redshift=Z, snr=(5.0, 100.0), depth_scatter=0.2,
                               seed=11)


@pytest.fixture(scope="module")
def calibrated_fit(emulator, network, prior_pixels):
    s = prior_pixels
    return fit_photometry(s["flux"], s["error"], JOF_FILTERS, Z, emulator=emulator, network=network,
                          error_floor=0.0, emulator_sigma=False, seed=1)


def _truth(s):
    return {"log_stellar_mass": s["derived"]["log_stellar_mass"], "log_sfr100": s["derived"]["log_sfr100"],
            "av": s["params"][:, 3]}


def _coverage(r, s, sel):
    return {name: float(np.mean((t[sel] >= r[name][sel, 0]) & (t[sel] <= r[name][sel, 2])))
            for name, t in _truth(s).items()}


def test_posteriors_with_enough_effective_draws_are_calibrated(prior_pixels, calibrated_fit):
    """Where the importance sampling has ESS >= 50, 68% intervals hold the truth 60-76% of the time."""
    s, r = prior_pixels, calibrated_fit
    assert np.all(np.isfinite(r["log_stellar_mass"]))
    good = r["ess"] >= 50
    assert good.sum() >= 100
    for name, cover in _coverage(r, s, good).items():
        assert 0.60 <= cover <= 0.76, (name, cover)
    hi = (s["snr"] >= 20) & good
    bias = np.median(r["log_stellar_mass"][hi, 1] - s["derived"]["log_stellar_mass"][hi])
    assert abs(bias) < 0.05, bias
    # the flag marks exactly the pixels below the ESS target
    assert np.array_equal((r["flag"] & 2) > 0, r["ess"] < 50)


def test_all_posteriors_are_calibrated(prior_pixels, calibrated_fit):
    """Issue 7 acceptance on 400 prior draws at S/N 5-100: coverage 60-76%, median ESS >= 50."""
    s, r = prior_pixels, calibrated_fit
    for name, cover in _coverage(r, s, np.ones(len(s["snr"]), bool)).items():
        assert 0.60 <= cover <= 0.76, (name, cover)
    assert np.median(r["ess"]) >= 50


def test_fast_mode_is_close(emulator, network, prior_pixels, calibrated_fit):
    s = prior_pixels
    r = fit_photometry(s["flux"], s["error"], JOF_FILTERS, Z, emulator=emulator, network=network,
                       method="fast", error_floor=0.0, emulator_sigma=False, seed=2)
    d = r["log_stellar_mass"][:, 1] - calibrated_fit["log_stellar_mass"][:, 1]
    assert np.median(np.abs(d)) < 0.1
    for name, cover in _coverage(r, s, np.ones(len(s["snr"]), bool)).items():
        assert 0.55 <= cover <= 0.85, (name, cover)
    # chi2 comes from one model at the proposal's main mode: close to the importance fit's best draw
    assert np.median(r["chi2"] / calibrated_fit["chi2"]) < 1.5


@pytest.mark.parametrize("method", ["importance", "fast"])
def test_posterior_samples_match_the_quantiles(emulator, network, prior_pixels, method):
    """``n_samples`` equally weighted draws: their medians are the reported medians within MC error."""
    s = prior_pixels
    n = 60
    r = fit_photometry(s["flux"][:n], s["error"][:n], JOF_FILTERS, Z, emulator=emulator, network=network,
                       method=method, n_samples=300, error_floor=0.0, emulator_sigma=False, seed=5)
    P = emulator.param_names
    assert r["samples"].shape == (n, 300, len(P)) and np.all(np.isfinite(r["samples"]))
    np.testing.assert_array_equal(r["samples"][..., P.index("redshift")], Z)
    for name in ("log_mass_formed", "av"):
        q = r[name]
        med = np.median(r["samples"][..., P.index(name)], axis=1)
        # Monte Carlo error of a median from ~300 draws (ESS >= 50 for importance): < 0.25 sigma
        d = np.abs(med - q[:, 1]) / np.maximum(q[:, 2] - q[:, 0], 1e-3) * 2
        assert np.median(d) < 0.15 and np.mean(d < 0.5) > 0.9, (name, np.median(d))


def _nested_agreement(emulator, network, n, seed):
    s = simulate_photometry(emulator, JOF_FILTERS, n, redshift=Z, snr=(10.0, 50.0), depth_scatter=0.2, seed=seed)
    kw = dict(emulator=emulator, network=network, error_floor=0.0, emulator_sigma=False, seed=3)
    r_is = fit_photometry(s["flux"], s["error"], JOF_FILTERS, Z, n_draws=512, **kw)
    r_ns = fit_photometry(s["flux"], s["error"], JOF_FILTERS, Z, method="nested", nlive=150, **kw)
    return r_is, r_ns


@pytest.mark.slow
def test_matches_nested_sampling(emulator, network):
    """Where importance sampling reaches its ESS target it matches nested sampling; where it does
    not, the pixel is flagged.  Measured: pixel 0 (ESS 61) 0.013 dex; pixel 1 (ESS 7, flagged) 0.39
    dex -- a two-mode posterior: nested sampling itself gave 8.8 with 150 live points and 9.47 +-
    0.05 with 50 or 100 (truth 8.90)."""
    from pegleg.sed.fit import FLAG_LOW_ESS

    r_is, r_ns = _nested_agreement(emulator, network, 2, seed=21)
    d = np.abs(r_is["log_stellar_mass"][:, 1] - r_ns["log_stellar_mass"][:, 1])
    ok = r_is["ess"] >= 50
    assert ok.any() and np.all(d[ok] < 0.05), (d, r_is["ess"])
    assert np.all(r_is["flag"][~ok] & FLAG_LOW_ESS)


def test_low_ess_nested_fallback(emulator, network):
    """``low_ess="nested"`` re-fits exactly the objects below the ESS target by nested sampling."""
    from pegleg.sed.fit import FLAG_LOW_ESS, FLAG_NESTED

    s = simulate_photometry(emulator, JOF_FILTERS, 2, redshift=Z, snr=(10.0, 50.0), depth_scatter=0.2, seed=21)
    kw = dict(emulator=emulator, network=network, error_floor=0.0, emulator_sigma=False, seed=3)
    r0 = fit_photometry(s["flux"], s["error"], JOF_FILTERS, Z, **kw)
    assert r0["ess"][0] >= 50 and r0["flag"][1] & FLAG_LOW_ESS          # pixel 1: ESS 7
    r = fit_photometry(s["flux"], s["error"], JOF_FILTERS, Z, low_ess="nested", nlive=25, **kw)
    np.testing.assert_array_equal(r["log_stellar_mass"][0], r0["log_stellar_mass"][0])
    assert r["flag"][0] == 0 and r["flag"][1] == FLAG_NESTED
    assert r["ess"][1] >= 50 and np.all(np.isfinite(r["log_stellar_mass"][1]))
    assert r["n_chunks"] == r0["n_chunks"] + 1                           # one more random stream
    with pytest.raises(FitError, match="low_ess"):
        fit_photometry(s["flux"], s["error"], JOF_FILTERS, Z, low_ess="retry", **kw)


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 7: measured 2026-11-27 (9 min; with the previous, logit-space network): "
                   "against dynesty with 150 live points, log M* |importance - nested| median 0.038 dex, 13 of 20 "
                   "pixels within 0.05 dex (max 0.43), log SFR100 5 of 20; still failing with the prior-CDF network. "
                   "The reference does not reproduce itself at that level: with the prior-CDF network, against 1,000 "
                   "live points importance sampling agrees for 17 (log M*) and 9 (log SFR100) of 20, and dynesty runs "
                   "with 400/400/1,000 live points agree among themselves for 17-19 and 3-5 of 20 "
                   "(scripts/check_nested_agreement.py, docs/_generated/nested_agreement.txt).  The evidences agree "
                   "(median -0.01 nats) except on the worst pixel, where dynesty's log Z is 3.5-7.4 nats low: it "
                   "missed the main mode (scripts/check_nested_evidence.py).  2026-11-28: importance sampling with "
                   "65,536 draws and an independent differential-evolution MCMC agree within 0.05 dex on 20/20 pixels "
                   "in log SFR100 (median 0.007 dex) and 19/20 in log M* and A_V (pixel 15: two modes), while dynesty "
                   "with 1,000 live points agrees with both on 6 of 12 pixels in log SFR100 (up to 0.27 dex off): the "
                   "reference, not the fitter, is unconverged (scripts/check_nested_reference.py)")
def test_matches_nested_sampling_20_pixels(emulator, network):
    r_is, r_ns = _nested_agreement(emulator, network, 20, seed=22)
    for q in ("log_stellar_mass", "log_sfr100"):
        d = np.abs(r_is[q][:, 1] - r_ns[q][:, 1])
        assert np.median(d) < 0.05 and np.mean(d < 0.05) >= 0.8, (q, d)


def test_information_gain_grows_with_snr(emulator, network):
    curve = information_curve((1.0, 3.0, 10.0, 30.0, 100.0), n=60, redshift=Z, emulator=emulator,
                              network=network, seed=4)
    med = curve["median"]
    for q in ("log_mass_formed", "av"):
        v = med.sel(info_quantity=q).values
        assert v[-1] > v[0] + 0.5 and np.all(np.diff(v) > -0.15), (q, v)
    assert 1.0 <= curve.attrs["snr_threshold_log_mass_formed"] <= 10.0


def test_bad_pixels_and_determinism(emulator, network, prior_pixels):
    s = prior_pixels
    f, e = s["flux"][:40].copy(), s["error"][:40].copy()
    f[3] = np.nan            # no valid band
    e[5, :10] = 0.0          # half the bands unusable
    kw = dict(emulator=emulator, network=network, seed=7, chunk_size=16)
    r1 = fit_photometry(f, e, JOF_FILTERS, Z, n_workers=1, **kw)
    assert r1["flag"][3] & FLAG_NO_DATA and np.all(np.isnan(r1["log_stellar_mass"][3]))
    assert r1["n_bands"][5] == len(JOF_FILTERS) - 10 and np.all(np.isfinite(r1["log_stellar_mass"][5]))
    r2 = fit_photometry(f, e, JOF_FILTERS, Z, n_workers=2, **kw)
    for k in ("log_stellar_mass", "av", "ess", "chi2"):
        np.testing.assert_array_equal(r1[k], r2[k])
    with pytest.raises(FitError, match="trained for"):
        fit_photometry(f, e, JOF_FILTERS, 9.5, **kw)


def test_photo_z_prior(emulator, network):
    s = simulate_photometry(emulator, JOF_FILTERS, 60, redshift=2.1, snr=30.0, depth_scatter=0.2, seed=5)
    r = fit_photometry(s["flux"], s["error"], JOF_FILTERS, 2.0, redshift_sigma=0.2, emulator=emulator,
                       network=network, error_floor=0.0, emulator_sigma=False, seed=8)
    zq = r["redshift"]
    assert np.all(zq[:, 0] < zq[:, 2])
    assert np.mean((2.1 >= zq[:, 0]) & (2.1 <= zq[:, 2])) >= 0.5
    t = s["derived"]["log_stellar_mass"]
    q = r["log_stellar_mass"]
    assert 0.5 <= np.mean((t >= q[:, 0]) & (t <= q[:, 2])) <= 0.9
    assert np.median(np.abs(q[:, 1] - t)) < 0.15


SYN_BANDS = ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F410M", "F444W"]


def _fit_synthetic(emulator, network, shape=(49, 49), **components):
    obs, truth = synth.galaxy(SYN_BANDS, shape=shape, redshift=Z, physical=True, emulator=emulator, seed=3,
                              snr_peak=150.0, **components)
    dec = obs.pegleg.deconvolve(n_workers=1)
    return obs, truth, dec.pegleg.sedfit(emulator=emulator, network=network, seed=0)


@pytest.fixture(scope="module")
def synthetic_fit(emulator, network):
    """The default physical synthetic galaxy (old bulge, dustier disk; weak colour gradient)."""
    return _fit_synthetic(emulator, network)


@pytest.fixture(scope="module")
def synthetic_fit_large(emulator, network):
    """The same galaxy in an 81x81 stamp: the generator's taper of the truth (from 0.8 of the
    truncation radius: 29 px here, 17.6 px in 49x49) lies beyond 5 r50 = 16 px."""
    return _fit_synthetic(emulator, network, shape=(81, 81))


@pytest.fixture(scope="module")
def gradient_fit(emulator, network):
    """An old dusty metal-rich bulge in a young metal-poor disk: F150W-F444W falls from 1.3 mag at
    the centre to -0.1 mag, log M/L(F444W) by ~0.4 dex."""
    bulge = {"log_mass": 10.3, "sed": {"av": 0.8, "log_metallicity": 0.0, **{f"dsfr{k}": -0.4 for k in range(1, 7)}}}
    disk = {"log_mass": 9.9, "sed": {"av": 0.1, "log_metallicity": -1.0, **{f"dsfr{k}": 0.2 for k in range(1, 7)}}}
    return _fit_synthetic(emulator, network, bulge=bulge, disk=disk)


def test_synthetic_galaxy(synthetic_fit):
    obs, truth, out = synthetic_fit
    pegleg.validate(out)
    region = out["sedfit_flag"].values & 4 == 0
    true_sum = np.log10(np.sum(10 ** truth["log_stellar_mass"].values[region]))
    assert abs(out.attrs["sedfit_log_mass_pixel_sum"][1] - true_sum) < 0.1
    # the mass map peaks at the bulge (the centre)
    m = out["log_stellar_mass"].sel(quantile=0.5).values
    iy, ix = np.unravel_index(np.nanargmax(m), m.shape)
    cy, cx = np.unravel_index(np.argmax(truth["log_stellar_mass"].values), m.shape)
    assert abs(iy - cy) <= 1 and abs(ix - cx) <= 1
    assert abs(out.attrs["sedfit_mass_difference_dex"]) < 0.2
    assert out.pegleg.history[-1]["step"] == "sedfit"
    # units, model and residual maps
    assert out["stellar_mass_density"].attrs["units"] == "Msun/kpc2"
    res = out["sed_residual"].values[:, region]
    assert 0.5 < np.nanstd(res) < 2.0


def test_sedfit_roundtrip_and_errors(synthetic_fit, tmp_path, emulator, network):
    _, _, out = synthetic_fit
    path = out.pegleg.to_netcdf(tmp_path / "fit.nc")
    xr.testing.assert_identical(pegleg.open_dataset(path), out)
    with pytest.raises(FitError, match="not emulated"):
        bad = out.assign_coords(band=[b if b != "F410M" else "F999X" for b in out.band.values])
        bad.pegleg.sedfit(emulator=emulator, network=network)
    with pytest.raises(FitError, match="redshift"):
        o2 = out.copy()
        o2.attrs.pop("redshift")
        o2.pegleg.sedfit(emulator=emulator, network=network)


@pytest.mark.realdata
@pytest.mark.parametrize("gid", ["36", pytest.param("531", marks=pytest.mark.slow),
                                 pytest.param("778", marks=pytest.mark.slow)])
def test_jof_galaxies(shared_data, gid, emulator, network):
    """Registered to F444W, deconvolved, errors calibrated, fitted at the catalogue redshift.
    Measured (bundled network): JOF-36 792 pixels, median reduced chi2 0.91, pixel-sum -
    integrated +0.12 dex; JOF-531 356 pixels, 1.26, +0.056 dex; JOF-778 246 pixels, 1.78,
    +0.194 dex.  Without registration 1.11, 2.00 and 4.65: JOF-778's F162M, F335M and F356W
    are offset by ~1 px from their neighbouring bands, and the pixel fits' residuals in those
    bands follow the image gradient (correlation 0.5-0.7)."""
    root = shared_data / "jades-origins-field"
    src = json.loads((root / "galaxies" / gid / "source.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PeglegWarning)
        ds = pegleg.open_stamps(root / "galaxies" / gid, psf=root / "psf", matched_to="F444W",
                                redshift=src["redshift_phot"])
        dec = ds.pegleg.register(apply=True).pegleg.deconvolve().pegleg.calibrate_errors()
    out = dec.pegleg.sedfit(emulator=emulator, network=network)
    fitted = (out["sedfit_flag"].values & 4) == 0
    assert fitted.sum() > 50
    assert out.attrs["sedfit_median_reduced_chi2"] < 3
    assert abs(out.attrs["sedfit_mass_difference_dex"]) < 0.2
    assert np.isfinite(out["log_stellar_mass"].sel(quantile=0.5).values[fitted]).mean() > 0.95


def _profiles(fit):
    from pegleg.mass_profile import mass_profile

    obs, truth, out = fit
    mp = mass_profile(out, "F444W")
    geo = dict(center=(mp.attrs["centre_y"], mp.attrs["centre_x"]), ellipticity=1 - mp.attrs["axis_ratio"],
               position_angle=mp.attrs["position_angle"])
    tp = truth.pegleg.radial_profile("stellar_mass_density", **geo)
    r50 = float(truth["r50"].sel(band="F444W"))
    inner = mp["radius"].values <= 5 * r50
    d = np.log10(mp["mass_density"].values[inner]) - np.log10(tp["profile"].values[inner])
    return mp, tp, d


def test_mass_profile_against_truth(synthetic_fit):
    """Measured 2026-11-27 (49x49 stamp, 16-width deconvolution): within 0.061-0.065 dex out to
    5 r50 (worst: 1.5 px), total mass within 0.01 dex, half-mass radius +9.4% to +10.8% (the
    truth's taper from 17.6 px: see test_mass_profile_acceptance); every annulus within 3 of
    its reported sigma."""
    mp, tp, d = _profiles(synthetic_fit)
    truth = synthetic_fit[1]
    assert mp["extrapolated"].values.any() and mp["reliable"].values[0]
    assert np.all(np.abs(d) < 0.15), d
    assert np.median(np.abs(d)) < 0.05
    # the errors cover the deviations: measured at most 1.4 sigma (1.5 px); the extrapolated
    # annuli combine the M/L scatter with the light's error (measured, or the tail fit's)
    n = d.size
    err_dex = mp["mass_density_error"].values[:n] / mp["mass_density"].values[:n] / np.log(10)
    assert np.all(np.abs(d) < 3 * err_dex), d / err_dex
    ext = mp["extrapolated"].values[:n]
    assert np.all(err_dex[ext] > mp.attrs["ml_extrapolated_log_sigma"])
    assert abs(mp.attrs["log_mass_total"][1] - truth.attrs["log_stellar_mass_total"]) < 0.1
    assert abs(mp.attrs["r50_mass"][1] / float(tp["r50"]) - 1) < 0.2


def test_mass_profile_acceptance(synthetic_fit_large):
    """Issue 8 on the default galaxy.  Measured 2026-11-27 (16-width deconvolution, exponential
    light tail beyond the last annulus with light S/N >= 10, fine-tuned posterior network):
    every annulus within 0.066 dex out to 5 r50, half-mass radius +7.1%, total mass -0.019 dex
    (fitter seeds 0-7: 0.056-0.085 dex, +2.9% to +9.0%); with the SFH-bin emulator 0.059 dex,
    +4.9%, -0.014 dex (seeds: 0.056-0.076 dex, +4.9% to +9.7%).  In a 49x49 stamp the half-mass
    radius came out +7% to +11%: the truth is tapered to zero from 17.6 px there, the
    extrapolated profile is not."""
    mp, tp, d = _profiles(synthetic_fit_large)
    truth = synthetic_fit_large[1]
    assert np.all(np.abs(d) < 0.1), d
    lo, mid, hi = mp.attrs["r50_mass"]
    true = float(tp["r50"])
    assert abs(mid / true - 1) < 0.1
    assert mid - 2 * (mid - lo) < true < mid + 2 * (hi - mid), (lo, mid, hi, true)
    assert abs(mp.attrs["log_mass_total"][1] - truth.attrs["log_stellar_mass_total"]) < 0.1


def true_ml_slope(truth, mlc) -> float:
    """Slope of the true log M/L(F444W) against the true F150W - F444W colour on the pixels of
    an ``ml_colour`` result (also used by scripts/make_validation.py)."""
    ti = truth["image"]
    yy, xx = mlc["y"].values, mlc["x"].values            # the same pixels, true values
    col = -2.5 * np.log10(ti.sel(band="F150W").values[yy, xx] / ti.sel(band="F444W").values[yy, xx])
    lml = truth["log_stellar_mass"].values[yy, xx] - np.log10(ti.sel(band="F444W").values[yy, xx])
    return float(np.polyfit(col, lml, 1)[0])


@pytest.mark.xfail(strict=True, reason="issues 7/8: in the composite colour-gradient galaxy the inner pixels' masses "
                   "are 0.15-0.31 dex low (bulge+disk populations with different dust and metallicity in one pixel, "
                   "fitted with one population: outshining), so the fitted M/L-colour slope is -0.17 vs 0.33 true "
                   "(default threshold S/N >= 20, 40 pixels; 0.03 vs 0.23 at S/N >= 10); measured 2026-11-27 with the "
                   "16-width deconvolution (12 widths: -0.04 vs 0.33)")
def test_ml_colour_slope(gradient_fit):
    from pegleg.mass_profile import ml_colour

    obs, truth, out = gradient_fit
    mlc = ml_colour(out, "F444W", ("F150W", "F444W"))
    true_slope = true_ml_slope(truth, mlc)
    assert abs(mlc.attrs["slope"] / true_slope - 1) < 0.2, (mlc.attrs["slope"], true_slope)


def test_single_population_gradient_galaxy(emulator, network):
    """Issue 8 on a galaxy whose pixels each hold one population (no outshining): one
    exponential (r_e 0.12") whose SED goes from old, dusty and metal-rich at the centre to
    young at 0.25".  Measured 2026-11-27 (16-width deconvolution, fine-tuned posterior
    network): M/L-colour slope 1.04 of the truth's with the default threshold (S/N >= 30),
    mass profile within 0.078 dex out to 5 r50 (fitter seeds 0-7: 0.072-0.082; noise seeds
    0-2 with the previous network: 0.078-0.084; with 12 widths 0.15-0.16: the central pixel's
    F444W light was 22-40% high and the tail's scale length 4.5% long), half-mass radius
    +6.2%, total mass -0.016 dex.  With the SFH-bin emulator: slope 1.00, 0.076 dex (seeds
    0.073-0.082), +6.2%, -0.015 dex."""
    from pegleg.mass_profile import ml_colour

    old = {"av": 0.8, "log_metallicity": 0.0, **{f"dsfr{k}": -0.4 for k in range(1, 7)}}
    young = {"av": 0.1, "log_metallicity": -1.0, **{f"dsfr{k}": 0.2 for k in range(1, 7)}}
    comp = {"log_mass": 10.5, "n": 1.0, "r_e": 0.12, "sed": old, "sed_outer": young, "gradient_radius": 0.25}
    obs, truth = synth.galaxy(SYN_BANDS, shape=(81, 81), redshift=Z, physical=True, emulator=emulator, seed=0,
                              snr_peak=150.0, bulge=comp, disk=False)
    out = obs.pegleg.deconvolve(n_workers=1).pegleg.sedfit(emulator=emulator, network=network, seed=0)
    mlc = ml_colour(out, "F444W", ("F150W", "F444W"))
    assert mlc.attrs["min_snr"] == 30.0
    assert abs(mlc.attrs["slope"] / true_ml_slope(truth, mlc) - 1) < 0.2
    mp = out.pegleg.mass_profile("F444W")
    assert abs(mp.attrs["log_mass_total"][1] - truth.attrs["log_stellar_mass_total"]) < 0.1
    mp, tp, d = _profiles((obs, truth, out))
    assert np.all(np.abs(d) < 0.1), d
    assert abs(mp.attrs["r50_mass"][1] / float(tp["r50"]) - 1) < 0.1


def test_binned_sedfit_paints_back(synthetic_fit, emulator, network):
    obs, truth, out = synthetic_fit
    binned = out.pegleg.bin(target_snr=30)
    fit = binned.pegleg.sedfit(emulator=emulator, network=network, seed=1, keep_samples=4)
    assert fit.pegleg.history[-1]["parameters"]["binned"] is True
    bin_id = fit["bin_id"].values
    region = bin_id >= 0
    m = fit["log_stellar_mass"].sel(quantile=0.5).values
    assert np.all(np.isfinite(m[region])) and np.all(np.isnan(m[~region]))
    # extensive quantities are shared by reference-band flux: every bin's pixel masses add
    # up to the bin's fitted mass; intensive ones are the same on every pixel of a bin
    av = fit["av"].sel(quantile=0.5).values
    for b in np.unique(bin_id[region])[:20]:
        sel = bin_id == b
        assert np.ptp(av[sel]) == 0
    multi = [b for b in np.unique(bin_id[region]) if (bin_id == b).sum() > 1]
    assert multi
    # posterior draws: draw k of a bin's pixels is draw k of the bin, its formed mass shared like
    # the maps' (so sums over pixels, e.g. predict_spectrum, count each bin once)
    smp = fit["posterior_samples"].transpose("y", "x", "sample", "param")
    lmf = smp.sel(param="log_mass_formed").values
    share = lmf - fit["log_mass_formed"].sel(quantile=0.5).values[..., None]
    for b in multi[:20]:
        sel = bin_id == b
        assert np.ptp(share[sel], axis=0).max() < 1e-9
        assert np.ptp(smp.sel(param="av").values[sel], axis=0).max() == 0
        assert np.all(np.ptp(lmf[sel], axis=0) > 0)
    assert abs(fit.attrs["sedfit_log_mass_pixel_sum"][1] - truth.attrs["log_stellar_mass_total"]) < 0.15


def test_profiles_of_everything(synthetic_fit):
    from pegleg.mass_profile import profiles

    _, truth, out = synthetic_fit
    prof = profiles(out)
    for name in ("stellar_mass_density", "sfr_density", "av", "log_age_mw", "light", "colour_F150W_F444W"):
        assert name in prof, name
    assert prof["light"].dims == ("band", "radius")
    # the light profile of F444W matches a direct radial profile of the image
    direct = out.pegleg.radial_profile("image", band="F444W", center=(prof.attrs["centre_y"], prof.attrs["centre_x"]),
                                       ellipticity=1 - prof.attrs["axis_ratio"],
                                       position_angle=prof.attrs["position_angle"])
    np.testing.assert_allclose(prof["light"].sel(band="F444W").values, direct["profile"].values.ravel(), rtol=1e-10)
    assert prof["stellar_mass_density"].attrs["units"] == "Msun/kpc2"
