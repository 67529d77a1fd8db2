"""Point-spread functions: analytic models, preparation of PSF images, Gaussian mixtures."""

from .mixture import GaussianMixturePSF, fit_psf_mixture
from .models import airy_psf, gaussian_psf, jwst_like_psf, measure_fwhm, moffat_psf
from .tools import (
    encircled_energy,
    pad_to_odd,
    prepare_psf,
    psf_centroid,
    recenter_psf,
    resample_psf,
    trim_psf,
)

__all__ = [
    "prepare_psf", "resample_psf", "recenter_psf", "trim_psf", "pad_to_odd", "psf_centroid",
    "encircled_energy",
    "gaussian_psf", "moffat_psf", "airy_psf", "jwst_like_psf", "measure_fwhm",
    "GaussianMixturePSF", "fit_psf_mixture",
]
