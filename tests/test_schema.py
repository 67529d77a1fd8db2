"""Data model: construction, validation and clear errors for bad input."""

import json

import numpy as np
import pytest

import pegleg
from pegleg import PSFError, PeglegError, PeglegWarning, SchemaError, schema

BANDS = ["F150W", "F277W", "F444W"]


def gauss_psf(n=15, sigma=1.5, dy=0.0, dx=0.0):
    y, x = np.mgrid[: n, : n] - n // 2
    return np.exp(-((x - dx) ** 2 + (y - dy) ** 2) / (2 * sigma**2))


@pytest.fixture
def arrays():
    rng = np.random.default_rng(1)
    img = rng.normal(0, 1, (3, 21, 23))
    err = np.full_like(img, 0.5)
    return img, err, gauss_psf()


def test_from_arrays_model(arrays):
    img, err, psf = arrays
    ds = pegleg.from_arrays(img, err, psf, BANDS, 0.03, redshift=1.2, source_id="g1")
    assert ds["image"].dims == ("band", "y", "x")
    assert ds["psf"].dims == ("band", "psf_y", "psf_x")
    assert ds["mask"].dtype == bool and not ds["mask"].any()
    assert list(ds.band.values) == BANDS
    np.testing.assert_allclose(ds.wavelength.values, [1.501, 2.786, 4.421])
    np.testing.assert_allclose(ds["psf"].sum(("psf_y", "psf_x")).values, 1.0, atol=1e-12)
    np.testing.assert_array_equal(ds["image"].values, img)
    assert ds.attrs["pixel_scale"] == 0.03 and ds.attrs["redshift"] == 1.2
    assert ds.attrs["resolution"] == "observed" and ds.attrs["source_id"] == "g1"
    for name, da in ds.data_vars.items():
        assert "units" in da.attrs and "long_name" in da.attrs, name
    assert ds["image"].attrs["units"] == "uJy"
    hist = json.loads(ds.attrs["pegleg_history"])
    assert hist[0]["step"] == "from_arrays" and hist[0]["pegleg_version"] == pegleg.__version__
    assert hist[0]["parameters"]["bands"] == BANDS
    assert ds["psf_y"].values[0] == -7 and ds["psf_y"].values[-1] == 7
    assert pegleg.validate(ds) is ds
    assert ds.pegleg.bands == BANDS and ds.pegleg.pixel_scale == 0.03


def test_single_band_2d_and_shared_psf():
    img = np.ones((11, 11))
    ds = pegleg.from_arrays(img, img * 0.1, gauss_psf(9), "F200W", 0.03)
    assert ds.sizes["band"] == 1


def test_psf_mapping_of_different_sizes_is_padded(arrays):
    img, err, _ = arrays
    psfs = {"F150W": gauss_psf(9, 1.0), "F277W": gauss_psf(15), "F444W": gauss_psf(21, 2.5)}
    ds = pegleg.from_arrays(img, err, psfs, BANDS, 0.03)
    assert ds.sizes["psf_y"] == 21
    p = ds["psf"].sel(band="F150W").values
    assert p[10, 10] == p.max() and p[:6].sum() == 0


def test_unknown_band_needs_wavelength(arrays):
    img, err, psf = arrays
    with pytest.raises(SchemaError, match="unknown band 'MYBAND'"):
        pegleg.from_arrays(img, err, psf, ["F150W", "MYBAND", "F444W"], 0.03)
    ds = pegleg.from_arrays(img, err, psf, ["F150W", "MYBAND", "F444W"], 0.03, wavelength=[1.5, 3.0, 4.4])
    assert float(ds.wavelength.sel(band="MYBAND")) == 3.0


def test_nan_unmasked_become_masked_with_warning(arrays):
    img, err, psf = arrays
    img = img.copy()
    img[1, 5, 5] = np.nan
    with pytest.warns(PeglegWarning, match="masked"):
        ds = pegleg.from_arrays(img, err, psf, BANDS, 0.03)
    assert ds["mask"].values[1, 5, 5] and ds["mask"].sum() == 1
    pegleg.validate(ds)


def test_masked_nan_is_fine(arrays):
    img, err, psf = arrays
    img, err = img.copy(), err.copy()
    img[0, 2, 2] = np.nan
    err[0, 2, 2] = 0.0
    mask = np.zeros(img.shape, bool)
    mask[0, 2, 2] = True
    ds = pegleg.from_arrays(img, err, psf, BANDS, 0.03, mask=mask)
    assert np.isnan(ds["image"].values[0, 2, 2])
    pegleg.validate(ds)


