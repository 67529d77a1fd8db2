"""Multi-Gaussian renderer and single-band fitter (core of the deconvolve step)."""

import numpy as np
import pytest

import pegleg
from pegleg import FitError
from pegleg.deconvolve.fit import MultiGaussFit, fit_multigauss, moments
from pegleg.deconvolve.gaussians import component_images, covariances, render_gaussians


def brute(shape, centre, cov, os=41):
    ny, nx = shape
    gy = (np.arange(ny * os) + 0.5) / os - 0.5 - centre[0]
    gx = (np.arange(nx * os) + 0.5) / os - 0.5 - centre[1]
    Y, X = np.meshgrid(gy, gx, indexing="ij")
    ic = np.linalg.inv(cov)
    g = np.exp(-0.5 * (ic[0, 0] * Y * Y + ic[1, 1] * X * X + 2 * ic[0, 1] * X * Y)) / (2 * np.pi * np.sqrt(np.linalg.det(cov)))
    return g.reshape(ny, os, nx, os).mean((1, 3))


@pytest.mark.parametrize("sig, q, phi", [(0.3, 1.0, 0.0), (0.3, 0.5, 0.7), (0.8, 0.4, 2.0), (1.6, 0.7, 0.3), (3.0, 0.3, 1.0)])
def test_render_matches_brute_force_pixel_integration(sig, q, phi):
    cov = covariances(np.array([sig]), q, phi)[0]
    truth = brute((25, 25), (12.3, 11.8), cov)
    r = render_gaussians((25, 25), (12.3, 11.8), cov[None])[0]
    assert np.abs(r - truth).max() / truth.max() < 1e-3
    assert r.sum() == pytest.approx(truth.sum(), rel=5e-4)


@pytest.mark.parametrize("sig, q, phi, centre", [(0.2, 0.14, 0.567, (4.16, 3.84)), (0.1, 1.0, 0.0, (4.0, 4.0)),
                                                 (0.5, 0.14, 1.3, (4.3, 4.45)), (0.3, 0.3, 2.6, (4.5, 4.5))])
def test_render_subpixel_gaussians(sig, q, phi, centre):
    """Gaussians narrower than a pixel, elongated and rotated, at sub-pixel centres: the
    pixel integrals match a 201x supersampled brute force.  (With one set of 5 quadrature
    nodes per pixel these images summed to 0.002-4 instead of 1; point-source fluxes were
    off by up to 11%.)"""
    cov = covariances(np.array([sig]), q, phi)[0]
    truth = brute((9, 9), centre, cov, os=201)
    r = render_gaussians((9, 9), centre, cov[None])[0]
    assert np.abs(r - truth).max() < 2e-4
    assert r.sum() == pytest.approx(1.0, abs=1e-6)


def test_render_unit_flux_for_any_width():
    rng = np.random.default_rng(3)
    for _ in range(200):
        sig, q, phi = 10 ** rng.uniform(-1.3, 0.5), 10 ** rng.uniform(-1.3, 0), rng.uniform(0, np.pi)
        c = (25 + rng.uniform(-0.5, 0.5), 25 + rng.uniform(-0.5, 0.5))   # >= 7 sigma from the edges
        assert render_gaussians((51, 51), c, covariances(np.array([sig]), q, phi)).sum() == pytest.approx(1.0, abs=1e-6)


def test_orientation_convention():
    im = render_gaussians((41, 41), (20, 20), covariances(np.array([5.0]), 0.3, 0.0))[0]
    d = np.arange(41) - 20
    assert (im * d[None, :] ** 2).sum() > 5 * (im * d[:, None] ** 2).sum()  # phi=0: major axis along x
    im = render_gaussians((41, 41), (20, 20), covariances(np.array([5.0]), 0.3, np.pi / 4))[0]
    assert (im * d[None, :] * d[:, None]).sum() > 0  # phi=45 deg: along +x+y


def test_radius_is_exact_for_one_gaussian():
    f = MultiGaussFit(np.array([2.0]), np.array([1.0]), (0, 0), 1.0, 0.0, np.zeros(0), "none", 0, 1)
    assert f.radius(0.5) == pytest.approx(2.0 * np.sqrt(2 * np.log(2)), rel=1e-6)


