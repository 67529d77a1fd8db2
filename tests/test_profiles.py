"""Elliptical-annulus radial profiles (pegleg.profiles.radial_profile)."""

import math

import numpy as np
import pytest
import xarray as xr
from scipy import special

import pegleg
from pegleg import SchemaError
from pegleg.profiles import radial_profile

PS = 0.03
SHAPE = (81, 81)
CY, CX = 40.3, 39.8  # off the pixel grid on purpose
Q, PA = 0.6, 30.0
RT = 36.0  # truncation radius (pixels): the whole model lies in the stamp
RE = 8.0  # effective radius (pixels)


# ---------------------------------------------------------------------------
# an independent exact renderer (its own geometry code, not pegleg's)
# ---------------------------------------------------------------------------
def _taper(r):
    t = np.clip((r / RT - 0.8) / 0.2, 0, 1)
    return 0.5 * (1 + np.cos(np.pi * t))


def _sersic(r, n):
    b = special.gammaincinv(2 * n, 0.5)
    return np.exp(-b * (np.power(r / RE, 1 / n) - 1)) * _taper(r)


def _radius(dy, dx):
    """Semi-major-axis radius for PA degrees counter-clockwise from +x towards +y."""
    c, s = math.cos(math.radians(PA)), math.sin(math.radians(PA))
    return np.hypot(dx * c + dy * s, (-dx * s + dy * c) / Q)


def _render(n):
    """Pixel-integrated image: 12x12 sub-pixels, 64x64 near the centre, 400x400 on the cusp."""
    img = np.zeros(SHAPE)

    def block(y0, y1, x0, x1, s):
        sub = (np.arange(s) + 0.5) / s - 0.5
        ys = (np.arange(y0, y1)[:, None] + sub).ravel() - CY
        xs = (np.arange(x0, x1)[:, None] + sub).ravel() - CX
        v = _sersic(_radius(ys[:, None], xs[None, :]), n)
        img[y0:y1, x0:x1] = v.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))

    iy, ix = int(round(CY)), int(round(CX))
    block(0, SHAPE[0], 0, SHAPE[1], 12)
    block(iy - 4, iy + 5, ix - 4, ix + 5, 64)
    block(iy - 1, iy + 2, ix - 1, ix + 2, 400)
    return img


def _annulus_mean(n, rin, rout):
    """Analytic profile averaged over elliptical annuli (area element ~ r dr)."""
    out = []
    for a, b in zip(rin, rout):
        r = np.linspace(a, b, 4001)
        out.append(np.trapezoid(_sersic(r, n) * 2 * r, r) / (b * b - a * a))
    return np.array(out)


def _enclosed(n, radii):
    """Analytic flux inside elliptical radius r: 2 pi q int_0^r I r dr."""
    out = []
    for R in radii:
        t = np.linspace(math.log(R) - 25, math.log(R), 20001)
        r = np.exp(t)
        out.append(2 * np.pi * Q * np.trapezoid(_sersic(r, n) * r * r, t))
    return np.array(out)


def _stamp(img, **kw):
    img = np.asarray(img, float)
    return pegleg.from_arrays(img, np.full(img.shape, 1e-3), np.pad([[1.0]], 1), ["F444W"], PS, **kw)


@pytest.fixture(scope="module")
def sersic_images():
    return {n: _render(n) for n in (1, 4)}


# ---------------------------------------------------------------------------
# accuracy on analytic Sersic profiles
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 4])
def test_sersic_profile_and_growth_curve(sersic_images, n):
    ds = _stamp(sersic_images[n])
    p = radial_profile(ds, center=(CY, CX), ellipticity=1 - Q, position_angle=PA)
    rin, rout = p["radius_inner"].values / PS, p["radius_outer"].values / PS
    prof = p["profile"].values[0]
    sel = (rin >= 2) & (rout <= RT)
    dev = prof[sel] / _annulus_mean(n, rin[sel], rout[sel]) - 1
    pure = rout[sel] <= 0.8 * RT  # inside the taper
    print(f"n={n}: worst profile deviation at r >= 2 px: {np.abs(dev).max():.4f} "
          f"(at r = {rin[sel][np.argmax(np.abs(dev))]:.0f} px); before the taper: {np.abs(dev[pure]).max():.4f} "
          f"(at r = {rin[sel][pure][np.argmax(np.abs(dev[pure]))]:.0f} px)")
    assert np.abs(dev).max() < 0.02
    # curve of growth against the analytic enclosed flux (within a 1-2 px ellipse the pixel
    # split of the cusp's light is uncertain by ~1%), and the total
    cum = p["cumulative"].values[0]
    sel = (rout >= 3) & (rout <= RT)
    cdev = cum[sel] / _enclosed(n, rout[sel]) - 1
    total = _enclosed(n, [RT])[0]
    print(f"n={n}: worst growth-curve deviation {np.abs(cdev).max():.4f}, total {cum[-1] / total - 1:+.2e}")
    assert np.abs(cdev).max() < 0.01
    assert abs(cum[-1] / total - 1) < 0.01
    # per arcsec^2 and the effective radius of the truncated profile
    np.testing.assert_allclose(p["profile_per_arcsec2"].values, p["profile"].values / PS**2)
    r_half = _brentq_half(n)
    assert abs(float(p["r50"][0]) / (r_half * PS) - 1) < 0.01


