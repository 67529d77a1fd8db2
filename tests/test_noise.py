"""Error-map calibration against the measured sky noise."""

import numpy as np
import pytest

from pegleg import synth
from pegleg.exceptions import SchemaError
from pegleg.noise import calibrate_errors, sky_rms


def test_sky_rms_is_robust():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 2.0, 20000)
    v[:200] = 1e3  # outliers (1%)
    assert sky_rms(v) == pytest.approx(2.0, rel=0.03)
    assert np.isnan(sky_rms(np.ones(3)))


@pytest.mark.parametrize("wrong", [0.25, 4.0])
def test_calibrate_errors_recovers_the_true_noise(wrong):
    obs, _ = synth.galaxy(["F150W", "F444W"], shape=(65, 65), seed=3)
    true_err = obs["error"].values.copy()
    bad = obs.copy()
    bad["error"] = obs["error"] * wrong
    out = calibrate_errors(bad)
    np.testing.assert_allclose(out["error_scale"].values, 1 / wrong, rtol=0.05)
    np.testing.assert_allclose(out["error"].values, true_err, rtol=0.05)
    assert out.pegleg.history[-1]["step"] == "calibrate_errors"
    assert bad["error"].values[0, 0, 0] == pytest.approx(true_err[0, 0, 0] * wrong)  # input untouched
    # calibrating again changes (almost) nothing and error_scale stays the total factor
    again = calibrate_errors(out)
    np.testing.assert_allclose(again["error_scale"].values, 1 / wrong, rtol=0.05)
    ratio = again["error"].values / bad["error"].values
    np.testing.assert_allclose(ratio[:, 0, 0], again["error_scale"].values, rtol=1e-12)


def test_calibrate_errors_after_deconvolve_scales_every_part():
    """After deconvolve, error, error_observed, model_error and the bootstrap draws' spread (so
    the bin errors of ``binned``) all take the band's factor; the best fit does not move."""
    from pegleg.binning import bin as bin_pixels, binned

    obs, _ = synth.galaxy(["F150W", "F444W"], shape=(65, 65), seed=3)
    bad = obs.copy()
    bad["error"] = obs["error"] * 3.0
    dec = bad.pegleg.deconvolve(sky_model="none", n_workers=1)
    out = calibrate_errors(dec)
    f = out["error_scale"].values
    np.testing.assert_allclose(f, 1 / 3.0, rtol=0.05)
    for name in ("error", "error_observed", "model_error"):
        np.testing.assert_allclose(out[name].values, dec[name].values * f[:, None, None], rtol=1e-12)
    np.testing.assert_allclose(out["error"].values, np.hypot(out["error_observed"], out["model_error"]).values,
                               rtol=1e-12)
    np.testing.assert_array_equal(out["mgm_flux"].values, dec["mgm_flux"].values)
    bins = bin_pixels(dec, 15, band="F444W")["bin_id"]
    t0, t1 = binned(dec.assign(bin_id=bins)), binned(out.assign(bin_id=bins))
    np.testing.assert_allclose(t1["error"].values, t0["error"].values * f[None, :], rtol=1e-9)


def test_calibrate_errors_bad_sky():
    obs, _ = synth.galaxy(["F444W"], shape=(21, 21), seed=3)
    with pytest.raises(SchemaError, match="sky"):
        calibrate_errors(obs, sky=np.ones((5, 5), bool))
