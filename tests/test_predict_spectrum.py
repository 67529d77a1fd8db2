"""The spectrum predicted by the resolved SED fit against the synthetic truth."""

import numpy as np
import pytest

from pegleg import synth
from pegleg.exceptions import SchemaError


@pytest.fixture(scope="module")
def fitted():
    from pegleg.sed import load_emulator

    emu = load_emulator()
    bands = ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F410M", "F444W"]
    obs, truth = synth.galaxy(bands, shape=(33, 33), redshift=2.0, physical=True, emulator=emu, seed=5,
                              snr_peak=150.0)
    region = np.zeros((33, 33), bool)
    region[15:18, 15:18] = True                      # the central 3x3 pixels
    fit = obs.pegleg.deconvolve(n_workers=1).pegleg.sedfit(region=region, keep_samples=12, seed=2)
    return truth, fit, region


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


def test_predict_spectrum_needs_samples(fitted):
    from pegleg.spectrum import predict_spectrum

    truth, fit, region = fitted
    with pytest.raises(SchemaError, match="keep_samples"):
        predict_spectrum(fit.drop_vars("posterior_samples"))
    with pytest.raises(SchemaError, match="n_draws"):
        predict_spectrum(fit, region, n_draws=999)
