"""Gaussian-mixture PSF fits: peak and flux of analytic PSFs."""

import numpy as np
import pytest
from scipy.special import j1

from pegleg import PSFError
from pegleg.psf.mixture import fit_psf_mixture, gaussian_pixel_integrals


def _grid(n, os, dy=0.0, dx=0.0):
    g = (np.arange(n * os) + 0.5) / os - n / 2
    y, x = np.meshgrid(g - dy, g - dx, indexing="ij")
    return y, x


def _bin(im, n, os):
    im = im.reshape(n, os, n, os).sum((1, 3))
    return im / im.sum()


def moffat(n, fwhm, beta, os=9, dy=0.0, dx=0.0):
    a = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    y, x = _grid(n, os, dy, dx)
    return _bin((1 + (x * x + y * y) / a**2) ** (-beta), n, os)


def airy(n, fwhm, os=9):
    y, x = _grid(n, os)
    v = 1.6163 * 2 / fwhm * np.hypot(x, y)  # (2 J1(v)/v)^2 falls to 1/2 at v = 1.6163
    v[v == 0] = 1e-12
    return _bin((2 * j1(v) / v) ** 2, n, os)


def test_pixel_integrals_sum_to_one():
    g = gaussian_pixel_integrals(41, 20.3, [0.3, 1.0, 3.0])
    np.testing.assert_allclose(g.sum(1), 1.0, atol=1e-9)


def test_exact_gaussian_recovered():
    from pegleg.psf.mixture import _render

    truth = _render((31, 31), (15.2, 14.9), np.array([1.3]), np.array([1.0]))
    m = fit_psf_mixture(truth, 1)
    assert m.sigma[0] == pytest.approx(1.3, rel=1e-4)
    assert m.centre == pytest.approx((15.2, 14.9), abs=1e-4)
    assert m.weight.sum() == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("fwhm, beta, n", [(1.6, 3.0, 31), (2.5, 2.5, 41), (5.0, 4.765, 51)])
def test_moffat(fwhm, beta, n):
    p = moffat(n, fwhm, beta)
    m = fit_psf_mixture(p)
    assert abs(m.peak_ratio - 1) < 0.01
    assert abs(m.flux_ratio - 1) < 0.002
    assert m.rms < 1e-3
    model = m.render()
    assert model.max() == pytest.approx(p.max(), rel=0.01)
    assert model.sum() == pytest.approx(p.sum(), rel=0.002)
    assert m.psf_a.sum() == pytest.approx(1.0)
    assert m.fwhm() == pytest.approx(fwhm, rel=0.05)


@pytest.mark.parametrize("fwhm, n", [(1.7, 51), (4.8, 75)])
def test_airy_peak_within_3_percent(fwhm, n):
    p = airy(n, fwhm)
    m = fit_psf_mixture(p)
    assert abs(m.peak_ratio - 1) < 0.03
    assert abs(m.flux_ratio - 1) < 0.01


def test_subpixel_centre_recovered():
    p = moffat(41, 3.0, 3.0, dy=0.3, dx=-0.2)
    m = fit_psf_mixture(p)
    assert m.centre[0] - 20 == pytest.approx(0.3, abs=0.01)
    assert m.centre[1] - 20 == pytest.approx(-0.2, abs=0.01)


def test_errors():
    with pytest.raises(PSFError, match="2-D"):
        fit_psf_mixture(np.ones(5))
    with pytest.raises(PSFError, match="NaN"):
        fit_psf_mixture(np.full((5, 5), np.nan))
    with pytest.raises(PSFError, match="positive flux"):
        fit_psf_mixture(-np.ones((5, 5)))


@pytest.mark.realdata
def test_shared_nircam_model_psfs(shared_data):
    """Issue goal: mixture peak within 3% and total flux within 1% for all 14 NIRCam model PSFs at 0.03"/px."""
    from astropy.io import fits

    from pegleg.psf import prepare_psf

    files = sorted((shared_data / "jades-origins-field" / "psf").glob("F*.fits"))
    assert len(files) == 14
    worst_peak = worst_flux = 0.0
    for f in files:
        with fits.open(f) as h:
            data, scale = h[0].data.astype(float), float(h[0].header["PIXELSCL"])
        p = prepare_psf(data, from_scale=scale, to_scale=0.03, name=f.stem)
        m = fit_psf_mixture(p)
        model = m.render()
        peak = model.max() / p.max() - 1
        flux = model.sum() / p.sum() - 1
        worst_peak, worst_flux = max(worst_peak, abs(peak)), max(worst_flux, abs(flux))
        assert abs(peak) < 0.03, (f.stem, peak)
        assert abs(flux) < 0.01, (f.stem, flux)
        assert m.weight.sum() == pytest.approx(p.sum(), rel=1e-3)  # tied by a penalty term
    print(f"worst |peak-1| {worst_peak:.4f}, worst |flux-1| {worst_flux:.4f}")