def _brentq_half(n):
    from scipy.optimize import brentq

    total = _enclosed(n, [RT])[0]
    return brentq(lambda r: _enclosed(n, [r])[0] - 0.5 * total, 0.5, RT)


def test_pa_convention_and_default_geometry(sersic_images):
    """Default geometry (moments) recovers the rendered q and PA (CCW from +x), and the wrong
    sign of the PA gives a clearly worse profile."""
    ds = _stamp(sersic_images[1])
    p = radial_profile(ds)
    assert "moments" in p.attrs["geometry_source"]
    assert abs(p.attrs["centre_y"] - CY) < 0.05 and abs(p.attrs["centre_x"] - CX) < 0.05
    assert abs(p.attrs["axis_ratio"] - Q) < 0.05
    assert abs(p.attrs["position_angle"] - PA) < 2.0
    good = radial_profile(ds, center=(CY, CX), ellipticity=1 - Q, position_angle=PA)
    bad = radial_profile(ds, center=(CY, CX), ellipticity=1 - Q, position_angle=-PA)
    rin, rout = good["radius_inner"].values / PS, good["radius_outer"].values / PS
    sel = (rin >= 2) & (rout <= 20)
    ref = _annulus_mean(1, rin[sel], rout[sel])
    assert np.abs(bad["profile"].values[0][sel] / ref - 1).max() > 0.1
    assert np.abs(good["profile"].values[0][sel] / ref - 1).max() < 0.01


def test_masked_hole_does_not_bias(sersic_images):
    img = sersic_images[1]
    ds = _stamp(img)
    hole = np.zeros(SHAPE, bool)
    hole[44:48, 44:49] = True  # ~6-10 px from the centre, on the profile's slope
    dsm = _stamp(img, mask=hole)
    kw = dict(center=(CY, CX), ellipticity=1 - Q, position_angle=PA)
    p0, p1 = radial_profile(ds, **kw), radial_profile(dsm, **kw)
    r = p0["radius_pixel"].values
    sel = (r > 2) & (r < 30)
    dev = p1["profile"].values[0][sel] / p0["profile"].values[0][sel] - 1
    print(f"masked hole: worst profile change {np.abs(dev).max():.4f}, "
          f"total change {float(p1['cumulative'][0, -1] / p0['cumulative'][0, -1] - 1):+.2e}")
    assert np.abs(dev).max() < 0.01
    assert abs(float(p1["cumulative"][0, -1] / p0["cumulative"][0, -1]) - 1) < 0.002
    assert abs(float(p1["r50"][0] / p0["r50"][0]) - 1) < 0.002
    np.testing.assert_allclose(p0["npix"].sum() - p1["npix"].sum(), hole.sum(), atol=1e-6)
    np.testing.assert_allclose(p1["area"].values, p0["area"].values)
    # NaN values (unmasked) are excluded the same way
    dsn = ds.assign(nanmap=(("y", "x"), np.where(hole, np.nan, img), {"units": "uJy", "long_name": "x"}))
    pn = radial_profile(dsn, "nanmap", **kw)
    np.testing.assert_allclose(pn["profile"].values, p1["profile"].values[0], rtol=1e-12)


def test_radius_kpc_matches_astropy(sersic_images):
    from astropy.cosmology import FlatLambdaCDM

    ds = _stamp(sersic_images[1], redshift=2.0)
    p = radial_profile(ds, bin_width=0.06)
    k = FlatLambdaCDM(H0=70, Om0=0.3).kpc_proper_per_arcmin(2.0).to_value("kpc / arcmin") / 60.0
    np.testing.assert_allclose(p["radius_kpc"].values, p["radius"].values * k, rtol=1e-12)
    np.testing.assert_allclose(np.diff(p["radius_outer"].values)[:-1], 0.06)
    assert p["radius_kpc"].attrs["units"] == "kpc"
    assert "radius_kpc" not in radial_profile(_stamp(sersic_images[1])).coords


