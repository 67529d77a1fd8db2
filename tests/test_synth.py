"""Synthetic galaxies: flux bookkeeping, sizes, PSFs, noise, determinism, validity."""

import json

import numpy as np
import pytest

import pegleg
from pegleg import PSFError, SchemaError, synth
from pegleg.psf.models import gaussian_psf

BANDS = ["F090W", "F115W", "F150W", "F200W", "F277W", "F444W"]


@pytest.fixture(scope="module")
def default():
    return synth.galaxy(BANDS)


@pytest.fixture(scope="module")
def noiseless():
    return synth.galaxy(BANDS, noise=False, clumps=3)


def test_observed_is_valid_stamp(default):
    obs, truth = default
    assert pegleg.validate(obs) is obs
    assert obs.pegleg.bands == BANDS and obs.attrs["pixel_scale"] == 0.03
    assert obs.attrs["redshift"] == 1.0 and obs.attrs["source_id"] == "synthetic-0"
    assert obs.pegleg.history[-1]["step"] == "synth.galaxy"
    assert not obs["mask"].any()
    seg = obs["segmentation"].values
    assert seg.dtype.kind == "i" and set(np.unique(seg)) == {0, 1}
    cy, cx = round(truth.attrs["centre_y"]), round(truth.attrs["centre_x"])
    assert seg[cy, cx] == 1 and seg[0, 0] == 0
    np.testing.assert_array_equal(obs["error"].values, np.broadcast_to(truth["noise"].values[:, None, None],
                                                                         obs["error"].shape))