def test_inputs_not_modified_and_native_endian(arrays):
    img, err, psf = arrays
    big = img.astype(">f4")
    before = big.copy()
    ds = pegleg.from_arrays(big, err, psf, BANDS, 0.03)
    assert ds["image"].dtype.byteorder in ("=", "|") and ds["image"].dtype == np.float64
    np.testing.assert_array_equal(big, before)


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (dict(image=np.ones((2, 3, 4, 5))), SchemaError, "image: expected dims"),
        (dict(image=np.ones(7)), SchemaError, "image: expected dims"),
        (dict(error=np.ones((3, 21, 22))), SchemaError, "error: shape"),
        (dict(error=np.zeros((3, 21, 23))), SchemaError, "error <= 0"),
        (dict(error=-np.ones((3, 21, 23))), SchemaError, "error <= 0"),
        (dict(psf=np.full((15, 15), np.nan)), PSFError, "NaN"),
        (dict(psf=np.zeros((15, 15))), PSFError, "sum is 0"),
        (dict(psf=-gauss_psf()), PSFError, "positive total"),
        (dict(psf=np.ones((14, 14))), PSFError, "odd sides"),
        (dict(psf=gauss_psf(15, 1.5, dy=3)), PSFError, "centroid"),
        (dict(psf={"F150W": gauss_psf(), "F444W": gauss_psf()}), PSFError, "F277W"),
        (dict(psf=np.ones((2, 15, 15))), PSFError, "2 PSFs for 3 bands"),
        (dict(units="furlongs"), SchemaError, "unknown unit"),
        (dict(units="MJy/sr"), SchemaError, "not a flux density"),
        (dict(bands=["F150W", "F150W", "F444W"]), SchemaError, "duplicated"),
        (dict(bands=["F150W", "F444W"]), SchemaError, "2 names"),
        (dict(pixel_scale=np.nan), SchemaError, "pixel_scale"),
        (dict(pixel_scale=np.inf), SchemaError, "pixel_scale"),
        (dict(pixel_scale=-0.03), SchemaError, "pixel_scale"),
        (dict(pixel_scale=[0.03, 0.03, 0.06]), SchemaError, "different pixel scales"),
        (dict(mask=np.zeros((3, 5, 5), bool)), SchemaError, "mask: shape"),
        (dict(redshift=-1), SchemaError, "redshift"),
        (dict(resolution="blurry"), SchemaError, "resolution"),
        (dict(wcs="not a header"), SchemaError, "wcs"),
        (dict(segmentation=np.ones((4, 4), int)), SchemaError, "segmentation"),
    ],
)
def test_bad_input_raises_clear_error(arrays, change, exc, match):
    img, err, psf = arrays
    kw = dict(image=img, error=err, psf=psf, bands=BANDS, pixel_scale=0.03)
    kw.update(change)
    with pytest.raises(exc, match=match) as info:
        pegleg.from_arrays(**kw)
    assert isinstance(info.value, PeglegError)
    assert isinstance(info.value, ValueError)


def test_validate_catches_broken_datasets(arrays):
    img, err, psf = arrays
    ds = pegleg.from_arrays(img, err, psf, BANDS, 0.03)
    with pytest.raises(SchemaError, match="'mask' is missing"):
        pegleg.validate(ds.drop_vars("mask"))
    with pytest.raises(SchemaError, match="expected dims"):
        pegleg.validate(ds.assign(image=ds["image"].transpose("band", "x", "y")))
    bad = ds.copy(deep=True)
    bad["error"].values[0, 0, 0] = 0
    with pytest.raises(SchemaError, match="error"):
        pegleg.validate(bad)
    bad = ds.copy(deep=True)
    bad["psf"].values[0] *= 2
    with pytest.raises(PSFError, match="sums to 2"):
        pegleg.validate(bad)
    bad = ds.copy()
    bad["image"] = bad["image"].assign_attrs(units=None)
    del bad["image"].attrs["units"]
    with pytest.raises(SchemaError, match="units"):
        pegleg.validate(bad)
    bad = ds.copy()
    bad.attrs["pegleg_history"] = "{not json"
    with pytest.raises(SchemaError, match="pegleg_history"):
        pegleg.validate(bad)
    with pytest.raises(SchemaError, match="xarray.Dataset"):
        pegleg.validate(np.zeros(3))


def test_history_append_does_not_touch_input(arrays):
    img, err, psf = arrays
    ds = pegleg.from_arrays(img, err, psf, BANDS, 0.03)
    out = schema.append_history(ds, "step2", {"a": np.float32(1.5), "arr": np.arange(3), "big": np.zeros(100)})
    assert len(ds.pegleg.history) == 1 and len(out.pegleg.history) == 2
    rec = out.pegleg.history[-1]
    assert rec["parameters"] == {"a": 1.5, "arr": [0, 1, 2], "big": "<array shape=(100,) dtype=float64>"}


def test_wcs_roundtrip(arrays):
    from astropy.wcs import WCS

    img, err, psf = arrays
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [53.1, -27.8]
    w.wcs.crpix = [12, 11]
    w.wcs.cdelt = [-0.03 / 3600, 0.03 / 3600]
    ds = pegleg.from_arrays(img, err, psf, BANDS, 0.03, wcs=w)
    w2 = ds.pegleg.wcs
    np.testing.assert_allclose(w2.pixel_to_world_values(3, 4), w.pixel_to_world_values(3, 4))
    assert isinstance(ds.attrs["wcs"], str)


def test_filters_table():
    from pegleg import filters

    assert filters.pivot_wavelength("f444w") == filters.pivot_wavelength("NIRCAM_F444W")
    assert filters.pivot_wavelength("F814W") == filters.pivot_wavelength("ACS_F814W")
    assert filters.pivot_wavelength("WFC3_F814W") != filters.pivot_wavelength("ACS_F814W")
    for name in ["F435W", "F606W", "F775W", "F850LP", "F090W", "F162M", "F250M", "F410M",
                 "F160W", "F125W", "F770W", "F2100W", "F336W"]:
        assert filters.pivot_wavelength(name) > 0
    wl = [filters.pivot_wavelength(b) for b in ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]]
    assert np.all(np.diff(wl) > 0)
    assert filters.instrument("F444W") == "NIRCAM" and filters.instrument("F160W") == "WFC3"
    assert filters.known_filters()[0] == "F218W" or filters.pivot_wavelength(filters.known_filters()[0]) < 0.23