def test_2d_3d_and_extra_dims(sersic_images):
    img = sersic_images[1]
    cube = np.stack([img, 2 * img])
    ds = pegleg.from_arrays(cube, np.full(cube.shape, 1e-3), np.pad([[1.0]], 1), ["F277W", "F444W"], PS)
    kw = dict(center=(CY, CX), ellipticity=1 - Q, position_angle=PA)
    p3 = radial_profile(ds, **kw)
    assert p3["profile"].dims == ("band", "radius") and p3["r50"].dims == ("band",)
    assert "wavelength" in p3.coords
    np.testing.assert_allclose(p3["profile"].sel(band="F444W"), 2 * p3["profile"].sel(band="F277W"))
    np.testing.assert_allclose(p3["r50"].values[0], p3["r50"].values[1])
    one = radial_profile(ds, band="F444W", **kw)
    assert list(one["band"].values) == ["F444W"]
    # a (y, x) map
    ds2 = ds.assign(flux_map=(("y", "x"), img, {"units": "uJy", "long_name": "a map"}))
    p2 = radial_profile(ds2, "flux_map", **kw)
    assert p2["profile"].dims == ("radius",) and p2["r50"].dims == ()
    np.testing.assert_allclose(p2["profile"].values, p3["profile"].sel(band="F277W").values)
    assert p2.attrs["r50"] == pytest.approx(float(p3["r50"][0]))
    # (y, x, quantile), like SED maps: the extra dim comes first in the output
    q3 = np.stack([0.5 * img, img, 1.5 * img], axis=-1)
    ds3 = ds.assign_coords(quantile=("quantile", [0.16, 0.5, 0.84])).assign(
        qmap=(("y", "x", "quantile"), q3, {"units": "uJy", "long_name": "a map with quantiles"}))
    pq = radial_profile(ds3, "qmap", **kw)
    assert pq["profile"].dims == ("quantile", "radius")
    np.testing.assert_allclose(pq["profile"].sel(quantile=0.84), 1.5 * p2["profile"])
    # every output variable is documented
    for p in (p3, p2, pq):
        for name, v in [*p.data_vars.items(), *((k, p[k]) for k in p.coords if k.startswith("radius"))]:
            assert "units" in v.attrs and "long_name" in v.attrs, name


def test_synthetic_truth_r50_per_band():
    _, truth = pegleg.synth.galaxy(["F150W", "F277W", "F444W"], seed=4)
    p = radial_profile(truth)  # the truth's own centre, q and PA (attributes)
    assert p.attrs["geometry_source"].startswith("Dataset attributes")
    ratio = p["r50"].values / truth["r50"].values
    print("truth r50 recovered / true - 1:", dict(zip(truth["band"].values, np.round(ratio - 1, 5))))
    assert np.all(np.abs(ratio - 1) < 0.02)
    p2 = radial_profile(truth, center=(truth.attrs["centre_y"], truth.attrs["centre_x"]),
                        ellipticity=1 - truth.attrs["q"], position_angle=truth.attrs["pa"])
    np.testing.assert_allclose(p2["r50"].values, p["r50"].values)
    assert np.all(np.abs(p["r80"].values / truth["r80"].values - 1) < 0.02)
    np.testing.assert_allclose(p["cumulative"].values[:, -1], truth["flux_stamp"].values, rtol=1e-9)


