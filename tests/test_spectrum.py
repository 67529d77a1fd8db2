"""pegleg.spectrum: reading spectra and cubes, PRISM resolution, redshifts, line fluxes, model comparison."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from pegleg import FileFormatError, FitError, SchemaError
from pegleg import schema as S
from pegleg import spectrum as sp
from pegleg.plot import spectrum_comparison

CEERS = "nirspec-prism/ceers1345_933.spec.fits"
# checked without importing bagpipes here (pegleg.sed.sps imports it quietly)
needs_bagpipes = pytest.mark.skipif(importlib.util.find_spec("bagpipes") is None, reason="bagpipes not installed")
# log grid 0.6-5.3 um, 400 points: the stand-in for the CEERS grid when the real file is absent
LOG_GRID = np.exp(np.linspace(np.log(0.6), np.log(5.3), 400))


def fwhm_of(wl, f):
    """FWHM of a single peak by linear interpolation of the half-maximum crossings."""
    half = f.max() / 2
    above = np.flatnonzero(f >= half)
    i, j = above[0], above[-1]
    left = np.interp(half, [f[i - 1], f[i]], [wl[i - 1], wl[i]])
    right = np.interp(half, [f[j + 1], f[j]], [wl[j + 1], wl[j]])
    return right - left


def injected(z, line_flux, wl_obs, *, cont=0.05, err=0.004, seed=0):
    """A PRISM-like spectrum: linear continuum (uJy) + lines (uJy um) convolved to PRISM R + noise."""
    fine = np.exp(np.arange(np.log(0.5), np.log(5.6), 1 / 3000))
    dl = np.diff(sp._edges(fine))
    f = cont * (1 + 0.1 * (fine - 3)) * np.ones(fine.size)
    for name, a in line_flux.items():
        lam = sp.LINES[name] * (1 + z) / 1e4
        if fine[0] < lam < fine[-1]:
            i = np.argmin(np.abs(fine - lam))
            f[i] += a / dl[i]
    conv = sp.convolve_to_resolution(fine, f, "prism")
    truth = np.interp(wl_obs, fine, conv)
    rng = np.random.default_rng(seed)
    e = np.full(wl_obs.size, err)
    flux = truth + rng.normal(size=wl_obs.size) * e
    return sp._spectrum_dataset(wl_obs, flux, e, np.zeros(wl_obs.size, bool), {"kind": "1d", "source": "synthetic"})


# --------------------------------------------------------------------------- resolution
def test_prism_resolution_curve():
    r = sp.prism_resolution
    wl = np.linspace(0.6, 5.3, 2000)
    R = r(wl)
    assert 29.5 < R.min() < 30.5 and 1.1 < wl[np.argmin(R)] < 1.3          # minimum ~30 near 1.2 um
    assert 280 < float(r(5.0)) < 290 and 95 < float(r(3.0)) < 105           # JDox curve: 286 at 5 um, 101 at 3 um
    assert np.all(np.diff(R[wl > 1.25]) > 0)                                  # rising to the red
    assert np.max(np.abs(np.diff(np.log(R), 2))) < 1e-4                       # smooth (no kinks)
    assert float(r(0.3)) == pytest.approx(float(r(0.5))) and float(r(7.0)) == pytest.approx(float(r(6.0)))
    assert r(np.ones((2, 3))).shape == (2, 3)


@pytest.mark.parametrize("centre", [1.2, 3.0, 5.0])
def test_convolve_narrow_line_fwhm_and_flux(centre):
    wl = np.arange(centre - 0.4, centre + 0.4, 5e-4)
    f = np.zeros(wl.size)
    i = np.argmin(np.abs(wl - centre))
    f[i] = 1.0 / 5e-4                     # 1 (flux unit x um) in one pixel
    c = sp.convolve_to_resolution(wl, f, "prism")
    expected = wl[i] / float(sp.prism_resolution(wl[i]))
    assert fwhm_of(wl, c) == pytest.approx(expected, rel=0.03)
    assert np.sum(c) * 5e-4 == pytest.approx(1.0, rel=1e-3)                  # flux conserved
    # constant R and an input resolution subtracted in quadrature
    c100 = sp.convolve_to_resolution(wl, f, 100.0)
    assert fwhm_of(wl, c100) == pytest.approx(wl[i] / 100, rel=0.03)
    c1000 = sp.convolve_to_resolution(wl, f, 1000.0)
    c_from_1000 = sp.convolve_to_resolution(wl, c1000, lambda w: np.full_like(w, 100.0), input_resolution=1000.0)
    assert fwhm_of(wl, c_from_1000) == pytest.approx(wl[i] / 100, rel=0.03)


def test_convolve_flat_continuum_and_shapes():
    wl = np.exp(np.linspace(np.log(0.6), np.log(5.3), 3000))
    flat = np.full(wl.size, 2.5)
    np.testing.assert_allclose(sp.convolve_to_resolution(wl, flat, "prism"), flat, rtol=1e-12)
    two = np.stack([flat, np.linspace(1, 2, wl.size)])
    out = sp.convolve_to_resolution(wl, two, "prism")
    assert out.shape == two.shape
    # a linear ramp is unchanged away from the ends (symmetric kernel)
    inner = (wl > 1) & (wl < 5)
    np.testing.assert_allclose(out[1][inner], two[1][inner], rtol=2e-3)
    with pytest.raises(SchemaError, match="strictly increasing"):
        sp.convolve_to_resolution(wl[::-1], flat, "prism")
    with pytest.raises(SchemaError, match="resolution"):
        sp.convolve_to_resolution(wl, flat, "nirspec-g395h")
    with pytest.raises(SchemaError, match="last axis"):
        sp.convolve_to_resolution(wl, flat[:-1], 100.0)


# --------------------------------------------------------------------------- reading
def test_read_fits_table_units_and_mask(tmp_path):
    import astropy.units as u
    from astropy.io import fits

    lam_aa = np.linspace(50000.0, 10000.0, 50)             # descending, Angstrom
    flam = 1e-19 * (1 + lam_aa / 1e4)                        # erg/s/cm2/A
    err = 0.05 * flam
    flam[3] = np.nan
    err[7] = 0.0
    cols = [fits.Column(name="LAMBDA", format="D", unit="Angstrom", array=lam_aa),
            fits.Column(name="FLUX", format="D", unit="erg/s/cm2/Angstrom", array=flam),
            fits.Column(name="FLUX_ERR", format="D", unit="erg/s/cm2/Angstrom", array=err)]
    path = tmp_path / "spec.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="EXTRACT1D")]).writeto(path)
    ds = sp.read(path)
    assert ds.attrs["kind"] == "1d" and ds.attrs["source"] == str(path)
    wl = ds.wavelength.values
    assert np.all(np.diff(wl) > 0) and wl[0] == pytest.approx(1.0) and wl[-1] == pytest.approx(5.0)
    assert ds.flux.attrs["units"] == "uJy" and ds.wavelength.attrs["units"] == "um"
    expect = (flam[::-1] * u.erg / u.s / u.cm ** 2 / u.AA).to_value(u.uJy, equivalencies=u.spectral_density(
        lam_aa[::-1] * u.AA))
    ok = np.isfinite(expect)
    np.testing.assert_allclose(ds.flux.values[ok], expect[ok], rtol=1e-10)
    assert ds.mask.values.sum() == 2 and ds.mask.values[49 - 3] and ds.mask.values[49 - 7]
    # a flux_unit argument overrides TUNIT; an unknown unit is a SchemaError
    ds2 = sp.read(path, flux_unit="erg/s/cm2/A", wavelength_unit="AA")
    np.testing.assert_allclose(ds2.flux.values[ok], expect[ok], rtol=1e-10)
    with pytest.raises(SchemaError, match="unknown unit 'furlongs'"):
        sp.read(path, flux_unit="furlongs")
    with pytest.raises(SchemaError, match="not a flux density"):
        sp.read(path, flux_unit="MJy/sr")


def test_read_errors(tmp_path):
    from astropy.io import fits

    with pytest.raises(FileFormatError, match="file not found"):
        sp.read(tmp_path / "nope.fits")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(FileFormatError, match="junk.bin"):
        sp.read(junk)
    img = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((5, 5)))]).writeto(img)
    with pytest.raises(FileFormatError, match="no spectrum found.*3-D SCI cube"):
        sp.read(img)
    noerr = tmp_path / "noerr.fits"
    cols = [fits.Column(name="wave", format="D", unit="um", array=np.arange(1.0, 2.0, 0.1)),
            fits.Column(name="flux", format="D", unit="uJy", array=np.ones(10))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(noerr)
    with pytest.raises(FileFormatError, match="no error column"):
        sp.read(noerr)
    bad_unit = tmp_path / "badunit.fits"
    cols.append(fits.Column(name="err", format="D", array=np.ones(10)))
    cols[1] = fits.Column(name="flux", format="D", unit="bananas", array=np.ones(10))
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(bad_unit)
    with pytest.raises(SchemaError, match="bananas"):
        sp.read(bad_unit)


def test_read_text_formats(tmp_path):
    wl = np.linspace(1.0, 2.0, 11)
    csv = tmp_path / "spec.csv"
    csv.write_text("wavelength,flux,error\n" + "\n".join(f"{w},{2 * w},{0.1}" for w in wl[::-1]))
    ds = sp.read(csv)
    np.testing.assert_allclose(ds.wavelength.values, wl)
    np.testing.assert_allclose(ds.flux.values, 2 * wl)
    assert not ds.mask.values.any()
    # whitespace, 3 columns, commented header ignored, units from the arguments
    txt = tmp_path / "spec.txt"
    txt.write_text("# my spectrum\n" + "\n".join(f"{w * 1000:.1f}  {3.0}  {0.3}" for w in wl) + "\n1500.0 nan 0.3\n")
    with pytest.raises(FileFormatError, match="repeated wavelength"):
        sp.read(txt, wavelength_unit="nm", flux_unit="mJy")
    txt.write_text("# my spectrum\n" + "\n".join(f"{w * 1000:.1f}  {3.0}  {0.3}" for w in wl) + "\n2100.0 nan 0.3\n")
    ds = sp.read(txt, wavelength_unit="nm", flux_unit="mJy")
    np.testing.assert_allclose(ds.wavelength.values[:-1], wl)
    np.testing.assert_allclose(ds.flux.values[:-1], 3000.0)
    assert ds.mask.values.tolist() == [False] * 11 + [True]
    # a header in a comment with other column names and order
    hdr = tmp_path / "hdr.dat"
    hdr.write_text("# err lambda flux\n" + "\n".join(f"0.1 {w} 1.0" for w in wl))
    np.testing.assert_allclose(sp.read(hdr).wavelength.values, wl)
    two = tmp_path / "two.txt"
    two.write_text("\n".join(f"{w} 1.0" for w in wl))
    with pytest.raises(FileFormatError, match="expected 3 columns"):
        sp.read(two)
    with pytest.raises(SchemaError, match="not a wavelength"):
        sp.read(csv, wavelength_unit="uJy")


def write_cube(path, *, nw=20, ny=6, nx=7, scale=0.1):
    from astropy.io import fits

    rng = np.random.default_rng(2)
    sci = rng.uniform(1.0, 2.0, (nw, ny, nx))              # MJy/sr
    err = np.full(sci.shape, 0.1)
    dq = np.zeros(sci.shape, np.uint32)
    dq[5, 2, 3] = 1                                          # DO_NOT_USE
    sci[6, 0, 0] = np.nan
    h = fits.Header()
    h["BUNIT"] = "MJy/sr"
    for k, v in {"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CTYPE3": "WAVE", "CUNIT1": "deg", "CUNIT2": "deg",
                 "CUNIT3": "um", "CRPIX1": 4.0, "CRPIX2": 3.5, "CRPIX3": 1.0, "CRVAL1": 214.83, "CRVAL2": 52.87,
                 "CRVAL3": 1.0, "CDELT1": -scale / 3600, "CDELT2": scale / 3600, "CDELT3": 0.01}.items():
        h[k] = v
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(sci, h, name="SCI"), fits.ImageHDU(err, h, name="ERR"),
                  fits.ImageHDU(dq, h, name="DQ")]).writeto(path)
    return sci, err


def test_read_cube_and_extract(tmp_path):
    from astropy.io import fits
    from astropy.wcs import WCS

    path = tmp_path / "cube_s3d.fits"
    sci, err = write_cube(path)
    cube = sp.read(path)
    assert cube.attrs["kind"] == "cube" and cube.flux.dims == ("wavelength", "y", "x")
    np.testing.assert_allclose(cube.wavelength.values, 1.0 + 0.01 * np.arange(20), rtol=1e-12)
    area_sr = (0.1 / 3600 * np.pi / 180) ** 2
    np.testing.assert_allclose(cube.flux.values[0], sci[0] * area_sr * 1e12, rtol=1e-6)   # MJy/sr -> uJy
    assert cube.attrs["pixel_scale"] == pytest.approx(0.1, rel=1e-6)
    assert cube.mask.values[5, 2, 3] and cube.mask.values[6, 0, 0] and cube.mask.values.sum() == 2
    assert S.wcs_from_text(cube.attrs["wcs"]).naxis == 2

    region = np.zeros((6, 7), bool)
    region[1:3, 1:3] = True
    one = sp.extract(cube, region)
    assert one.attrs["kind"] == "1d" and one.attrs["n_spaxels"] == 4
    np.testing.assert_allclose(one.flux.values, (sci[:, 1:3, 1:3] * area_sr * 1e12).sum(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(one.error.values, 2 * 0.1 * area_sr * 1e12, rtol=1e-6)
    assert not one.mask.values.any()

    # the same spaxels from a mask on a 3x finer image grid whose pixel (3y+1, 3x+1) is spaxel (y, x)'s centre
    hi = fits.Header()
    for k, v in {"NAXIS": 2, "NAXIS1": 21, "NAXIS2": 18, "CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN",
                 "CUNIT1": "deg", "CUNIT2": "deg", "CRPIX1": 11.0, "CRPIX2": 9.5, "CRVAL1": 214.83,
                 "CRVAL2": 52.87, "CDELT1": -0.1 / 3 / 3600, "CDELT2": 0.1 / 3 / 3600}.items():
        hi[k] = v
    image_region = np.zeros((18, 21), bool)
    image_region[3:9, 3:9] = True
    for image_wcs in (WCS(hi), hi, S.wcs_to_text(WCS(hi))):
        two = sp.extract(cube, image_region, image_wcs=image_wcs)
        assert two.attrs["n_spaxels"] == 4
        np.testing.assert_allclose(two.flux.values, one.flux.values)
    # a masked spaxel in the region masks that wavelength (default), or is skipped
    region[2, 3] = True
    three = sp.extract(cube, region)
    assert three.mask.values.tolist() == [i == 5 for i in range(20)]
    loose = sp.extract(cube, region, max_masked_fraction=0.5)
    assert not loose.mask.values.any()
    with pytest.raises(SchemaError, match="selects no spaxel"):
        sp.extract(cube, np.zeros((6, 7), bool))
    with pytest.raises(SchemaError, match="shape"):
        sp.extract(cube, np.ones((5, 5), bool))
    with pytest.raises(SchemaError, match="cube"):
        sp.extract(one, region)
    with pytest.raises(SchemaError, match="extract"):
        sp.line_fluxes(cube, 1.0)


# --------------------------------------------------------------------------- lines and redshift
LINE_FLUX = {"[OII]3727": 0.004, "[OII]3730": 0.005, "Hbeta": 0.008, "[OIII]4960": 0.010, "[OIII]5008": 0.030,
             "Halpha": 0.025, "[NII]6585": 0.004, "[SII]6718": 0.002, "[SII]6733": 0.0015, "Pabeta": 0.002}


@pytest.mark.parametrize("z", [1.35, 3.1, 6.2])
def test_redshift_from_injected_lines(z):
    obs = injected(z, LINE_FLUX, LOG_GRID, seed=int(z * 10))
    zfit, det = sp.redshift_from_lines(obs)
    assert abs(zfit - z) < 0.005 * (1 + z)
    assert det["z_error"] > 0 and abs(zfit - z) < 5 * det["z_error"] + 1e-3 * (1 + z)
    assert any("Halpha" in n or "[OIII]5008" in n for n in det["identified"])
    assert det["candidates"][0][1] >= det["candidates"][-1][1]
    lf = det["lines"]
    assert set(lf.line.values) >= set(det["identified"])
    assert np.all(lf.line_centre.values[lf.identified.values] > 0)


def test_line_fluxes_recover_injected_fluxes():
    z = 3.1
    obs = injected(z, LINE_FLUX, LOG_GRID, err=0.002, seed=5)
    lf = sp.line_fluxes(obs, z)
    names = list(lf.line.values)
    # Halpha + [NII] are closer than a PRISM resolution element: one blend, and it says so
    blend = next(n for n in names if "Halpha" in n)
    assert "[NII]6585" in blend and bool(lf.line_blend.sel(line=blend))
    truth = {blend: LINE_FLUX["Halpha"] + LINE_FLUX["[NII]6585"], "Hbeta": LINE_FLUX["Hbeta"]}
    oiii = next(n for n in names if "[OIII]5008" in n)
    truth[oiii] = LINE_FLUX["[OIII]5008"] + (LINE_FLUX["[OIII]4960"] if "4960" in oiii else 0)
    for name, a in truth.items():
        got, err = float(lf.line_flux_ujy_um.sel(line=name)), float(lf.line_flux_ujy_um_error.sel(line=name))
        assert abs(got - a) < 4 * err + 0.03 * a, (name, got, a, err)
        lam = float(lf.line_rest_wavelength.sel(line=name)) * (1 + z) / 1e4
        assert float(lf.line_flux.sel(line=name)) == pytest.approx(got * 2.99792458e-15 / lam ** 2, rel=1e-9)
    assert lf.line_flux.attrs["units"] == "erg/(s cm2)"
    assert 0.85 < lf.attrs["width_scale"] < 1.2
    assert abs(lf.attrs["redshift"] - z) < 0.002 * (1 + z)
    with pytest.raises(FitError, match="covered"):
        sp.line_fluxes(obs, z, lines=["Paalpha"])
    with pytest.raises(SchemaError, match="unknown line"):
        sp.line_fluxes(obs, z, lines=["Hdelta"])


def test_d4000_of_a_step():
    z = 1.0
    wl = np.exp(np.linspace(np.log(0.6), np.log(1.2), 400))
    f = np.where(wl * 1e4 / (1 + z) < 3975.0, 1.0, 1.5)
    ds = sp._spectrum_dataset(wl, f, 0.01 * f, np.zeros(wl.size, bool), {"kind": "1d"})
    d, e = sp.d4000(ds, z)
    assert d == pytest.approx(1.5, rel=1e-9) and 0 < e < 0.02
    assert np.isnan(sp.d4000(ds, 3.0)[0])                                  # not covered


# --------------------------------------------------------------------------- compare (no bagpipes)
def toy_prediction(z, quantiles=False):
    fine = np.exp(np.arange(np.log(0.5), np.log(5.6), 1e-3))
    cont = 0.2 * (fine / 2) ** -0.5 * np.where(fine * 1e4 / (1 + z) > 4000, 1.3, 1.0)
    lines = np.zeros(fine.size)
    dl = np.diff(sp._edges(fine))
    for name, a in LINE_FLUX.items():
        lam = sp.LINES[name] * (1 + z) / 1e4
        if fine[0] < lam < fine[-1]:
            i = np.argmin(np.abs(fine - lam))
            lines[i] += 3 * a / dl[i]
    flux = cont + lines
    if not quantiles:
        return xr.Dataset({"flux": ("wavelength", flux, {"units": "uJy"})}, coords={"wavelength": fine},
                          attrs={"redshift": z})
    q = np.stack([0.95 * flux, flux, 1.05 * flux])
    return xr.Dataset({"flux": (("quantile", "wavelength"), q, {"units": "nJy"})},
                      coords={"wavelength": fine, "quantile": [0.16, 0.5, 0.84]}, attrs={"redshift": z})


def test_compare_toy_model_quantiles_and_figure(tmp_path):
    z = 2.5
    pred = toy_prediction(z)
    conv = sp.convolve_to_resolution(pred.wavelength.values, pred.flux.values, "prism")
    truth = np.interp(LOG_GRID, pred.wavelength.values, conv) * (1.2 - 0.05 * LOG_GRID)
    err = 0.02 * truth
    obs = sp._spectrum_dataset(LOG_GRID, truth + np.random.default_rng(4).normal(size=LOG_GRID.size) * err, err,
                               np.zeros(LOG_GRID.size, bool), {"kind": "1d", "source": "toy"})
    res = sp.compare(pred, obs, poly_order=1)
    np.testing.assert_allclose(res.calibration_coefficients.values, [1.2, -0.05], atol=0.01)
    assert 0.8 < float(res.chi2_reduced_after) < 1.3 < float(res.chi2_reduced_before)
    assert res.sizes["window"] == 5 and res.sizes["line"] >= 5
    assert float(res.line_ratio_observed.sel(line=res.attrs["reference_line"])) == 1.0
    assert res.spectrum_residual.attrs["units"] == "1" and res.calibration_coefficients.dims == ("degree",)
    # a quantile prediction in nJy: the median is used, the 16/84 width is the model error
    resq = sp.compare(toy_prediction(z, quantiles=True), obs, poly_order=1)
    np.testing.assert_allclose(resq.model_flux.values, res.model_flux.values * 1e-3, rtol=1e-9)
    np.testing.assert_allclose(resq.model_flux_error.values, 0.05 * resq.model_flux.values, rtol=1e-6)
    assert float(resq.chi2_reduced_after) < float(res.chi2_reduced_after)     # model errors add to sigma
    assert float(resq.d4000_model_error) > 0 and np.all(resq.line_ratio_model_error.values >= 0)
    fig = res.pegleg.plot.spectrum_comparison()
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    assert spectrum_comparison(resq, fig=fig) is fig
    fig.savefig(tmp_path / "cmp.png")
    # no redshift: no D4000, no lines
    bare = pred.copy()
    bare.attrs = {}
    nz = sp.compare(bare, obs)
    assert np.isnan(float(nz.d4000_observed)) and nz.sizes["line"] == 0 and "redshift" not in nz.attrs
    with pytest.raises(SchemaError, match="quantile 0.16"):
        sp.compare(toy_prediction(z, True).assign_coords(quantile=[0.1, 0.5, 0.9]), obs)
    with pytest.raises(SchemaError, match="observed: variable 'error' is missing"):
        sp.compare(pred, pred)
    with pytest.raises(SchemaError, match="missing"):
        spectrum_comparison(obs)


def _toy_draws(z, scale_oiii, scale_rest):
    """Draws of the toy model whose [OIII] lines and other lines are scaled per draw."""
    fine = np.exp(np.arange(np.log(0.5), np.log(5.6), 1e-3))
    cont = 0.2 * (fine / 2) ** -0.5 * np.where(fine * 1e4 / (1 + z) > 4000, 1.3, 1.0)
    dl = np.diff(sp._edges(fine))
    out = []
    for so, sr in zip(scale_oiii, scale_rest):
        f = cont.copy()
        for name, a in LINE_FLUX.items():
            lam = sp.LINES[name] * (1 + z) / 1e4
            i = np.argmin(np.abs(fine - lam))
            if fine[0] < lam < fine[-1]:
                f[i] += 3 * a * (so if "OIII" in name else sr) / dl[i]
        out.append(f)
    d = np.array(out)
    q = np.quantile(d, [0.16, 0.5, 0.84], axis=0)
    return xr.Dataset({"flux": (("quantile", "wavelength"), q, {"units": "uJy"}),
                       "flux_draws": (("draw", "wavelength"), d, {"units": "uJy"})},
                      coords={"wavelength": fine, "quantile": [0.16, 0.5, 0.84]}, attrs={"redshift": z})


def test_compare_line_ratio_errors_from_draws():
    """Model line ratios and their errors come from the posterior draws: lines that scale
    together have a ratio error ~0 whatever their flux errors; lines that scale apart have
    the spread of the ratio.  (From the 16th/84th-percentile spectra both lines move up
    together and the ratio error is ~0 in both cases.)"""
    z = 2.5
    s = np.exp(np.random.default_rng(0).normal(0, 0.3, 60))          # 30% lognormal scatter
    together = _toy_draws(z, s, s)
    apart = _toy_draws(z, s, 1 / s)
    obs_pred = toy_prediction(z)
    conv = sp.convolve_to_resolution(obs_pred.wavelength.values, obs_pred.flux.values, "prism")
    truth = np.interp(LOG_GRID, obs_pred.wavelength.values, conv)
    err = 0.01 * truth.max() * np.ones(LOG_GRID.size)
    obs = sp._spectrum_dataset(LOG_GRID, truth + np.random.default_rng(1).normal(size=LOG_GRID.size) * err, err,
                               np.zeros(LOG_GRID.size, bool), {"kind": "1d", "source": "toy"})
    r1 = sp.compare(together, obs, poly_order=0)
    r2 = sp.compare(apart, obs, poly_order=0)
    assert r1.attrs["model_line_errors"] == "posterior draws"
    ref = r1.attrs["reference_line"]
    assert "OIII" in ref and r2.attrs["reference_line"] == ref
    other = [str(n) for n in r1.line.values if "Halpha" in str(n)][0]
    # fluxes: ~30% errors in both cases; the ratio Halpha/[OIII]: ~0 together, ~2 x 30% apart
    for r in (r1, r2):
        rel = float(r.line_flux_model_error.sel(line=other) / r.line_flux_model.sel(line=other))
        assert 0.15 < rel < 0.5, rel
    rel1 = float(r1.line_ratio_model_error.sel(line=other) / r1.line_ratio_model.sel(line=other))
    rel2 = float(r2.line_ratio_model_error.sel(line=other) / r2.line_ratio_model.sel(line=other))
    assert rel1 < 0.03 and 0.4 < rel2 < 0.9, (rel1, rel2)
    # without draws: the old estimate, from the percentile spectra
    r3 = sp.compare(apart.drop_vars("flux_draws"), obs, poly_order=0)
    assert r3.attrs["model_line_errors"] == "16th/84th-percentile spectra"
    assert float(r3.line_ratio_model_error.sel(line=other) / r3.line_ratio_model.sel(line=other)) < 0.2


# --------------------------------------------------------------------------- bagpipes model and real data
def bagpipes_params(**kw):
    from pegleg.sed import sps

    p = np.zeros(len(sps.PARAM_NAMES))
    base = dict(log_mass_formed=10.0, redshift=2.0, log_metallicity=-0.3, av=0.3, delta=0.0, eta=1.0, log_u=-2.5)
    base.update(kw)
    for k, v in base.items():
        p[sps.PARAM_NAMES.index(k)] = v
    return p


@pytest.fixture(scope="module")
def observed_grid():
    """The real CEERS wavelength grid when present, else a log grid 0.6-5.3 um (400 points)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / CEERS
    if path.exists():
        return sp.read(path).wavelength.values
    return LOG_GRID


