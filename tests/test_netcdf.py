"""NetCDF round trip (lossless, property-based) and atomic writes."""

import os

import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pegleg
from pegleg import FileFormatError, schema
from pegleg.filters import known_filters

ALL_BANDS = [b for b in known_filters() if "_" not in b]


def make(rng, nb, ny, nx, npsf, nan_frac, redshift, with_wcs, with_seg, units):
    bands = list(rng.choice(ALL_BANDS, size=nb, replace=False))
    img = rng.normal(0, 1, (nb, ny, nx)) * 10 ** rng.uniform(-3, 3)
    err = rng.uniform(0.1, 2, (nb, ny, nx))
    mask = rng.random((nb, ny, nx)) < 0.1
    nan = rng.random((nb, ny, nx)) < nan_frac
    img[nan] = np.nan
    mask |= nan
    yy, xx = np.mgrid[:npsf, :npsf] - npsf // 2
    psf = np.exp(-(yy**2 + xx**2) / (2 * rng.uniform(0.5, 3) ** 2))
    wcs = None
    if with_wcs:
        from astropy.wcs import WCS

        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [rng.uniform(0, 360), rng.uniform(-80, 80)]
        wcs.wcs.crpix = [nx / 2, ny / 2]
        wcs.wcs.cdelt = [-0.03 / 3600, 0.03 / 3600]
    seg = rng.integers(0, 4, (ny, nx)) if with_seg else None
    return pegleg.from_arrays(img, err, psf, bands, 0.03, mask=mask, redshift=redshift, wcs=wcs,
                              segmentation=seg, units=units, source_id="obj-ü")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**32 - 1),
    nb=st.integers(1, 6),
    ny=st.integers(3, 40),
    nx=st.integers(3, 40),
    half=st.integers(0, 8),
    nan_frac=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    redshift=st.one_of(st.none(), st.floats(0, 15)),
    with_wcs=st.booleans(),
    with_seg=st.booleans(),
    units=st.sampled_from(["uJy", "nJy", "Jy"]),
)
def test_roundtrip_identical(tmp_path, seed, nb, ny, nx, half, nan_frac, redshift, with_wcs, with_seg, units):
    rng = np.random.default_rng(seed)
    ds = make(rng, nb, ny, nx, 2 * half + 1, nan_frac, redshift, with_wcs, with_seg, units)
    ds = schema.append_history(ds, "test", {"seed": seed, "note": "ümlaut"})
    path = tmp_path / f"rt-{seed}.nc"
    ds.pegleg.to_netcdf(path)
    back = pegleg.open_dataset(path)
    xr.testing.assert_identical(back, ds)
    assert back["mask"].dtype == bool
    assert back.pegleg.history == ds.pegleg.history
    pegleg.validate(back)


def test_roundtrip_uncompressed(tmp_path):
    ds = make(np.random.default_rng(0), 3, 10, 12, 5, 0.1, 2.0, True, True, "uJy")
    p = ds.pegleg.to_netcdf(tmp_path / "a.nc", compress=False)
    xr.testing.assert_identical(pegleg.open_dataset(p), ds)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    ds = make(np.random.default_rng(0), 2, 10, 10, 5, 0.0, None, False, False, "uJy")
    path = tmp_path / "out.nc"
    ds.pegleg.to_netcdf(path)
    before = path.read_bytes()

    real = xr.Dataset.to_netcdf

    def exploding(self, target, *a, **k):
        real(self, target, *a, **k)  # a complete temporary file exists ...
        with open(target, "r+b") as f:  # ... now damage it and fail mid-way
            f.truncate(100)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", exploding)
    ds2 = ds.copy(deep=True)
    ds2["image"].values[:] = 7.0
    with pytest.raises(RuntimeError, match="disk on fire"):
        ds2.pegleg.to_netcdf(path)
    with pytest.raises(RuntimeError):
        ds2.pegleg.to_netcdf(tmp_path / "new.nc")
    monkeypatch.undo()
    assert path.read_bytes() == before  # the old file is untouched
    assert not (tmp_path / "new.nc").exists()
    assert sorted(os.listdir(tmp_path)) == ["out.nc"]  # no temporary left behind
    xr.testing.assert_identical(pegleg.open_dataset(path), ds)


def test_keyboard_interrupt_cleans_up(tmp_path, monkeypatch):
    ds = make(np.random.default_rng(0), 1, 5, 5, 3, 0.0, None, False, False, "uJy")

    def interrupted(self, target, *a, **k):
        with open(target, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(xr.Dataset, "to_netcdf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ds.pegleg.to_netcdf(tmp_path / "k.nc")
    assert os.listdir(tmp_path) == []


def test_open_bad_files(tmp_path):
    with pytest.raises(FileFormatError, match="no such file"):
        pegleg.open_dataset(tmp_path / "missing.nc")
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"this is not netcdf at all" * 10)
    with pytest.raises(FileFormatError, match="junk.nc"):
        pegleg.open_dataset(junk)
    ds = make(np.random.default_rng(0), 2, 10, 10, 5, 0.0, None, False, False, "uJy")
    good = ds.pegleg.to_netcdf(tmp_path / "good.nc")
    trunc = tmp_path / "trunc.nc"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(FileFormatError, match="trunc.nc"):
        pegleg.open_dataset(trunc)


def test_write_to_missing_folder(tmp_path):
    ds = make(np.random.default_rng(0), 1, 5, 5, 3, 0.0, None, False, False, "uJy")
    with pytest.raises(FileFormatError, match="does not exist"):
        ds.pegleg.to_netcdf(tmp_path / "nope" / "a.nc")
