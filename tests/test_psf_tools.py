"""PSF preparation: flux-conserving resampling, recentring, trimming, measurements."""

import numpy as np
import pytest
from scipy.special import erf

from pegleg import PSFError, schema
from pegleg.psf.tools import (
    encircled_energy,
    pad_to_odd,
    prepare_psf,
    psf_centroid,
    recenter_psf,
    resample_psf,
    trim_psf,
)

NIRCAM_BANDS = ["F090W", "F115W", "F150W", "F162M", "F182M", "F200W", "F210M",
                "F250M", "F277W", "F300M", "F335M", "F356W", "F410M", "F444W"]


def gauss_pixels(n, scale, sigma, cy=0.0, cx=0.0):
    """Pixel-integrated 2-D Gaussian (sigma, offsets in arcsec) on an n x n grid centred at n/2."""
    edges = (np.arange(n + 1) - n / 2) * scale
    fy = np.diff(0.5 * (1 + erf((edges - cy) / (np.sqrt(2) * sigma))))
    fx = np.diff(0.5 * (1 + erf((edges - cx) / (np.sqrt(2) * sigma))))
    return np.outer(fy, fx)


def second_moment_sigma(p, scale):
    """Per-axis sigma (arcsec) from the second moment, with Sheppard's pixel correction."""
    p = p / p.sum()
    y, x = np.indices(p.shape)
    cy, cx = (p * y).sum(), (p * x).sum()
    vy = (p * (y - cy) ** 2).sum() - 1 / 12
    vx = (p * (x - cx) ** 2).sum() - 1 / 12
    return np.sqrt(vy) * scale, np.sqrt(vx) * scale


@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.021, -0.047)])
def test_resample_gaussian(offset):
    sigma = 0.07  # arcsec, close to the F444W core
    g = gauss_pixels(48, 0.0629, sigma, *offset)
    p = prepare_psf(g, from_scale=0.0629, to_scale=0.03)
    assert p.shape[0] % 2 == 1 and p.shape[1] % 2 == 1
    assert abs(p.sum() - 1) < 1e-12
    dy, dx = psf_centroid(p)
    assert np.hypot(dy, dx) < 0.05
    sy, sx = second_moment_sigma(p, 0.03)
    assert abs(sy / sigma - 1) < 0.02 and abs(sx / sigma - 1) < 0.02
    # the output covers the input footprint: resampling alone conserves the flux exactly
    r = resample_psf(g, 0.0629, 0.03)
    assert r.sum() == pytest.approx(g.sum(), rel=1e-12)
    assert r.shape[0] * 0.03 >= 48 * 0.0629


def test_resample_explicit_size_and_downsampling():
    g = gauss_pixels(101, 0.03, 0.1)
    r = resample_psf(g, 0.03, 0.06, size=25)
    assert r.shape == (25, 25)
    assert r.sum() == pytest.approx(g.sum(), rel=1e-9)
    sy, sx = second_moment_sigma(r, 0.06)
    assert sy == pytest.approx(0.1, rel=0.02) and sx == pytest.approx(0.1, rel=0.02)
    with pytest.raises(PSFError, match="odd"):
        resample_psf(g, 0.03, 0.06, size=24)
    with pytest.raises(PSFError, match="to_scale"):
        resample_psf(g, 0.03, 0.0)


def test_recenter_and_even_size():
    g = gauss_pixels(40, 1.0, 2.0, 1.3, -0.6)  # even side, off-centre (pixels)
    r = recenter_psf(g)
    assert r.shape == (41, 41)
    assert np.hypot(*psf_centroid(r)) < 0.01
    assert r.sum() == pytest.approx(g.sum(), rel=1e-3)
    pk = recenter_psf(gauss_pixels(31, 1.0, 1.5, 0.3, 0.2), method="peak")
    iy, ix = np.unravel_index(np.argmax(pk), pk.shape)
    assert (iy, ix) == (15, 15)
    assert np.hypot(*psf_centroid(pk)) < 0.05
    with pytest.raises(PSFError, match="method"):
        recenter_psf(g, method="mode")