def test_errors_from_error_map_match_monte_carlo(sersic_images):
    """profile_error = sqrt(sum w^2 err^2) / sum w agrees with the scatter of noisy copies."""
    rng = np.random.default_rng(1)
    sigma = 0.02
    n = 200
    noisy = sersic_images[1][:, :, None] + rng.standard_normal(SHAPE + (n,)) * sigma
    ds = _stamp(sersic_images[1]).assign_coords(sample=np.arange(n)).assign(
        noisy=(("y", "x", "sample"), noisy, {"units": "uJy", "long_name": "noisy copies"}),
        noisy_error=(("y", "x", "sample"), np.full(noisy.shape, sigma), {"units": "uJy", "long_name": "1 sigma"}))
    p = radial_profile(ds, "noisy", center=(CY, CX), ellipticity=1 - Q, position_angle=PA, r_max=25 * PS)
    scatter = p["profile"].std("sample").values[2:]
    predicted = p["profile_error"].isel(sample=0).values[2:]
    ratio = scatter / predicted
    print(f"Monte Carlo scatter / profile_error: median {np.median(ratio):.3f}, range {ratio.min():.2f}-{ratio.max():.2f}")
    assert 0.9 < np.median(ratio) < 1.1 and ratio.min() > 0.75 and ratio.max() < 1.25
    assert p["profile_error"].attrs["error_source"] == "noisy_error"
    # image: from `error`; a noise-free model has none
    obs = _stamp(sersic_images[1])
    pe = radial_profile(obs, center=(CY, CX), ellipticity=1 - Q, position_angle=PA)
    assert pe["profile_error"].attrs["error_source"] == "error"
    assert np.all(np.isfinite(pe["profile_error"].values))
    pm = radial_profile(obs.assign(model=obs["image"]), "model", center=(CY, CX))
    assert np.all(np.isnan(pm["profile_error"].values))


def test_geometry_from_deconvolve_qa_reddest_band(sersic_images):
    img = sersic_images[1]
    cube = np.stack([img, img])
    ds = pegleg.from_arrays(cube, np.full(cube.shape, 1e-3), np.pad([[1.0]], 1), ["F150W", "F444W"], PS)
    qa = {"centre_y": [1.0, CY], "centre_x": [1.0, CX], "axis_ratio": [0.9, Q], "position_angle": [0.0, PA]}
    ds = ds.assign({k: (("band",), np.array(v), {"units": "1", "long_name": k}) for k, v in qa.items()})
    p = radial_profile(ds)
    assert p.attrs["geometry_source"] == "deconvolve QA of F444W"
    assert (p.attrs["centre_y"], p.attrs["centre_x"], p.attrs["axis_ratio"], p.attrs["position_angle"]) == (CY, CX, Q, PA)
    # a failed reddest band falls back to the next one
    ds["axis_ratio"].values[1] = np.nan
    assert radial_profile(ds).attrs["geometry_source"] == "deconvolve QA of F150W"


def test_surface_density_and_log_maps(sersic_images):
    from astropy.cosmology import FlatLambdaCDM

    img = sersic_images[1]
    ds = _stamp(img, redshift=1.5).assign(
        stellar_mass_density=(("y", "x"), 1e9 * img, {"units": "solMass / kpc2", "long_name": "surface density"}),
        log_stellar_mass=(("y", "x"), np.log10(1e9 * img + 1), {"units": "dex", "long_name": "log mass"}))
    p = radial_profile(ds, "stellar_mass_density", center=(CY, CX), ellipticity=1 - Q, position_angle=PA)
    kpc = FlatLambdaCDM(H0=70, Om0=0.3).kpc_proper_per_arcmin(1.5).to_value("kpc / arcmin") / 60 * PS
    assert p["cumulative"].attrs["units"] == "solMass"
    np.testing.assert_allclose(float(p["cumulative"][-1]), 1e9 * img.sum() * kpc**2, rtol=1e-9)
    assert "profile_per_arcsec2" not in p
    pl = radial_profile(ds, "log_stellar_mass", center=(CY, CX))
    assert np.all(np.isnan(pl["cumulative"].values)) and np.isnan(float(pl["r50"]))


def test_bad_inputs(sersic_images):
    ds = _stamp(sersic_images[1])
    with pytest.raises(SchemaError, match="available.*image"):
        radial_profile(ds, "stellar_mass")
    with pytest.raises(SchemaError, match="ellipticity"):
        radial_profile(ds, ellipticity=1.0)
    with pytest.raises(SchemaError, match="ellipticity"):
        radial_profile(ds, ellipticity=-0.5)
    with pytest.raises(SchemaError, match="center"):
        radial_profile(ds, center=(np.nan, 3.0))
    with pytest.raises(SchemaError, match="available bands"):
        radial_profile(ds, band="F999W")
    with pytest.raises(SchemaError, match="bin_width"):
        radial_profile(ds, bin_width=0)
    with pytest.raises(SchemaError, match="y', 'x'"):
        radial_profile(ds, "psf")


def test_input_not_modified_and_accessor_free(sersic_images):
    ds = _stamp(sersic_images[1])
    before = ds.copy(deep=True)
    radial_profile(ds)
    xr.testing.assert_identical(ds, before)