def test_truth_content(default):
    obs, truth = default
    for c in ("band", "wavelength", "y", "x"):
        np.testing.assert_array_equal(truth[c].values, obs[c].values)
        assert truth[c].attrs == obs[c].attrs
    for name, da in truth.data_vars.items():
        assert "units" in da.attrs and "long_name" in da.attrs, name
    assert truth["image"].dims == ("band", "y", "x")
    assert truth["component_image"].dims == ("component", "band", "y", "x")
    assert list(truth["component"].values) == ["bulge", "disk"]
    np.testing.assert_allclose(truth["component_image"].sum("component"), truth["image"], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(truth["flux_stamp"], truth["image"].sum(("y", "x")), rtol=1e-12)
    np.testing.assert_allclose(truth["flux_stamp"], truth["flux_total"], rtol=1e-9)  # truncated inside the stamp
    assert truth["r50"].attrs["units"] == "arcsec" and np.all(truth["r80"] > truth["r50"])
    assert truth.attrs["pixel_scale"] == 0.03 and truth.attrs["redshift"] == 1.0
    assert truth.attrs["q"] == 0.7 and truth.attrs["pa"] == 30.0
    assert truth.attrs["render_flux_error"] < 1e-3
    comps = json.loads(truth.attrs["components"])
    assert comps[0]["name"] == "bulge" and comps[0]["n"] == 4.0
    assert 1.0 < float(truth["flux_total"].sel(band="F444W")) < 3.0


def test_noise_free_flux_conserved(noiseless):
    obs, truth = noiseless
    rel = obs["image"].sum(("y", "x")).values / truth["flux_total"].values - 1
    assert np.max(np.abs(rel)) < 0.01, rel
    np.testing.assert_allclose(obs["image"].values, truth["image_convolved"].values)
    assert pegleg.validate(obs) is obs  # error = depth although no noise was added


def test_r50_of_pure_disk_matches_r_e():
    _, truth = synth.galaxy(["F444W"], bulge=False, disk={"r_e": 0.18, "alpha": 0.0}, shape=(129, 129), noise=False)
    assert float(truth["r50"][0]) == pytest.approx(0.18, rel=0.02)


def test_r50_of_pure_de_vaucouleurs_matches_r_e():
    _, truth = synth.galaxy(["F444W"], disk=False, bulge={"r_e": 0.06, "alpha": 0.0}, shape=(161, 161), noise=False)
    assert float(truth["r50"][0]) == pytest.approx(0.06, rel=0.03)
    assert truth.attrs["render_flux_error"] < 1e-3


def test_psf_and_size_trends(default):
    _, truth = default
    assert np.all(np.diff(truth["psf_fwhm"].values) > 0)
    assert np.all(np.diff(truth["r50"].values) < 0)  # colour gradient: smaller in the red


def test_deterministic_for_a_seed():
    a_obs, a_truth = synth.galaxy(BANDS[:3], seed=7, clumps=3)
    b_obs, b_truth = synth.galaxy(BANDS[:3], seed=7, clumps=3)
    c_obs, c_truth = synth.galaxy(BANDS[:3], seed=8, clumps=3)
    np.testing.assert_array_equal(a_obs["image"].values, b_obs["image"].values)
    np.testing.assert_array_equal(a_truth["image"].values, b_truth["image"].values)
    assert not np.array_equal(a_obs["image"].values, c_obs["image"].values)
    assert not np.array_equal(a_truth["image"].values, c_truth["image"].values)  # clumps move


def test_noise_matches_depth(default):
    obs, truth = default
    sky = obs["segmentation"].values == 0
    resid = obs["image"].values - truth["image_convolved"].values - truth["sky"].values[:, None, None]
    ratio = resid[:, sky].std(axis=1) / truth["noise"].values
    np.testing.assert_allclose(ratio, 1.0, atol=0.05)
    # default depth: peak S/N 100 in the brightest band
    peak = truth["image_convolved"].max(("y", "x")).values / truth["noise"].values
    assert peak.max() == pytest.approx(100, rel=1e-9)


def test_depth_sky_units_and_sed():
    obs, truth = synth.galaxy(["F150W", "F444W"], depth={"F150W": 0.002, "F444W": 0.001}, sky=0.01, noise=False)
    np.testing.assert_allclose(truth["noise"], [0.002, 0.001])
    np.testing.assert_allclose(obs["image"].values - truth["image_convolved"].values, 0.01)
    nobs, ntruth = synth.galaxy(["F150W", "F444W"], units="nJy", noise=False)
    assert nobs["image"].attrs["units"] == "nJy"
    np.testing.assert_allclose(ntruth["flux_total"].values, 1000 * truth["flux_total"].values)

    def sed(name, bands, wavelengths):
        return {"bulge": [0.5, 2.0], "disk": [1.0, 1.0], "clumps": [0.3, 0.1]}[name]

    _, struth = synth.galaxy(["F150W", "F444W"], sed=sed, clumps=2, noise=False)
    np.testing.assert_allclose(struth["flux_total"], [1.8, 3.1])
    np.testing.assert_allclose(struth["component_image"].sum(("y", "x")).sel(component="clumps"), [0.3, 0.1])


def test_given_psfs_are_used():
    psfs = {"F150W": gaussian_psf(0.09, 0.03, 21), "F444W": gaussian_psf(0.15, 0.03, 31)}
    obs, truth = synth.galaxy(["F150W", "F444W"], psf=psfs, noise=False)
    np.testing.assert_allclose(truth["psf_fwhm"], [0.09, 0.15], rtol=0.02)
    np.testing.assert_allclose(obs["psf"].sel(band="F444W").values, psfs["F444W"])
    with pytest.raises(PSFError):
        synth.galaxy(["F150W", "F444W"], psf={"F150W": psfs["F150W"]})


def test_bad_inputs():
    with pytest.raises(SchemaError, match="unknown band"):
        synth.galaxy(["F999W"])
    with pytest.raises(SchemaError, match="too small"):
        synth.galaxy(["F444W"], shape=(5, 5))
    for ps in (0, -0.03, float("nan")):
        with pytest.raises(SchemaError, match="pixel_scale"):
            synth.galaxy(["F444W"], pixel_scale=ps)
    with pytest.raises(SchemaError):
        synth.galaxy(["F444W"], bulge={"nonsense": 1})
    with pytest.raises(SchemaError):
        synth.galaxy(["F444W"], truncation=10.0)
    with pytest.raises(SchemaError):
        synth.galaxy(["F444W"], q=1.5)
    with pytest.raises(SchemaError):
        synth.galaxy(["F444W"], depth=-1.0)
    with pytest.raises(SchemaError):
        synth.galaxy(["F444W"], bulge=False, disk=False)
