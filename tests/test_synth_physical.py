"""Synthetic galaxies with physical (emulator) SEDs: flux and mass bookkeeping, truth maps."""

import json

import numpy as np
import pytest

from pegleg import SchemaError, schema, synth
from pegleg.sed import load_emulator

BANDS = ["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]
COMPS = ("bulge", "disk")


@pytest.fixture(scope="module")
def emu():
    return load_emulator("default")


@pytest.fixture(scope="module")
def phys(emu):
    """Truth of a noise-free physical galaxy, default 65 x 65 stamp at 0.03"/px, z = 1."""
    return synth.galaxy(BANDS, physical=True, emulator=emu, noise=False, redshift=1.0)[1]


@pytest.fixture(scope="module")
def cropped(emu):
    """Profiles truncated beyond a small stamp: part of each component lies outside."""
    return synth.galaxy(BANDS, shape=(33, 33), truncation=1.0, physical=True, emulator=emu, noise=False,
                        redshift=2.0, bulge={"r_e": 0.1}, disk={"r_e": 0.3})[1]


def _surviving(truth, names=COMPS):
    return np.array([10.0 ** truth.attrs[f"{c}_log_stellar_mass"] for c in names])


def _stamp_fraction(truth):
    """Fraction of each component's (normalised) profile inside the stamp, from the intrinsic images."""
    frac = (truth["component_image"].sum(("y", "x")) / truth["component_flux"]).values  # (component, band)
    # achromatic profiles (alpha = 0 in physical mode)
    np.testing.assert_allclose(frac, np.broadcast_to(frac[:, :1], frac.shape), rtol=1e-12)
    return frac[:, 0]


def test_mass_budget(phys, cropped):
    for truth in (phys, cropped):
        m = _surviving(truth)
        frac = _stamp_fraction(truth)
        pix = 10.0 ** truth["log_stellar_mass"].values
        expected = float(np.sum(m * frac))
        assert pix.sum() == pytest.approx(expected, rel=1e-6)
        np.testing.assert_allclose(truth["component_profile"].sum(("y", "x")).values, frac, rtol=1e-12)
        assert truth.attrs["log_stellar_mass_total"] == pytest.approx(np.log10(m.sum()), abs=1e-12)
    # truncation inside the stamp (default): the whole surviving mass is in the stamp
    assert np.allclose(_stamp_fraction(phys), 1.0, rtol=0, atol=1e-12)
    assert (10.0 ** phys["log_stellar_mass"]).sum() / 10.0 ** phys.attrs["log_stellar_mass_total"] \
        == pytest.approx(1.0, rel=1e-6)
    # small stamp: measured in-stamp fractions ~0.964 (bulge) and ~0.908 (disk)
    frac = _stamp_fraction(cropped)
    assert 0.95 < frac[0] < 0.98 and 0.89 < frac[1] < 0.93
    ratio = float((10.0 ** cropped["log_stellar_mass"]).sum() / 10.0 ** cropped.attrs["log_stellar_mass_total"])
    assert 0.92 < ratio < 0.95
    # SFR map obeys the same bookkeeping
    sfr = np.array([10.0 ** phys.attrs[f"{c}_log_sfr100"] for c in COMPS])
    assert (10.0 ** phys["log_sfr100"].values).sum() == pytest.approx(sfr.sum(), rel=1e-6)
    assert phys.attrs["log_sfr100_total"] == pytest.approx(np.log10(sfr.sum()), abs=1e-12)


def test_fluxes_are_emulator_fluxes(phys, emu):
    theta = phys["component_sed_params"].values
    assert list(phys["sed_param"].values) == list(emu.param_names)
    flux, derived = emu.evaluate(theta, BANDS)
    np.testing.assert_allclose(phys["component_flux"].values, flux, rtol=1e-6)
    np.testing.assert_allclose(phys["flux_total"].values, flux.sum(axis=0), rtol=1e-6)
    np.testing.assert_allclose(phys["flux_stamp"].values, flux.sum(axis=0), rtol=1e-6)
    for k, c in enumerate(COMPS):
        assert phys.attrs[f"{c}_log_stellar_mass"] == pytest.approx(derived["log_stellar_mass"][k], abs=1e-9)
    # bulge and disk parameter vectors: the documented defaults
    b = dict(zip(emu.param_names, phys.attrs["bulge_sed_params"]))
    d = dict(zip(emu.param_names, phys.attrs["disk_sed_params"]))
    assert b["log_mass_formed"] == 10.3 and b["redshift"] == 1.0 and b["av"] == 0.2 and b["dsfr3"] == -0.4
    assert d["log_mass_formed"] == 9.9 and d["log_metallicity"] == -0.5 and d["av"] == 0.8 and d["dsfr1"] == 0.0
    # the bulge is the redder component: F444W/F115W measured 2.39 (bulge) vs 2.05 (dusty disk)
    fb, fd = phys["component_flux"].values
    assert fb[-1] / fb[0] > 1.1 * fd[-1] / fd[0]


def test_each_pixel_is_a_sum_of_emulator_seds(phys, emu):
    prof = phys["component_profile"].values
    img = np.einsum("cyx,cb->byx", prof, phys["component_flux"].values)
    np.testing.assert_allclose(phys["image"].values, img, rtol=1e-10, atol=1e-14)
    # one pixel off-centre: the emulator SED at the pixel's component masses reproduces it
    y, x = 30, 40
    theta = phys["component_sed_params"].values.copy()
    theta[:, 0] += np.log10(prof[:, y, x])
    flux, derived = emu.evaluate(theta, BANDS)
    np.testing.assert_allclose(phys["image"].values[:, y, x], flux.sum(axis=0), rtol=1e-6)
    assert phys["log_stellar_mass"].values[y, x] == pytest.approx(
        np.log10(np.sum(10.0 ** derived["log_stellar_mass"])), abs=1e-6)


def test_observed_flux_and_psf_loss(phys):
    obs_total = phys["image_convolved"].sum(("y", "x")).values
    loss = 1.0 - obs_total / phys["flux_total"].values
    # measured: 3e-6 (F115W) ... 1.3e-4 (F444W): the truncated galaxy and the PSF both fit in the stamp
    assert np.all(loss >= 0) and np.all(loss < 5e-4)
    assert loss[-1] > loss[0]


def test_noise_free_observed_image(emu):
    obs, truth = synth.galaxy(BANDS, physical=True, emulator=emu, noise=False, redshift=2.0, seed=1)
    np.testing.assert_array_equal(obs["image"].values, truth["image_convolved"].values)
    ratio = obs["image"].sum(("y", "x")).values / truth["component_flux"].sum("component").values
    assert np.all(np.abs(ratio - 1.0) < 5e-4)
    assert obs.attrs["redshift"] == 2.0 and obs.pegleg.history[-1]["parameters"]["physical"] is True


def test_structure_and_ages(phys):
    lm = phys["log_stellar_mass"].values
    cy, cx = phys.attrs["centre_y"], phys.attrs["centre_x"]
    iy, ix = np.unravel_index(np.argmax(lm), lm.shape)
    assert (iy, ix) == (round(cy), round(cx))
    age = phys["log_age_mw"].values
    av = phys["av"].values
    assert phys.attrs["bulge_log_age_mw"] > phys.attrs["disk_log_age_mw"] + 0.05  # measured 9.57 vs 9.46
    assert phys.attrs["bulge_av"] < phys.attrs["disk_av"]
    outer = (iy, ix + 20)  # 0.6" along x, disk dominated
    assert age[iy, ix] > age[outer] and av[iy, ix] < av[outer]
    assert phys.attrs["disk_log_age_mw"] <= age[outer] <= age[iy, ix] <= phys.attrs["bulge_log_age_mw"]
    # all maps finite; pixels beyond the truncation radius at the floor
    for name in ("log_stellar_mass", "stellar_mass_density", "log_sfr100", "log_sfr10", "sfr_density",
                 "log_age_mw", "av"):
        assert np.all(np.isfinite(phys[name].values)), name
        units, long_name = schema.PHYSICAL[name]
        assert phys[name].attrs["units"] == units and phys[name].attrs["long_name"] == long_name
        assert phys[name].dims == ("y", "x")
    assert lm[0, 0] == pytest.approx(np.log10(synth.PHYSICAL_FLOOR))
    assert 9.0 < lm.max() < 10.0


def test_densities(phys):
    from astropy import units as u
    from astropy.cosmology import FlatLambdaCDM

    kpc = FlatLambdaCDM(H0=70, Om0=0.3).angular_diameter_distance(1.0).to_value(u.kpc) * np.radians(1 / 3600)
    area = (0.03 * kpc) ** 2
    assert phys.attrs["pixel_area_kpc2"] == pytest.approx(area, rel=1e-9)
    np.testing.assert_allclose(phys["stellar_mass_density"].values, 10.0 ** phys["log_stellar_mass"].values / area,
                               rtol=1e-12)
    np.testing.assert_allclose(phys["sfr_density"].values, 10.0 ** phys["log_sfr100"].values / area, rtol=1e-12)


def test_determinism_units_and_metadata(emu, tmp_path):
    kw = dict(physical=True, emulator=emu, shape=(33, 33), redshift=1.5, clumps=2)
    o1, t1 = synth.galaxy(BANDS, seed=7, **kw)
    o2, t2 = synth.galaxy(BANDS, seed=7, **kw)
    o3, _ = synth.galaxy(BANDS, seed=8, **kw)
    np.testing.assert_array_equal(o1["image"].values, o2["image"].values)
    np.testing.assert_array_equal(t1["log_stellar_mass"].values, t2["log_stellar_mass"].values)
    assert not np.array_equal(o1["image"].values, o3["image"].values)
    # clumps: young, in the component list, mass per clump from log_mass
    assert list(t1["component"].values) == ["bulge", "disk", "clumps"]
    assert t1.attrs["clumps_log_age_mw"] < 8.0 < t1.attrs["disk_log_age_mw"]
    comps = json.loads(t1.attrs["components"])
    assert comps[2]["log_mass"] == 7.0 and "flux" not in comps[0] and comps[0]["sed"]["av"] == 0.2
    n_j = _surviving(t1, ("bulge", "disk", "clumps"))
    assert (10.0 ** t1["log_stellar_mass"]).sum() == pytest.approx(n_j.sum(), rel=1e-6)
    # units: nJy images are 1000 x the uJy ones; the mass maps do not change
    _, tn = synth.galaxy(BANDS, seed=7, units="nJy", **kw)
    np.testing.assert_allclose(tn["flux_total"].values, 1000 * t1["flux_total"].values, rtol=1e-12)
    np.testing.assert_array_equal(tn["log_stellar_mass"].values, t1["log_stellar_mass"].values)
    # the truth (attrs with float arrays and JSON) survives NetCDF
    from pegleg.io import netcdf

    back = netcdf.open_dataset(netcdf.to_netcdf(t1, tmp_path / "truth.nc"))
    np.testing.assert_allclose(back.attrs["bulge_sed_params"], t1.attrs["bulge_sed_params"])
    assert json.loads(back.attrs["sed_param_names"]) == list(emu.param_names)
    np.testing.assert_allclose(back["log_age_mw"].values, t1["log_age_mw"].values)


def test_overrides(emu):
    _, t = synth.galaxy(BANDS, physical=True, emulator=emu, noise=False, shape=(33, 33), disk=False,
                        bulge={"log_mass": 10.0, "sed": {"av": 1.0}})
    assert list(t["component"].values) == ["bulge"]
    b = dict(zip(emu.param_names, t.attrs["bulge_sed_params"]))
    assert b["log_mass_formed"] == 10.0 and b["av"] == 1.0 and b["dsfr1"] == -0.4  # others: defaults


@pytest.mark.parametrize("kwargs, match", [
    ({"bulge": {"sed": {"tau": 1.0, "av": 0.1}}}, "tau"),
    ({"disk": {"sed": {"log_mass_formed": 9.0}}}, "log_mass_formed"),
    ({"redshift": None}, "redshift"),
    ({"bulge": {"flux": 2.0}}, "flux"),
    ({"bulge": {"log_mass": 13.5}}, "bounds"),
    ({"disk": {"sed": {"av": 7.0}}}, "bounds"),
    ({"sed": lambda name, bands, wl: np.ones(len(bands))}, "sed"),
])
def test_physical_errors(emu, kwargs, match):
    with pytest.raises(SchemaError, match=match):
        synth.galaxy(BANDS, physical=True, emulator=emu, shape=(17, 17), **kwargs)


def test_physical_keys_need_physical():
    with pytest.raises(SchemaError, match="physical=True"):
        synth.galaxy(BANDS, shape=(17, 17), bulge={"log_mass": 10.0})
    with pytest.raises(SchemaError, match="physical=True"):
        synth.galaxy(BANDS, shape=(17, 17), emulator="default")


OLD = {"av": 0.8, "log_metallicity": 0.0, **{f"dsfr{k}": -0.4 for k in range(1, 7)}}
YOUNG = {"av": 0.1, "log_metallicity": -1.0, **{f"dsfr{k}": 0.2 for k in range(1, 7)}}


@pytest.fixture(scope="module")
def gradient(emu):
    """One exponential component whose SED goes from old/dusty/metal-rich at the centre to
    young/clear/metal-poor at 0.25" (galaxy elliptical radius): single-population pixels."""
    comp = {"log_mass": 10.5, "n": 1.0, "r_e": 0.12, "sed": OLD, "sed_outer": YOUNG, "gradient_radius": 0.25}
    return synth.galaxy(BANDS, shape=(41, 41), physical=True, emulator=emu, noise=False, redshift=2.0,
                        bulge=comp, disk=False)[1]


def test_sed_gradient_pixels_are_single_populations(gradient, emu):
    t = gradient
    names = list(emu.param_names)
    centre, outer = t.attrs["bulge_sed_params"], t.attrs["bulge_sed_params_outer"]
    assert dict(zip(names, outer))["av"] == 0.1 and dict(zip(names, centre))["av"] == 0.8
    assert t.attrs["bulge_gradient_radius"] == 0.25
    # a pixel well beyond the gradient radius: exactly the outer SED at the pixel's formed mass
    prof = t["component_profile"].values[0]
    y, x = 20, 36                                            # ~0.45" from the centre along x
    th = np.array(outer, dtype=float)
    th[names.index("log_mass_formed")] = 10.0                # the emulator scales exactly with mass
    dm = t.attrs["bulge_log_mass_formed"] + np.log10(prof[y, x]) - 10.0
    flux, der = emu.evaluate(th[None], BANDS)
    np.testing.assert_allclose(t["image"].values[:, y, x], flux[0] * 10.0 ** dm, rtol=2e-3)
    assert t["log_stellar_mass"].values[y, x] == pytest.approx(float(der["log_stellar_mass"][0]) + dm, abs=2e-3)
    assert t["av"].values[y, x] == pytest.approx(float(der["av"][0]), abs=1e-6)   # the emulator's derived A_V
    # the centre: the central SED (pixel-integrated over a slowly varying gradient)
    cy, cx = int(round(t.attrs["centre_y"])), int(round(t.attrs["centre_x"]))
    thc = np.array(centre, dtype=float)
    av_centre = float(emu.evaluate(thc[None], BANDS)[1]["av"][0])
    assert av_centre == pytest.approx(0.8, abs=0.05)
    # the central pixel (the centre is 0.3, -0.2 px off its middle) spans radii 0-1.2 px
    th12 = thc + min(1.2 * 0.03 / 0.25, 1.0) * (np.asarray(outer) - thc)
    av_12 = float(emu.evaluate(th12[None], BANDS)[1]["av"][0])
    assert av_12 < t["av"].values[cy, cx] < av_centre
    col = -2.5 * np.log10(t["image"].sel(band="F150W") / t["image"].sel(band="F444W")).values
    assert col[cy, cx] > col[y, x] + 1.5                      # red centre, blue outskirts
    # bookkeeping: component flux = its image, mass total = sum of the mass map (all inside the stamp)
    np.testing.assert_allclose(t["component_flux"].values[0], t["component_image"].values[0].sum(axis=(1, 2)),
                               rtol=1e-12)
    assert np.log10(np.sum(10.0 ** t["log_stellar_mass"].values)) == pytest.approx(
        t.attrs["log_stellar_mass_total"], abs=1e-9)
    # the F444W half-light radius exceeds the mass one (young, low-M/L outskirts)
    assert float(t["r50"].sel(band="F444W")) > float(t["r50"].sel(band="F115W")) * 0.5


@pytest.mark.parametrize("comp, match", [
    ({"sed_outer": {"tau": 1.0}}, "tau"),
    ({"sed_outer": {"av": 9.0}}, "bounds"),
    ({"sed_outer": [1, 2]}, "dict"),
    ({"sed_outer": {"av": 0.1}, "gradient_radius": -1.0}, "gradient_radius"),
    ({"sed_outer": {"av": 0.1}, "alpha": 0.3}, "alpha=0"),
])
def test_sed_gradient_errors(emu, comp, match):
    with pytest.raises(SchemaError, match=match):
        synth.galaxy(BANDS, physical=True, emulator=emu, shape=(17, 17), redshift=2.0, bulge=comp)
    with pytest.raises(SchemaError, match="clumps"):
        synth.galaxy(BANDS, physical=True, emulator=emu, shape=(17, 17), redshift=2.0, clumps={"sed_outer": {}})
