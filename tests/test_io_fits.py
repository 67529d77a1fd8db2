"""open_stamps: FITS stamps and mosaic cutouts -> stamp Dataset."""

import json

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import pegleg
from pegleg import FileFormatError, PeglegWarning, PSFError, SchemaError, schema
from pegleg.io.fits import open_stamps
from pegleg.psf.tools import psf_centroid

from fits_helpers import write_stamp

SCALE = 0.03  # arcsec/pixel
RA0, DEC0 = 53.1, -27.8
ARCSEC_PER_RAD = 180 / np.pi * 3600


# ---------------------------------------------------------------------------
# synthetic files
# ---------------------------------------------------------------------------
def tan_header(shape, scale=SCALE, crpix=None, ra=RA0, dec=DEC0):
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = crpix if crpix is not None else [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    w.wcs.cdelt = [-scale / 3600, scale / 3600]
    w.wcs.cunit = ["deg", "deg"]
    return w.to_header()


def gauss(n, sigma, cy=0.0, cx=0.0):
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


BANDS = ["F444W", "F150W", "F277W"]  # deliberately not in wavelength order
N = 25


@pytest.fixture
def stamp_dir(tmp_path):
    """Folder of 3 <BAND>.fits stamps (SCI/ERR/SEG, uJy, TAN WCS), a source.json and PSFs."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "gal"
    folder.mkdir()
    seg = np.zeros((N, N), np.int32)
    seg[9:16, 9:16] = 5  # the galaxy
    seg[0:4, 0:4] = 9  # a neighbour
    hdr = tan_header((N, N))
    data = {}
    for i, b in enumerate(BANDS):
        sci = (gauss(N, 2.0) * (i + 1) + rng.normal(0, 0.01, (N, N))).astype(np.float32)
        err = np.full((N, N), 0.01, np.float32)
        write_stamp(folder / f"{b}.fits", sci, err, seg if b == "F444W" else np.zeros_like(seg), header=hdr)
        data[b] = sci
    (folder / "source.json").write_text(json.dumps({"id": "G-1", "redshift_phot": 2.5}))
    psfdir = tmp_path / "psf"
    psfdir.mkdir()
    for b in BANDS:
        # PSFs at 0.06"/pixel, even-sized: must be resampled and recentred
        h = fits.Header()
        h["PIXELSCL"] = 0.06
        fits.PrimaryHDU(gauss(20, 1.2).astype(">f8"), header=h).writeto(psfdir / f"{b}.fits")
    return folder, psfdir, data, seg


# ---------------------------------------------------------------------------
# synthetic tests
# ---------------------------------------------------------------------------
def test_folder_of_stamps(stamp_dir):
    folder, psfdir, data, seg = stamp_dir
    ds = open_stamps(folder, psf=psfdir)
    pegleg.validate(ds)
    assert list(ds.band.values) == ["F150W", "F277W", "F444W"]  # by pivot wavelength
    for b in BANDS:
        assert np.array_equal(ds.image.sel(band=b).values, data[b])
    assert ds.attrs["pixel_scale"] == pytest.approx(SCALE, rel=1e-9)
    assert ds.attrs["source_id"] == "G-1" and ds.attrs["redshift"] == 2.5
    assert ds.attrs["resolution"] == "observed"
    assert ds.image.attrs["units"] == "uJy"
    np.testing.assert_array_equal(ds.segmentation.values, seg)
    # the neighbour (label 9) is masked in every band, the galaxy is not
    np.testing.assert_array_equal(ds.mask.values, np.broadcast_to(seg == 9, ds.mask.shape))
    w = schema.wcs_from_text(ds.attrs["wcs"])
    assert np.allclose(w.wcs.crval, [RA0, DEC0])
    steps = [h["step"] for h in schema.read_history(ds)]
    assert steps == ["from_arrays", "open_stamps"]
    # PSFs at 0.06" resampled to 0.03": sigma 1.2 px * 0.06 = 0.072" = 2.4 image pixels
    for b in ds.band.values:
        p = ds.psf.sel(band=b).values
        assert abs(p.sum() - 1) < 1e-9 and np.hypot(*psf_centroid(p)) < 0.05
        y = np.arange(p.shape[0]) - p.shape[0] // 2
        var = (p.sum(axis=1) * y**2).sum() - 1 / 12
        assert np.sqrt(var) == pytest.approx(2.4, rel=0.03)
    # arguments override source.json
    ds2 = open_stamps(folder, psf=psfdir, bands=["f444w", "F150W"], redshift=1.0, source_id="x",
                      segmentation=False)
    assert list(ds2.band.values) == ["F444W", "F150W"]
    assert ds2.attrs["redshift"] == 1.0 and ds2.attrs["source_id"] == "x"
    assert "segmentation" not in ds2 and not ds2.mask.any()
    with pytest.raises(FileFormatError, match="F200W"):
        open_stamps(folder, psf=psfdir, bands=["F200W"])


def test_psf_options(stamp_dir, tmp_path):
    folder, psfdir, data, _ = stamp_dir
    (psfdir / "F150W.fits").unlink()
    with pytest.raises(PSFError, match=r"F150W.*available.*F277W"):
        open_stamps(folder, psf=psfdir)
    with pytest.warns(PeglegWarning, match="F150W"):
        ds = open_stamps(folder, psf=psfdir, missing_psf="drop")
    assert list(ds.band.values) == ["F277W", "F444W"]
    ds = open_stamps(folder, psf=psfdir, matched_to="F444W")
    assert ds.attrs["resolution"] == "matched:F444W" and ds.sizes["band"] == 3
    assert np.array_equal(ds.psf.sel(band="F150W").values, ds.psf.sel(band="F444W").values)
    # one array for every band (assumed at the image scale), big-endian in memory
    arr = gauss(15, 2.0, 0.3, -0.2).astype(">f4")
    ds = open_stamps(folder, psf={"*": arr})
    assert ds.sizes["psf_y"] == 15 and np.hypot(*psf_centroid(ds.psf.values[0])) < 0.05
    ds = open_stamps(folder, psf={"*": arr}, matched_to="F277W")
    assert ds.attrs["resolution"] == "matched:F277W"
    with pytest.raises(PSFError, match="F090W"):
        open_stamps(folder, psf=psfdir, matched_to="F090W")
    bad = gauss(15, 2.0)
    bad[0, 0] = np.nan
    with pytest.raises(PSFError, match="F150W.*NaN"):
        open_stamps(folder, psf={"F150W": bad, "*": arr})
    with pytest.raises(PSFError):
        open_stamps(folder)


def test_no_coverage_masked_silently(tmp_path):
    sci = gauss(N, 2.0).astype(np.float32)
    err = np.full((N, N), 0.1, np.float32)
    sci[2, 3] = np.nan
    err[4, 5] = 0.0
    err[6, 7] = np.nan
    write_stamp(tmp_path / "F200W.fits", sci, err, header=tan_header((N, N)))
    ds = open_stamps(tmp_path, psf={"*": gauss(9, 1.0)})  # no warning (warnings are errors here)
    pegleg.validate(ds)
    assert np.array_equal(ds.image.values[0], sci, equal_nan=True)  # values untouched
    assert set(zip(*np.nonzero(ds.mask.values[0]))) == {(2, 3), (4, 5), (6, 7)}
    assert schema.read_history(ds)[-1]["parameters"]["no_coverage_pixels"] == {"F200W": 3}
    assert "segmentation" not in ds


def test_separate_files_and_units(tmp_path):
    hdr = tan_header((N, N))
    sci = gauss(N, 2.0).astype(np.float32)
    h = hdr.copy()
    h["BUNIT"] = "nJy"
    fits.PrimaryHDU(sci, header=h).writeto(tmp_path / "s.fits")
    fits.PrimaryHDU(np.full((N, N), 0.1, np.float32), header=h).writeto(tmp_path / "e.fits")
    fits.PrimaryHDU(np.zeros((N, N), np.int16)).writeto(tmp_path / "g.fits")
    src = {"F150W": {"sci": tmp_path / "s.fits", "err": str(tmp_path / "e.fits"), "seg": tmp_path / "g.fits"}}
    ds = open_stamps(src, psf={"*": gauss(9, 1.0)})
    assert ds.image.attrs["units"] == "nJy" and np.array_equal(ds.image.values[0], sci)
    # no BUNIT: units= or an error naming the file
    fits.PrimaryHDU(sci, header=hdr).writeto(tmp_path / "s2.fits")
    src2 = {"F150W": {"sci": tmp_path / "s2.fits", "err": tmp_path / "e.fits"}}
    with pytest.raises(SchemaError, match="s2.fits.*BUNIT"):
        open_stamps(src2, psf={"*": gauss(9, 1.0)})
    ds = open_stamps(src2, psf={"*": gauss(9, 1.0)}, units="nJy")
    assert ds.image.attrs["units"] == "nJy"
    h["BUNIT"] = "ELECTRONS/S"
    fits.PrimaryHDU(sci, header=h).writeto(tmp_path / "s3.fits")
    with pytest.raises(SchemaError, match="s3.fits.*ELECTRONS/S"):
        open_stamps({"F150W": {"sci": tmp_path / "s3.fits", "err": tmp_path / "e.fits"}},
                    psf={"*": gauss(9, 1.0)})


def test_mosaic_cutout_mjy_per_sr(tmp_path):
    from astropy.coordinates import SkyCoord
    import astropy.units as u

    shape = (120, 140)
    rng = np.random.default_rng(0)
    hdr = tan_header(shape)
    mosaics = {}
    for b in ("F150W", "F444W"):
        sci = rng.normal(1.0, 0.1, shape).astype(">f4")  # big-endian, as FITS stores it
        err = np.full(shape, 0.05, ">f4")
        write_stamp(tmp_path / f"{b}_mosaic.fits", sci, err, bunit="MJy/sr", header=hdr)
        mosaics[b] = sci
    src = {b: tmp_path / f"{b}_mosaic.fits" for b in mosaics}
    w = WCS(hdr)
    x0, y0 = 80, 50
    center = w.pixel_to_world(x0, y0)
    assert isinstance(center, SkyCoord)
    ds = open_stamps(src, center=center, size=21, psf={"*": gauss(11, 1.5)})
    pegleg.validate(ds)
    assert ds.sizes["y"] == ds.sizes["x"] == 21
    area_sr = (SCALE / ARCSEC_PER_RAD) ** 2
    for b, sci in mosaics.items():
        expected = sci[y0 - 10:y0 + 11, x0 - 10:x0 + 11].astype(float) * area_sr * 1e12
        np.testing.assert_allclose(ds.image.sel(band=b).values, expected, rtol=1e-6)
        np.testing.assert_allclose(ds.error.sel(band=b).values, 0.05 * area_sr * 1e12, rtol=1e-6)
    assert ds.image.attrs["units"] == "uJy"
    # the cutout WCS puts the requested position on the central pixel
    wc = schema.wcs_from_text(ds.attrs["wcs"])
    assert np.allclose(wc.world_to_pixel(center), (10, 10), atol=1e-6)
    # size as an angle
    ds2 = open_stamps(src, center=center, size=0.63 * u.arcsec, psf={"*": gauss(11, 1.5)})
    assert np.array_equal(ds2.image.values, ds.image.values)
    # partly outside the mosaic: NaN fill, masked silently
    edge = w.pixel_to_world(3, 3)
    ds3 = open_stamps(src, center=edge, size=11, psf={"*": gauss(11, 1.5)})
    assert ds3.mask.values[:, :2, :].all() and not ds3.mask.values[:, 5:, 5:].any()
    with pytest.raises(SchemaError, match="center and size"):
        open_stamps(src, center=center, psf={"*": gauss(11, 1.5)})


def test_different_pixel_scales_and_grids(tmp_path):
    sci = np.ones((N, N), np.float32)
    write_stamp(tmp_path / "F150W.fits", sci, sci, header=tan_header((N, N)))
    write_stamp(tmp_path / "F444W.fits", sci, sci, header=tan_header((N, N), scale=0.06))
    with pytest.raises(SchemaError, match=r"pixel scales.*F444W"):
        open_stamps(tmp_path, psf={"*": gauss(9, 1.0)})
    crpix = [(N + 1) / 2 + 0.5, (N + 1) / 2]  # half a pixel off
    write_stamp(tmp_path / "F444W.fits", sci, sci, header=tan_header((N, N), crpix=crpix))
    with pytest.raises(SchemaError, match=r"F444W.*not on the pixel grid of 'F150W'"):
        open_stamps(tmp_path, psf={"*": gauss(9, 1.0)})
    write_stamp(tmp_path / "F444W.fits", np.ones((N, N + 2), np.float32), np.ones((N, N + 2), np.float32),
                header=tan_header((N, N + 2)))
    with pytest.raises(SchemaError, match="shapes"):
        open_stamps(tmp_path, psf={"*": gauss(9, 1.0)})


def test_bad_files(tmp_path):
    sci = np.ones((N, N), np.float32)
    write_stamp(tmp_path / "F150W.fits", sci, sci, header=tan_header((N, N)))
    raw = (tmp_path / "F150W.fits").read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "F150W.fits").write_bytes(raw[: len(raw) - 3000])  # truncated data
    with pytest.raises(FileFormatError, match="F150W.fits"):
        open_stamps(bad, psf={"*": gauss(9, 1.0)})
    (bad / "F150W.fits").write_bytes(raw[:1000])  # truncated header
    with pytest.raises(FileFormatError, match="F150W.fits"):
        open_stamps(bad, psf={"*": gauss(9, 1.0)})
    # a truncated mosaic (memory-mapped for cutouts) is refused and leaves no file open
    import gc

    from astropy.coordinates import SkyCoord

    (bad / "F150W.fits").write_bytes(raw[: len(raw) - 3000])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FileFormatError, match="F150W.fits"):
            open_stamps({"F150W": bad / "F150W.fits"}, center=SkyCoord(150.0, 2.0, unit="deg"), size=5,
                        psf={"*": gauss(9, 1.0)})
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    noerr = tmp_path / "noerr"
    noerr.mkdir()
    write_stamp(noerr / "F150W.fits", sci, sci, header=tan_header((N, N)), with_err=False)
    with pytest.raises(FileFormatError, match=r"F150W.fits.*'ERR'"):
        open_stamps(noerr, psf={"*": gauss(9, 1.0)})
    with pytest.raises(FileFormatError, match="nowhere"):
        open_stamps(tmp_path / "nowhere", psf={"*": gauss(9, 1.0)})
    with pytest.raises(FileFormatError, match="missing.fits"):
        open_stamps({"F150W": tmp_path / "missing.fits"}, psf={"*": gauss(9, 1.0)})
    with pytest.raises(FileFormatError, match="psfs"):
        open_stamps(tmp_path, psf=tmp_path / "psfs")


# ---------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------
JOF = ["36", "531", "778", "478"]
APERTURE_RADIUS = 0.16  # arcsec: the catalogue's "0.32 arcsec" (diameter) aperture
_CACHE: dict = {}


def _jof(shared_data, gid):
    key = ("jof", gid)
    if key not in _CACHE:
        root = shared_data / "jades-origins-field"
        _CACHE[key] = open_stamps(root / "galaxies" / gid, psf=root / "psf", matched_to="F444W")
    return _CACHE[key]


@pytest.mark.realdata
@pytest.mark.parametrize("gid", JOF)
def test_jof_galaxies(shared_data, gid):
    root = shared_data / "jades-origins-field"
    folder, psfdir = root / "galaxies" / gid, root / "psf"
    with pytest.raises(PSFError, match=r"F435W.*F850LP"):  # HST bands have no model PSF
        open_stamps(folder, psf=psfdir)
    with pytest.warns(PeglegWarning, match="F435W"):
        ds = open_stamps(folder, psf=psfdir, missing_psf="drop")
    pegleg.validate(ds)
    assert ds.sizes["band"] == 14 and ds.attrs["resolution"] == "observed"
    ds = _jof(shared_data, gid)
    pegleg.validate(ds)
    assert ds.sizes["band"] == 19 and ds.attrs["resolution"] == "matched:F444W"
    assert ds.attrs["source_id"] == f"JOF-{gid}" and ds.attrs["redshift"] > 2
    assert ds.attrs["pixel_scale"] == pytest.approx(0.03, rel=1e-6)
    assert list(ds.wavelength.values) == sorted(ds.wavelength.values)
    # image values identical to the FITS SCI data
    for b in ds.band.values:
        with fits.open(folder / f"{b}.fits") as hdul:
            sci = hdul["SCI"].data
        assert np.array_equal(ds.image.sel(band=b).values, sci, equal_nan=True)
        assert np.array_equal(np.isnan(ds.image.sel(band=b).values), np.isnan(sci))


@pytest.mark.realdata
def test_ngdeep_galaxy(shared_data):
    ds = open_stamps(shared_data / "ngdeep" / "galaxies" / "645",
                     psf=shared_data / "jades-origins-field" / "psf")
    pegleg.validate(ds)
    assert list(ds.band.values) == ["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]
    assert ds.attrs["resolution"] == "observed" and ds.attrs["source_id"] == "NGDEEP-645"
    assert "redshift" not in ds.attrs
    # native resolution: the F115W PSF is sharper than the F444W PSF
    assert ds.psf.sel(band="F115W").values.max() > 2 * ds.psf.sel(band="F444W").values.max()


def aperture_ratio_deviations(ds, folder):
    """Per band (S/N > 20): (own flux ratio to F444W) / (catalogue ratio) - 1, and the S/N."""
    aperture = pytest.importorskip("photutils.aperture")
    CircularAperture, aperture_photometry = aperture.CircularAperture, aperture.aperture_photometry

    meta = json.loads((folder / "source.json").read_text())
    cat = meta["aperture_0p32arcsec_flux_uJy"]
    with fits.open(folder / "F444W.fits") as hdul:
        seg = hdul["SEG"].data
        sci = hdul["SCI"].data.astype(float)
    cy, cx = seg.shape[0] // 2, seg.shape[1] // 2
    own = (seg == seg[cy, cx]) & (seg > 0)
    w = np.clip(sci, 0, None) * own
    yy, xx = np.indices(sci.shape)
    centre = ((w * xx).sum() / w.sum(), (w * yy).sum() / w.sum())  # (x, y), F444W segment centroid
    ap = CircularAperture([centre], r=APERTURE_RADIUS / ds.attrs["pixel_scale"])
    flux, snr = {}, {}
    for b in ds.band.values:
        # no masking of neighbours: the catalogue did not mask them either
        t = aperture_photometry(ds.image.sel(band=b).values, ap, error=ds.error.sel(band=b).values,
                                method="exact")
        flux[b] = float(t["aperture_sum"][0])
        snr[b] = flux[b] / float(t["aperture_sum_err"][0])
    assert snr["F444W"] > 20
    dev = {b: (flux[b] / flux["F444W"]) / (cat[b] / cat["F444W"]) - 1 for b in flux if snr[b] > 20 and b != "F444W"}
    return dev, snr


@pytest.mark.realdata
@pytest.mark.parametrize("gid", JOF)
def test_jof_aperture_colours_match_catalogue(shared_data, gid):
    ds = _jof(shared_data, gid)
    dev, snr = aperture_ratio_deviations(ds, shared_data / "jades-origins-field" / "galaxies" / gid)
    assert len(dev) >= 4
    worst = max(dev, key=lambda b: abs(dev[b]))
    assert abs(dev[worst]) < 0.10, f"JOF-{gid}: {worst} ratio off by {dev[worst]:+.3f}; all: {dev}"


@pytest.mark.realdata
@pytest.mark.xfail(strict=False, reason=(
    "NGDEEP-645 is at native resolution and its catalogue aperture definition is undocumented: "
    "F115W/F444W in a 0.16\" radius aperture is ~9-12% below the catalogue ratio (F150W ~7%), "
    "depending on the centre; EXPANSE's MATCHED_REF images are even further off (~25%)"))
def test_ngdeep_aperture_colours_match_catalogue(shared_data):
    folder = shared_data / "ngdeep" / "galaxies" / "645"
    ds = open_stamps(folder, psf=shared_data / "jades-origins-field" / "psf")
    dev, _ = aperture_ratio_deviations(ds, folder)
    worst = max(dev, key=lambda b: abs(dev[b]))
    assert abs(dev[worst]) < 0.10, f"NGDEEP-645: {worst} ratio off by {dev[worst]:+.3f}; all: {dev}"