@needs_bagpipes
def test_compare_recovers_calibration_of_bagpipes_spectrum(observed_grid):
    z = 2.0
    pred = sp.predict(bagpipes_params(redshift=z))             # one bagpipes model on a R=1000 log grid
    assert pred.attrs["redshift"] == z and pred.flux.dims == ("wavelength",)
    wl = observed_grid
    conv = sp.convolve_to_resolution(pred.wavelength.values, pred.flux.values, "prism")
    coef = np.array([0.8, 0.12, -0.015])                        # slit-loss-like quadratic
    P = coef[0] + coef[1] * wl + coef[2] * wl ** 2
    truth = np.interp(wl, pred.wavelength.values, conv) * P
    err = np.maximum(np.abs(truth), 0.1 * np.median(np.abs(truth))) / 30     # S/N 30
    flux = truth + np.random.default_rng(4).normal(size=wl.size) * err
    obs = sp._spectrum_dataset(wl, flux, err, np.zeros(wl.size, bool), {"kind": "1d", "source": "bagpipes z=2"})

    res = sp.compare(pred, obs)
    assert np.max(np.abs(res.calibration.values / P - 1)) < 0.02
    assert 0.8 < float(res.chi2_reduced_after) < 1.3
    assert float(res.chi2_reduced_before) > 2
    assert abs(float(res.d4000_observed) / float(res.d4000_model) - 1) < 0.10    # ~3 sigma of the noise
    ro, roe, rm = res.line_ratio_observed.values, res.line_ratio_observed_error.values, res.line_ratio_model.values
    assert res.sizes["line"] >= 5
    ok = roe > 0
    assert np.all(np.abs(ro[ok] - rm[ok]) < 3 * roe[ok]), res[["line_ratio_observed", "line_ratio_model"]]
    assert np.all(np.abs(res.continuum_residual.values) < 4 * res.continuum_residual_error.values + 0.01)

    zfit, det = sp.redshift_from_lines(obs)
    assert abs(zfit - z) < 0.005 * (1 + z)
    print(f"\nbagpipes z=2: calibration max |P/P_true-1| = {np.max(np.abs(res.calibration.values / P - 1)):.4f}, "
          f"chi2_red {float(res.chi2_reduced_before):.2f} -> {float(res.chi2_reduced_after):.3f}, D4000 obs/model "
          f"{float(res.d4000_observed):.3f}/{float(res.d4000_model):.3f}, z = {zfit:.5f} +- {det['z_error']:.5f}")


