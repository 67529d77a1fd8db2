"""Point-spread functions: analytic models, preparation of PSF images, Gaussian mixtures."""

from .mixture import GaussianMixturePSF, fit_psf_mixture
from .models import airy_psf, gaussian_psf, jwst_like_psf, measure_fwhm, moffat_psf

__all__ = [
    "gaussian_psf", "moffat_psf", "airy_psf", "jwst_like_psf", "measure_fwhm",
    "GaussianMixturePSF", "fit_psf_mixture",
]
