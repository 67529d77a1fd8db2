"""pegleg's multi-Gaussian fitter against imcascade itself, on the same model and inputs."""

import logging
import sys

import numpy as np
import pytest

pytest.importorskip("imcascade")

from pegleg import FitError  # noqa: E402
from pegleg.deconvolve.fit import MultiGaussFit, fit_multigauss  # noqa: E402
from pegleg.deconvolve.gaussians import component_images  # noqa: E402
from pegleg.deconvolve.imcascade_backend import (  # noqa: E402
    fit_band_imcascade,
    imcascade_angle,
    imcascade_centre,
)

SHAPE = (45, 45)
CENTRE = (22.3, 21.8)
Q, PHI = 0.6, np.deg2rad(35.0)
SIGMA = np.geomspace(0.5, 10.0, 8)
FLUX = np.array([0.3, 0.8, 1.5, 2.0, 2.0, 1.5, 0.8, 0.2]) / 9.1 * 1000
PSF_SIGMA = np.array([0.9, 2.2, 5.0])
PSF_WEIGHT = np.array([0.6, 0.3, 0.1])
SKY = 0.05


@pytest.fixture(scope="module")
def case():
    """A multi-Gaussian galaxy convolved with a 3-component Gaussian PSF, peak S/N 100, flat sky."""
    comps = component_images(SHAPE, CENTRE, SIGMA, Q, PHI, PSF_SIGMA, PSF_WEIGHT)
    model = np.tensordot(FLUX, comps, axes=1)
    err = np.full(SHAPE, model.max() / 100)
    img = model + SKY + np.random.default_rng(1).normal(0, 1, SHAPE) * err
    return img, err, np.zeros(SHAPE, bool)


@pytest.fixture(scope="module")
def fits(case):
    img, err, mask = case
    out = {}
    for sky in ("none", "flat"):
        data = img - SKY if sky == "none" else img
        # the same estimator: pegleg's sky prior is its own addition, imcascade has none
        peg = fit_multigauss(data, err, mask, PSF_SIGMA, PSF_WEIGHT, sigma=SIGMA, sky_model=sky, sky_prior=False)
        imc = fit_band_imcascade(data, err, mask, PSF_SIGMA, PSF_WEIGHT, SIGMA, sky_model=sky)
        out[sky] = peg, imc
    return out


@pytest.mark.parametrize("sky", ["none", "flat"])
def test_pegleg_and_imcascade_agree(fits, sky):
    peg, imc = fits[sky]
    assert isinstance(imc, MultiGaussFit) and imc.success
    assert imc.flux_total == pytest.approx(peg.flux_total, rel=0.01)
    assert imc.radius() == pytest.approx(peg.radius(), rel=0.02)
    assert np.hypot(imc.centre[0] - peg.centre[0], imc.centre[1] - peg.centre[1]) < 0.05
    assert abs(imc.q - peg.q) < 0.02
    dphi = (imc.phi - peg.phi + np.pi / 2) % np.pi - np.pi / 2
    assert abs(dphi) < np.deg2rad(2)
    # and both recover the truth within the noise
    truth = MultiGaussFit(sigma=SIGMA, flux=FLUX, centre=CENTRE, q=Q, phi=PHI, sky=np.zeros(0), sky_model="none",
                          chi2=0.0, ndof=1)
    assert imc.flux_total == pytest.approx(truth.flux_total, rel=0.03)
    assert imc.radius() == pytest.approx(truth.radius(), rel=0.03)
    assert abs(imc.phi - PHI) < np.deg2rad(3)
    if sky == "flat":
        assert imc.sky[0] == pytest.approx(peg.sky[0], abs=0.1 * SKY)


@pytest.mark.parametrize("phi_deg", [0.0, 30.0, 75.0, 120.0, 160.0])
def test_angle_and_centre_conventions(phi_deg):
    """imcascade's model at the mapped parameters is pegleg's rendering (no fit involved)."""
    from imcascade.fitter import Fitter

    sig = np.array([3.0])
    phi = np.deg2rad(phi_deg)
    ref = 100 * component_images(SHAPE, CENTRE, sig, 0.5, phi)[0]
    t = imcascade_angle(phi)
    assert imcascade_angle(t) == pytest.approx(np.mod(phi, np.pi))
    # invert imcascade_centre: it is a translation for fixed t
    dy, dx = imcascade_centre(0.0, 0.0, t)
    fitter = Fitter(ref.copy(), sig, None, None, weight=np.ones(SHAPE), sky_model=False, log_weight_scale=False,
                    verbose=False)
    model = fitter.make_model(np.array([CENTRE[0] - dy, CENTRE[1] - dx, 0.5, t, 100.0]))
    assert np.abs(model - ref).max() < 0.01 * ref.max()


def test_big_endian_nan_inputs_untouched(case, fits):
    img, err, mask = case
    img_be = img.astype(">f4")
    err_be = err.astype(">f4")
    bad = np.zeros(SHAPE, bool)
    bad[5:8, 30:34] = True
    bad[40, 2] = True
    img_be[bad] = np.nan
    err_be[40, 3] = np.nan  # NaN error alone must be masked too
    msk = bad.copy()
    copies = img_be.copy(), err_be.copy(), msk.copy()
    root = logging.getLogger()
    handlers = list(root.handlers)
    fit = fit_band_imcascade(img_be, err_be, msk, PSF_SIGMA, PSF_WEIGHT, SIGMA, sky_model="flat")
    np.testing.assert_array_equal(img_be, copies[0])  # NaNs still there, values untouched
    np.testing.assert_array_equal(err_be, copies[1])
    np.testing.assert_array_equal(msk, copies[2])
    assert img_be.dtype == np.dtype(">f4")
    assert list(root.handlers) == handlers  # imcascade's basicConfig undone
    assert np.isfinite(fit.flux_total) and np.all(np.isfinite(fit.flux))
    assert fit.flux_total == pytest.approx(fits["flat"][0].flux_total, rel=0.01)
    assert fit.ndof < fits["flat"][1].ndof


def test_errors(case, monkeypatch):
    img, err, mask = case
    with pytest.raises(FitError, match="sky_model"):
        fit_band_imcascade(img, err, mask, PSF_SIGMA, PSF_WEIGHT, SIGMA, sky_model="tilted")
    with pytest.raises(FitError, match="usable pixels"):
        fit_band_imcascade(img, err, np.ones(SHAPE, bool), PSF_SIGMA, PSF_WEIGHT, SIGMA)
    monkeypatch.setitem(sys.modules, "imcascade.fitter", None)
    with pytest.raises(FitError, match="pip install imcascade"):
        fit_band_imcascade(img, err, mask, PSF_SIGMA, PSF_WEIGHT, SIGMA)