@pytest.mark.realdata
def test_real_ceers_spectrum(shared_data, tmp_path):
    obs = sp.read(shared_data / CEERS)
    assert obs.sizes["wavelength"] == 414
    wl = obs.wavelength.values
    assert 0.55 < wl[0] < 0.65 and 5.25 < wl[-1] < 5.4
    assert obs.flux.attrs["units"] == "uJy"
    good = ~obs.mask.values
    assert 300 < good.sum() < 414                               # zero-error ends are masked
    z, det = sp.redshift_from_lines(obs)
    # measured: z = 4.2323 +- 0.0024 from [OII], Hgamma, Hbeta, [OIII], Halpha+[NII], [SIII]9533
    assert 4.20 < z < 4.26
    ident = det["identified"]
    assert any("[OIII]5008" in n for n in ident) and any("Halpha" in n for n in ident) and "Hbeta" in ident
    print(f"\nCEERS 1345_933: z = {z:.4f} +- {det['z_error']:.4f}; lines (S/N): " + ", ".join(
        f"{n} ({s:.1f})" for n, s in zip(det["lines"].line.values, det["lines"].line_snr.values)
        if s >= 5))

    if importlib.util.find_spec("bagpipes") is None:
        pytest.skip("bagpipes not installed")
    # a young, low-metallicity star-forming galaxy (extreme [OIII] emitters need a recent burst)
    pred = sp.predict(bagpipes_params(log_mass_formed=7.55, redshift=z, log_metallicity=-1.0, av=0.1,
                                      log_u=-1.5, dsfr1=1.5, dsfr2=1.0))
    res = sp.compare(pred, obs)
    assert np.isfinite(float(res.chi2_after)) and np.isfinite(float(res.chi2_before))
    assert np.all(res.calibration.values[good] > 0)
    fig = spectrum_comparison(res)
    fig.savefig(tmp_path / "ceers.png")
    print(f"compare: chi2_red {float(res.chi2_reduced_before):.2f} -> {float(res.chi2_reduced_after):.2f}, "
          f"calibration {res.calibration.values[good].min():.2f}-{res.calibration.values[good].max():.2f}, "
          f"D4000 obs {float(res.d4000_observed):.2f} +- {float(res.d4000_observed_error):.2f} model "
          f"{float(res.d4000_model):.2f}")