def test_trim_and_pad():
    g = gauss_pixels(31, 1.0, 2.0)
    t = trim_psf(g, 11)
    assert t.shape == (11, 11)
    np.testing.assert_array_equal(t, g[10:21, 10:21])
    p = trim_psf(g, (35, 33))
    assert p.shape == (35, 33) and p.sum() == pytest.approx(g.sum())
    assert p[17, 16] == g[15, 15]
    assert pad_to_odd(np.ones((4, 5))).shape == (5, 5)
    with pytest.raises(PSFError, match="odd"):
        trim_psf(g, 10)


def test_encircled_energy_gaussian():
    sigma = 3.0  # pixels
    g = gauss_pixels(61, 1.0, sigma)
    radii = np.array([1.0, 3.0, 6.0, 9.0])
    ee = encircled_energy(g, radii)
    # pixel-integrated image: close to the analytic curve, and to exact circle-pixel overlap
    np.testing.assert_allclose(ee, 1 - np.exp(-radii**2 / (2 * sigma**2)), atol=1e-2)
    photutils = pytest.importorskip("photutils.aperture")
    exact = [photutils.aperture_photometry(g, photutils.CircularAperture((30, 30), r=r),
                                           method="exact")["aperture_sum"][0] for r in radii]
    np.testing.assert_allclose(ee, np.array(exact) / g.sum(), atol=1e-3)
    assert encircled_energy(g, 0.0) == 0.0
    assert encircled_energy(g, 100.0) == pytest.approx(1.0)


def test_prepare_psf_errors_name_the_band():
    g = gauss_pixels(21, 1.0, 2.0)
    bad = g.copy()
    bad[3, 4] = np.nan
    with pytest.raises(PSFError, match="F150W.*NaN"):
        prepare_psf(bad, name="F150W")
    with pytest.raises(PSFError, match="F200W.*sum"):
        prepare_psf(np.zeros((21, 21)), name="F200W")
    with pytest.raises(PSFError, match="F200W.*sum"):
        prepare_psf(-g, name="F200W")
    with pytest.raises(PSFError, match="2-D"):
        prepare_psf(np.ones(5), name="x")


def test_prepare_psf_big_endian_and_same_scale():
    g = gauss_pixels(20, 1.0, 2.0, 0.4, 0.0).astype(">f8")
    p = prepare_psf(g, from_scale=0.03, to_scale=0.03)  # same scale: no resampling
    assert p.dtype == np.float64 and p.dtype.isnative
    assert p.shape == (21, 21)
    assert abs(p.sum() - 1) < 1e-12 and np.hypot(*psf_centroid(p)) < 0.01
    schema.check_psf_array(p, "F444W")
    assert prepare_psf(g, size=9).shape == (9, 9)


@pytest.mark.realdata
def test_nircam_model_psfs_resampled(shared_data):
    from astropy.io import fits

    folder = shared_data / "jades-origins-field" / "psf"
    worst_centroid, worst_sum = 0.0, 0.0
    for band in NIRCAM_BANDS:
        with fits.open(folder / f"{band}.fits") as hdul:
            data = hdul[0].data
            scale = hdul[0].header["PIXELSCL"]
        assert scale in (pytest.approx(0.0312, abs=1e-4), pytest.approx(0.0629, abs=1e-4))
        # flux is conserved by the resampling itself (the stamps sum to < 1: truncated)
        assert resample_psf(data, scale, 0.03).sum() == pytest.approx(data.sum(), rel=1e-10)
        p = prepare_psf(data, from_scale=scale, to_scale=0.03, name=band)
        assert p.shape[0] % 2 == 1 and p.shape[1] % 2 == 1
        assert p.shape[0] * 0.03 >= data.shape[0] * scale
        worst_sum = max(worst_sum, abs(p.sum() - 1))
        worst_centroid = max(worst_centroid, float(np.hypot(*psf_centroid(p))))
    assert worst_sum < 1e-6
    assert worst_centroid < 0.05
