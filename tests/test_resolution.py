"""Short- vs long-wavelength resolution test: separate deconvolution vs match-then-deconvolve."""

import numpy as np
import pytest
from matplotlib.figure import Figure

import pegleg
from pegleg import SchemaError
from pegleg.resolution import effective_fwhm

SAME = dict(bulge=dict(slope=0.0, alpha=0.0), disk=dict(slope=0.0, alpha=0.0))  # identical morphology


@pytest.fixture(scope="module")
def noiseless():
    obs, truth = pegleg.synth.galaxy(["F150W", "F444W"], seed=0, noise=False, **SAME)
    assert np.allclose(truth["image"].values[0], truth["image"].values[1])
    return obs.pegleg.resolution_test("F150W", "F444W", truth=truth, sky_model="none")


def test_matched_recipe_is_flat_and_unbiased(noiseless):
    r = noiseless
    flat = dict(zip(r["recipe"].values, r["ratio_flatness"].values))
    bias = dict(zip(r["recipe"].values, r["ratio_bias"].values))
    assert flat["matched"] < 0.05  # measured 0.0033
    assert abs(bias["matched"]) < 0.005
    # separate deconvolution invents structure in the ratio: several times the matched one
    assert flat["separate"] > 3 * flat["matched"]


def test_recovered_resolution(noiseless):
    r = noiseless
    pt = r["fwhm_fraction_point"]
    # every PSF-corrected point source is at least 2x sharper than its PSF
    assert np.all(pt.values < 0.5)
    # separately, F150W keeps its own (better) resolution; matched, it is limited by F444W's
    assert float(pt.sel(recipe="separate", band="F150W")) < float(pt.sel(recipe="matched", band="F150W"))
    fwhm = r["psf_fwhm"].values
    assert fwhm[0] < fwhm[1]
    gal = r["fwhm_fraction_galaxy"]
    assert np.all((gal.values >= 0) & (gal.values < 1))


def test_effective_fwhm_recovers_a_known_blur():
    from scipy.signal import fftconvolve

    from pegleg.resolution import _gaussian_kernel

    obs, truth = pegleg.synth.galaxy(["F444W"], seed=1, noise=False)
    intrinsic = truth["image"].values[0]
    blurred = fftconvolve(intrinsic, _gaussian_kernel(3.0, 37), mode="same")
    assert effective_fwhm(blurred, intrinsic) == pytest.approx(3.0, abs=0.1)


def test_figure_and_errors(noiseless):
    fig = noiseless.pegleg.plot.resolution_test()
    assert isinstance(fig, Figure) and len(fig.axes) >= 4
    obs, _ = pegleg.synth.galaxy(["F150W", "F444W"], seed=0)
    with pytest.raises(SchemaError, match="F200W"):
        obs.pegleg.resolution_test("F200W", "F444W")
    with pytest.raises(SchemaError, match="different bands"):
        obs.pegleg.resolution_test("F444W", "F444W")
    with pytest.raises(SchemaError, match="observed-resolution"):
        obs.pegleg.psf_match("F444W").pegleg.resolution_test("F150W", "F444W")
