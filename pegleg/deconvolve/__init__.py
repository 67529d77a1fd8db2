"""PSF correction: multi-Gaussian (imcascade-model) fits, intrinsic model + residuals."""

from .fit import MultiGaussFit, fit_multigauss, sigma_grid
from .imcascade_backend import fit_band_imcascade
from .step import deconvolve, deconvolve_band, model_draws, model_error, qa, region_model_error

__all__ = ["deconvolve", "deconvolve_band", "qa", "model_error", "model_draws", "region_model_error", "fit_multigauss", "MultiGaussFit", "sigma_grid",
           "fit_band_imcascade"]
