"""Analytic PSF models (pixel-integrated, centred, normalised) and FWHM measurement."""

import math

import numpy as np
import pytest

from pegleg import PSFError, SchemaError, schema
from pegleg.psf.models import (
    PUBLISHED_FWHM,
    airy_psf,
    gaussian_psf,
    jwst_like_psf,
    measure_fwhm,
    moffat_psf,
)

RAD_TO_ARCSEC = 180 / math.pi * 3600


def _models():
    return {
        "gaussian": gaussian_psf(0.1, 0.03, 25),
        "moffat": moffat_psf(0.1, 3.0, 0.03, 31),
        "airy": airy_psf(2.0, 6.5, 0.03, 31, obscuration=0.11, jitter_fwhm=0.01),
        "jwst": jwst_like_psf("F200W"),
    }


@pytest.mark.parametrize("name", ["gaussian", "moffat", "airy", "jwst"])
def test_models_are_normalised_centred_odd(name):
    p = _models()[name]
    assert p.ndim == 2 and p.shape[0] % 2 == 1 and p.shape == p.shape[::-1]
    assert abs(p.sum() - 1) < 1e-12 and np.all(p >= 0)
    c = p.shape[0] // 2
    assert np.unravel_index(np.argmax(p), p.shape) == (c, c)
    yy, xx = np.indices(p.shape)
    assert abs((p * yy).sum() - c) < 1e-9 and abs((p * xx).sum() - c) < 1e-9
    schema.check_psf_array(p, name)  # accepted by the data model


@pytest.mark.parametrize("fwhm_px", [1.0, 2.0, 3.0, 5.0, 10.0])
def test_gaussian_fwhm_measured_within_2_percent(fwhm_px):
    ps = 0.03
    p = gaussian_psf(fwhm_px * ps, ps, 61)
    assert measure_fwhm(p, ps) == pytest.approx(fwhm_px * ps, rel=0.02)
    assert measure_fwhm(p) == pytest.approx(fwhm_px, rel=0.02)  # pixels by default
    if fwhm_px >= 2:
        assert measure_fwhm(p, method="profile") == pytest.approx(fwhm_px, rel=0.02)


def test_gaussian_is_exact_pixel_integral():
    # fwhm 1 px: pixel integral of the central pixel = erf(1/(2 sqrt2 sigma))^2
    sigma = 1.0 / (2 * math.sqrt(2 * math.log(2)))
    expect = math.erf(0.5 / (math.sqrt(2) * sigma)) ** 2
    p = gaussian_psf(1.0, 1.0, 31)
    assert p[15, 15] == pytest.approx(expect, rel=1e-9)


def test_moffat_fwhm():
    p = moffat_psf(0.15, 2.5, 0.03, 61)
    assert measure_fwhm(p, 0.03) == pytest.approx(0.15, rel=0.02)
    with pytest.raises(SchemaError):
        moffat_psf(0.15, 1.0, 0.03, 61)


def test_airy_fwhm_matches_diffraction_theory():
    lam, dia = 2.0, 6.5
    lam_d = lam * 1e-6 / dia * RAD_TO_ARCSEC
    ps = lam_d / 10  # well sampled: 10 pixels per lambda/D
    p = airy_psf(lam, dia, ps, 81)
    assert measure_fwhm(p, ps) == pytest.approx(1.028 * lam_d, rel=0.03)
    # a central obscuration narrows the core; jitter broadens it
    assert measure_fwhm(airy_psf(lam, dia, ps, 81, obscuration=0.33), ps) < measure_fwhm(p, ps)
    assert measure_fwhm(airy_psf(lam, dia, ps, 81, jitter_fwhm=lam_d), ps) > 1.2 * measure_fwhm(p, ps)


def test_jwst_like_fwhm_grows_and_matches_published():
    bands = ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]
    fine = [measure_fwhm(jwst_like_psf(b, PUBLISHED_FWHM[b] / 6), PUBLISHED_FWHM[b] / 6) for b in bands]
    for b, f in zip(bands, fine):
        assert f == pytest.approx(PUBLISHED_FWHM[b], rel=0.15), b
    for b in ("F070W", "F770W"):
        assert measure_fwhm(jwst_like_psf(b, PUBLISHED_FWHM[b] / 6), PUBLISHED_FWHM[b] / 6) == pytest.approx(
            PUBLISHED_FWHM[b], rel=0.15)
    assert np.all(np.diff(fine) > 0)
    at_003 = [measure_fwhm(jwst_like_psf(b, 0.03), 0.03) for b in bands]
    assert np.all(np.diff(at_003) > 0)


def test_jwst_like_default_sizes_and_names():
    for b, ps in [("F070W", 0.03), ("F444W", 0.03), ("F444W", 0.01), ("F770W", 0.03), ("WFC3_F160W", 0.06)]:
        n = jwst_like_psf(b, ps).shape[0]
        assert n % 2 == 1 and 25 <= n <= 101
    assert jwst_like_psf("F444W", 0.03).shape[0] >= 8 * 0.145 / 0.03
    np.testing.assert_array_equal(jwst_like_psf("nircam-f200w"), jwst_like_psf("F200W"))
    p = jwst_like_psf("F200W")
    p[0, 0] = 5.0  # the cache hands out copies
    assert jwst_like_psf("F200W")[0, 0] < 1
    assert jwst_like_psf("F200W", size=15).shape == (15, 15)


def test_bad_inputs():
    with pytest.raises(PSFError):
        gaussian_psf(0.1, 0.03, 24)
    with pytest.raises(SchemaError):
        gaussian_psf(0.1, 0.0, 25)
    with pytest.raises(SchemaError):
        gaussian_psf(-0.1, 0.03, 25)
    with pytest.raises(SchemaError, match="unknown band"):
        jwst_like_psf("F999W")
    with pytest.raises(SchemaError):
        airy_psf(2.0, 6.5, 0.03, 25, obscuration=1.0)
    with pytest.raises(PSFError):
        measure_fwhm(np.zeros((5, 5)))
    with pytest.raises(PSFError):
        measure_fwhm(np.ones(5))