def test_fit_recovers_multigauss_truth():
    shape = (65, 65)
    psf_s, psf_w = np.array([0.8, 2.0, 5.0]), np.array([0.6, 0.3, 0.1])
    tsig = np.geomspace(0.7, 12, 8)
    tflux = np.array([5, 8, 12, 20, 25, 18, 8, 4.0])
    obs = np.tensordot(tflux, component_images(shape, (32.3, 31.8), tsig, 0.6, 0.5, psf_s, psf_w), 1)
    noise = obs.max() / 100
    true = MultiGaussFit(tsig, tflux, (32.3, 31.8), 0.6, 0.5, np.zeros(0), "none", 0, 1)
    fluxes, radii = [], []
    for seed in range(4):
        img = obs + np.random.default_rng(seed).normal(0, noise, shape)
        f = fit_multigauss(img, np.full(shape, noise), np.zeros(shape, bool), psf_s, psf_w, sky_model="none")
        fluxes.append(f.flux_total / 100 - 1)
        radii.append(f.radius() / true.radius() - 1)
        assert f.centre == pytest.approx((32.3, 31.8), abs=0.05)
        assert f.q == pytest.approx(0.6, abs=0.03)
        assert 0.8 < f.chi2_reduced < 1.2
    assert np.max(np.abs(fluxes)) < 0.02, fluxes
    assert np.max(np.abs(radii)) < 0.05, radii


def test_fit_synthetic_galaxy_bands():
    """Sersic bulge + disk (not a Gaussian mixture) through JWST-like PSFs: flux 2%, r50 5%."""
    bands = ["F090W", "F150W", "F277W", "F444W"]
    obs, truth = pegleg.synth.galaxy(bands, seed=0)
    seg = obs["segmentation"].values > 0
    for b in bands:
        d = obs.sel(band=b)
        f = fit_multigauss(d["image"].values, d["error"].values, d["mask"].values, None, None,
                           psf_image=d["psf"].values, sky_model="none", region=seg)
        assert f.flux_total == pytest.approx(float(truth["flux_total"].sel(band=b)), rel=0.02), b
        assert f.radius() * 0.03 == pytest.approx(float(truth["r50"].sel(band=b)), rel=0.05), b


def test_pixel_psf_convolution_matches_analytic():
    """FFT convolution with a PSF image == analytic Gaussian convolution (up to the pixel convention)."""
    from pegleg.deconvolve.fit import PixelPSF
    from pegleg.psf.mixture import _render

    # a well-resolved case, where integrating the intrinsic image before convolving changes little
    psf = _render((41, 41), (20, 20), np.array([2.5, 5.0]), np.array([0.7, 0.3]))
    psf /= psf.sum()
    shape = (40, 44)
    pix = PixelPSF(psf, shape)
    a = pix.components((20.3, 21.7), np.array([3.0, 6.0]), 0.6, 0.4)
    b = component_images(shape, (20.3, 21.7), np.array([3.0, 6.0]), 0.6, 0.4, np.array([2.5, 5.0]), np.array([0.7, 0.3]))
    # the residual difference is the pixel convention: the intrinsic image is pixel-integrated
    # before it meets a pixel-integrated PSF (1/12 px^2 of extra variance, ~0.6% of this peak)
    assert np.abs(a - b).max() / b.max() < 1e-2


def test_fit_errors():
    z = np.zeros((20, 20))
    with pytest.raises(FitError, match="usable pixels"):
        fit_multigauss(z, np.ones_like(z), np.ones_like(z, bool), np.array([1.0]), np.array([1.0]))
    with pytest.raises(FitError, match="sky_model"):
        fit_multigauss(z, np.ones_like(z), np.zeros_like(z, bool), np.array([1.0]), np.array([1.0]), sky_model="wavy")
    with pytest.raises(FitError, match="positive flux"):
        moments(-np.ones((5, 5)), np.ones((5, 5)))
