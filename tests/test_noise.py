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


def test_calibrate_errors_bad_sky():
    obs, _ = synth.galaxy(["F444W"], shape=(21, 21), seed=3)
    with pytest.raises(SchemaError, match="sky"):
        calibrate_errors(obs, sky=np.ones((5, 5), bool))
