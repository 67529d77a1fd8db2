"""pegleg's data model: the one place that names variables, dimensions, units and attributes.

A *stamp Dataset* holds multi-band postage stamps of one galaxy:

========================  =====================  ==========================================
variable                  dims                   meaning
========================  =====================  ==========================================
``image``                 band, y, x             flux per pixel (``units``, default ``uJy``)
``error``                 band, y, x             1-sigma uncertainty, same unit, > 0 where
                                                 not masked
``mask``                  band, y, x             bool, True = do not use this pixel
``psf``                   band, psf_y, psf_x     PSF at the image pixel scale, odd size,
                                                 centred, sum 1
``segmentation``          y, x                   optional int labels, 0 = sky
========================  =====================  ==========================================

Coordinates: ``band`` (str), ``wavelength`` (band; pivot wavelength, micron), ``y``,
``x`` (pixel index), ``psf_y``, ``psf_x`` (pixel offset from the PSF centre).
Attributes: ``pixel_scale`` (arcsec/pixel), ``resolution``, ``pegleg_history`` (JSON),
and optionally ``redshift``, ``wcs`` (FITS header text) and ``source_id``.

Everything else in pegleg imports these names from here.
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from . import filters as _filters
from ._version import __version__
from .exceptions import PeglegWarning, PSFError, SchemaError

__all__ = [
    "BAND", "Y", "X", "PSF_Y", "PSF_X",
    "IMAGE", "ERROR", "MASK", "PSF", "SEGMENTATION", "WAVELENGTH",
    "PIXEL_SCALE", "REDSHIFT", "WCS_ATTR", "RESOLUTION", "HISTORY", "SOURCE_ID",
    "VARIABLES", "RESOLUTIONS", "variable", "source_label", "source_region",
    "from_arrays", "validate", "fit_region", "check_flux_unit", "check_psf_array", "check_positive",
    "check_positive_int",
    "append_history", "read_history", "set_attrs", "wcs_to_text", "wcs_from_text",
    "image_units", "PSF_CENTRE_TOLERANCE", "PSF_SUM_TOLERANCE", "MAX_ABS_VALUE", "MIN_ERROR",
    "check_labels",
]

# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------
BAND, Y, X, PSF_Y, PSF_X = "band", "y", "x", "psf_y", "psf_x"
COMPONENT = "component"
BOOTSTRAP = "bootstrap"
QUANTILE = "quantile"
IMAGE, ERROR, MASK, PSF, SEGMENTATION = "image", "error", "mask", "psf", "segmentation"
WAVELENGTH = "wavelength"

PIXEL_SCALE = "pixel_scale"
REDSHIFT = "redshift"
WCS_ATTR = "wcs"
RESOLUTION = "resolution"
HISTORY = "pegleg_history"
SOURCE_ID = "source_id"

#: Allowed values (or prefixes, before ``:``) of the ``resolution`` attribute.
RESOLUTIONS = ("observed", "matched", "deconvolved")

#: The marker for "same unit as ``image``" in :data:`VARIABLES`.
IMAGE_UNIT = "<image>"

#: name -> (dims, units, long_name) of every variable pegleg writes.  ``units`` of
#: ``IMAGE_UNIT`` means "the flux unit of the ``image`` variable".
VARIABLES: dict[str, tuple[tuple[str, ...], str, str]] = {
    IMAGE: ((BAND, Y, X), IMAGE_UNIT, "flux per pixel"),
    ERROR: ((BAND, Y, X), IMAGE_UNIT, "1-sigma flux uncertainty per pixel"),
    MASK: ((BAND, Y, X), "1", "pixel not used (True = masked)"),
    PSF: ((BAND, PSF_Y, PSF_X), "1", "point-spread function at the image pixel scale (sum 1)"),
    SEGMENTATION: ((Y, X), "1", "segmentation labels (0 = sky)"),
}

# -- outputs of the deconvolve step -------------------------------------------
MODEL, MODEL_CONVOLVED, RESIDUAL, IMAGE_OBSERVED = "model", "model_convolved", "residual", "image_observed"
MODEL_ERROR, ERROR_OBSERVED, MGM_FLUX_DRAWS = "model_error", "error_observed", "mgm_flux_draws"
FLUX_TOTAL, FLUX_TOTAL_ERROR, R50, R80, SKY, SKY_NOISE = (
    "flux_total", "flux_total_error", "r50", "r80", "sky", "sky_noise")
CHI2_REDUCED, RESIDUAL_FRACTION = "chi2_reduced", "residual_fraction"
SEGMENT_FLUX_CHANGE, SEGMENT_PSF_SPILL = "segment_flux_change", "segment_psf_spill"
CENTRE_Y, CENTRE_X, AXIS_RATIO, POSITION_ANGLE = "centre_y", "centre_x", "axis_ratio", "position_angle"
FIT_OK, FIT_MESSAGE = "deconvolve_ok", "deconvolve_message"
MGM_SIGMA, MGM_FLUX = "mgm_sigma", "mgm_flux"
FLUX_TOTAL_POSTERIOR, R50_POSTERIOR = "flux_total_posterior", "r50_posterior"
MATCH_EE_ERROR, MATCH_METHOD = "match_ee_error", "match_method"
SHIFT_Y, SHIFT_X, SHIFT_Y_ERROR, SHIFT_X_ERROR = "shift_y", "shift_x", "shift_y_error", "shift_x_error"

VARIABLES.update({
    MODEL: ((BAND, Y, X), IMAGE_UNIT, "intrinsic (PSF-free) multi-Gaussian model, pixel-integrated"),
    MODEL_CONVOLVED: ((BAND, Y, X), IMAGE_UNIT, "multi-Gaussian model convolved with the PSF (no sky)"),
    RESIDUAL: ((BAND, Y, X), IMAGE_UNIT, "observed image - sky - convolved model (NaN where masked)"),
    IMAGE_OBSERVED: ((BAND, Y, X), IMAGE_UNIT, "flux per pixel before the deconvolve step"),
    MODEL_ERROR: ((BAND, Y, X), IMAGE_UNIT, "1-sigma uncertainty of the intrinsic model per pixel "
                                            "(parametric bootstrap at the fitted shape)"),
    ERROR_OBSERVED: ((BAND, Y, X), IMAGE_UNIT, "1-sigma uncertainty per pixel before the deconvolve step"),
    FLUX_TOTAL: ((BAND,), IMAGE_UNIT, "total flux of the intrinsic model"),
    FLUX_TOTAL_ERROR: ((BAND,), IMAGE_UNIT, "1-sigma uncertainty of the total model flux (bootstrap at the fitted shape)"),
    R50: ((BAND,), "arcsec", "semi-major axis enclosing 50% of the model flux"),
    R80: ((BAND,), "arcsec", "semi-major axis enclosing 80% of the model flux"),
    SKY: ((BAND,), IMAGE_UNIT, "fitted sky level per pixel at the stamp centre"),
    SKY_NOISE: ((BAND,), IMAGE_UNIT, "robust pixel-to-pixel rms of the sky pixels"),
    CHI2_REDUCED: ((BAND,), "1", "reduced chi-square of the fit"),
    RESIDUAL_FRACTION: ((BAND,), "1", "median |residual| / convolved model inside the source segment"),
    SEGMENT_FLUX_CHANGE: ((BAND,), "1", "flux conservation: PSF-corrected image convolved with the PSF, summed "
                                        "over the segment, / (observed - sky) summed there - 1"),
    SEGMENT_PSF_SPILL: ((BAND,), "1", "intrinsic / PSF-convolved model flux inside the segment - 1: the light "
                                      "the PSF scatters out of the segment, which the PSF-corrected image puts back"),
    CENTRE_Y: ((BAND,), "pixel", "model centre, row"),
    CENTRE_X: ((BAND,), "pixel", "model centre, column"),
    AXIS_RATIO: ((BAND,), "1", "model axis ratio (minor/major)"),
    POSITION_ANGLE: ((BAND,), "deg", "model major-axis angle, counter-clockwise from the +x (column) axis"),
    FIT_OK: ((BAND,), "1", "the fit of this band succeeded"),
    FIT_MESSAGE: ((BAND,), "1", "fit status or the error that stopped it"),
    MGM_SIGMA: ((BAND, COMPONENT), "pixel", "major-axis width of each Gaussian component"),
    MGM_FLUX: ((BAND, COMPONENT), IMAGE_UNIT, "flux of each Gaussian component"),
    MGM_FLUX_DRAWS: ((BAND, BOOTSTRAP, COMPONENT), IMAGE_UNIT,
                     "component fluxes of the parametric-bootstrap refits at the fitted shape"),
    FLUX_TOTAL_POSTERIOR: ((BAND, QUANTILE), IMAGE_UNIT, "posterior quantiles of the total flux at the fitted shape"),
    R50_POSTERIOR: ((BAND, QUANTILE), "arcsec", "posterior quantiles of r50 at the fitted shape"),
    MATCH_EE_ERROR: ((BAND,), "1", "max abs encircled-energy difference of the matched PSF and the target PSF "
                                   "at radii >= the target FWHM (fraction of total flux)"),
    MATCH_METHOD: ((BAND,), "1", "PSF-matching kernel: photutils function, window and regularisation"),
    SHIFT_Y: ((BAND,), "pixel", "row shift to apply to this band to align it with the reference band"),
    SHIFT_X: ((BAND,), "pixel", "column shift to apply to this band to align it with the reference band"),
    SHIFT_Y_ERROR: ((BAND,), "pixel", "1-sigma uncertainty of shift_y (noise bootstrap)"),
    SHIFT_X_ERROR: ((BAND,), "pixel", "1-sigma uncertainty of shift_x (noise bootstrap)"),
})

# -- outputs of the sedfit step -----------------------------------------------
PARAM, SAMPLE, INFO_QUANTITY = "param", "sample", "info_quantity"
LOG_STELLAR_MASS, LOG_SFR100, LOG_SFR10, LOG_SSFR = "log_stellar_mass", "log_sfr100", "log_sfr10", "log_ssfr"
AV, LOG_AGE_MW, LOG_METALLICITY, LOG_MASS_FORMED = "av", "log_age_mw", "log_metallicity", "log_mass_formed"
REDSHIFT_FIT = "redshift_fit"
STELLAR_MASS_DENSITY, SFR_DENSITY = "stellar_mass_density", "sfr_density"
CHI2, N_BANDS, SNR, ESS, INFORMATION_GAIN = "chi2", "n_bands", "snr", "ess", "information_gain"
SEDFIT_FLAG, MODEL_IMAGE, SED_RESIDUAL, POSTERIOR_SAMPLES = "sedfit_flag", "model_image", "sed_residual", "posterior_samples"
BIN_ID = "bin_id"
# -- the per-bin table of pegleg.binning.binned (a separate Dataset, dims (bin, band));
#    ``error`` and ``snr`` reuse the stamp names, so their (bin, ...) entries live in
#    BINNED_VARIABLES rather than VARIABLES
BIN = "bin"
BIN_FLUX, BIN_ERROR, BIN_N_PIXELS, BIN_Y, BIN_X, BIN_SNR = "flux", ERROR, "n_pixels", "bin_y", "bin_x", SNR
ERROR_SCALE = "error_scale"

#: (units, long_name) of the per-pixel physical quantities (the sedfit outputs carry a
#: ``quantile`` dimension; the synthetic truth has plain (y, x) maps of the same names).
PHYSICAL = {
    LOG_STELLAR_MASS: ("log10(Msun)", "surviving stellar mass in the pixel"),
    LOG_SFR100: ("log10(Msun/yr)", "star-formation rate averaged over the last 100 Myr"),
    LOG_SFR10: ("log10(Msun/yr)", "star-formation rate averaged over the last 10 Myr"),
    LOG_SSFR: ("log10(1/yr)", "specific star-formation rate (SFR100 / surviving mass)"),
    AV: ("mag", "V-band attenuation of the diffuse dust"),
    LOG_AGE_MW: ("log10(yr)", "mass-weighted stellar age"),
    LOG_METALLICITY: ("log10(Z/Zsun)", "stellar metallicity"),
    LOG_MASS_FORMED: ("log10(Msun)", "total stellar mass formed in the pixel"),
    REDSHIFT_FIT: ("1", "redshift (posterior of the photo-z prior)"),
    STELLAR_MASS_DENSITY: ("Msun/kpc2", "stellar-mass surface density"),
    SFR_DENSITY: ("Msun yr-1 kpc-2", "star-formation-rate surface density (SFR100)"),
}
VARIABLES.update({name: ((Y, X, QUANTILE), units, f"{long} (posterior quantiles)")
                  for name, (units, long) in PHYSICAL.items()})
VARIABLES.update({
    CHI2: ((Y, X), "1", "chi-square of the best posterior draw (valid bands)"),
    N_BANDS: ((Y, X), "1", "number of bands used in the SED fit"),
    SNR: ((Y, X), "1", "signal-to-noise ratio in the reference band of the SED fit"),
    ESS: ((Y, X), "1", "importance-sampling effective sample size"),
    INFORMATION_GAIN: ((Y, X, INFO_QUANTITY), "nat",
                       "Kullback-Leibler divergence of the posterior from the prior"),
    SEDFIT_FLAG: ((Y, X), "1", "SED-fit flags: 1 = no valid band, 2 = ESS below target, 4 = not fitted, "
                                 "8 = re-fitted by nested sampling (ESS was below target)"),
    MODEL_IMAGE: ((BAND, Y, X), IMAGE_UNIT, "posterior-mean SED model flux per pixel"),
    SED_RESIDUAL: ((BAND, Y, X), "1", "(image - model_image) / likelihood sigma"),
    POSTERIOR_SAMPLES: ((Y, X, SAMPLE, PARAM), "1",
                        "equally weighted posterior draws of the emulator parameters (units per param)"),
    BIN_ID: ((Y, X), "1", "spatial bin of each pixel (-1 = not binned)"),
    ERROR_SCALE: ((BAND,), "1", "factor applied to the error map (measured sky rms / median error)"),
})

#: name -> (dims, units, long_name) of the per-bin table (:func:`pegleg.binning.binned`).
BINNED_VARIABLES: dict[str, tuple[tuple[str, ...], str, str]] = {
    BIN_FLUX: ((BIN, BAND), IMAGE_UNIT, "summed flux of the bin's unmasked pixels"),
    BIN_ERROR: ((BIN, BAND), IMAGE_UNIT, "1-sigma uncertainty of the bin flux "
                                         "(quadrature sum of pixel errors x covariance factor)"),
    BIN_N_PIXELS: ((BIN,), "pixel", "number of pixels in the bin"),
    BIN_Y: ((BIN,), "pixel", "flux-weighted centroid of the bin, row"),
    BIN_X: ((BIN,), "pixel", "flux-weighted centroid of the bin, column"),
    BIN_SNR: ((BIN,), "1", "signal-to-noise ratio of the bin in the binning band(s)"),
}

# -- spectra (pegleg.spectrum): a 1-D spectrum (wavelength), an IFU cube (wavelength, y, x),
#    the line table of line_fluxes (line) and the result of compare (wavelength, degree,
#    window, line).  ``flux``, ``error`` and ``mask`` reuse the stamp names with spectral
#    dims, so every spectrum entry lives in SPECTRUM_VARIABLES rather than VARIABLES.
FLUX = "flux"
LINE, DEGREE, WINDOW = "line", "degree", "window"
SPECTRUM_KIND, SPECTRUM_SOURCE = "kind", "source"
#: Values of the ``kind`` attribute of a spectrum Dataset.
SPECTRUM_KINDS = ("1d", "cube")
LINE_REST_WAVELENGTH, LINE_COMPONENTS, LINE_BLEND = "line_rest_wavelength", "line_components", "line_blend"
LINE_FLUX, LINE_FLUX_ERROR = "line_flux", "line_flux_error"
LINE_FLUX_UJY_UM, LINE_FLUX_UJY_UM_ERROR = "line_flux_ujy_um", "line_flux_ujy_um_error"
LINE_SNR, LINE_CENTRE, LINE_CENTRE_ERROR = "line_snr", "line_centre", "line_centre_error"
LINE_CONTINUUM, LINE_EW_REST = "line_continuum", "line_ew_rest"
MODEL_FLUX, MODEL_FLUX_ERROR, MODEL_CALIBRATED = "model_flux", "model_flux_error", "model_calibrated"
CALIBRATION, CALIBRATION_ERROR = "calibration", "calibration_error"
CALIBRATION_COEFFICIENTS, CALIBRATION_COEFFICIENTS_ERROR = "calibration_coefficients", "calibration_coefficients_error"
FIT_PIXEL, SPECTRUM_RESIDUAL = "fit_pixel", "spectrum_residual"
CHI2_BEFORE, CHI2_AFTER = "chi2_before", "chi2_after"
CHI2_REDUCED_BEFORE, CHI2_REDUCED_AFTER, N_PIXELS_FIT = "chi2_reduced_before", "chi2_reduced_after", "n_pixels_fit"
WINDOW_START, WINDOW_END = "window_start", "window_end"
CONTINUUM_RESIDUAL, CONTINUUM_RESIDUAL_ERROR = "continuum_residual", "continuum_residual_error"
CONTINUUM_RESIDUAL_BEFORE = "continuum_residual_before"
D4000_OBSERVED, D4000_OBSERVED_ERROR = "d4000_observed", "d4000_observed_error"
D4000_MODEL, D4000_MODEL_ERROR = "d4000_model", "d4000_model_error"
LINE_FLUX_OBSERVED, LINE_FLUX_OBSERVED_ERROR = "line_flux_observed", "line_flux_observed_error"
LINE_FLUX_MODEL, LINE_FLUX_MODEL_ERROR = "line_flux_model", "line_flux_model_error"
LINE_RATIO_OBSERVED, LINE_RATIO_OBSERVED_ERROR = "line_ratio_observed", "line_ratio_observed_error"
LINE_RATIO_MODEL, LINE_RATIO_MODEL_ERROR = "line_ratio_model", "line_ratio_model_error"

_LINE_FLUX_CGS = "erg/(s cm2)"
#: name -> (dims, units, long_name) of every variable and coordinate of the spectrum Datasets.
SPECTRUM_VARIABLES: dict[str, tuple[tuple[str, ...], str, str]] = {
    WAVELENGTH: ((WAVELENGTH,), "um", "observed-frame wavelength"),
    FLUX: ((WAVELENGTH,), "uJy", "flux density"),
    ERROR: ((WAVELENGTH,), "uJy", "1-sigma flux-density uncertainty"),
    MASK: ((WAVELENGTH,), "1", "pixel not used (True = masked: non-finite or error <= 0)"),
    LINE_REST_WAVELENGTH: ((LINE,), "Angstrom", "vacuum rest wavelength (flux-weighted for blends, nominal ratios)"),
    LINE_COMPONENTS: ((LINE,), "1", "names of the lines in the entry, '+'-separated"),
    LINE_BLEND: ((LINE,), "1", "entry is a blend of lines closer than one resolution element"),
    LINE_FLUX: ((LINE,), _LINE_FLUX_CGS, "Gaussian line flux"),
    LINE_FLUX_ERROR: ((LINE,), _LINE_FLUX_CGS, "1-sigma uncertainty of line_flux"),
    LINE_FLUX_UJY_UM: ((LINE,), "uJy um", "Gaussian line flux as integral of F_nu over wavelength"),
    LINE_FLUX_UJY_UM_ERROR: ((LINE,), "uJy um", "1-sigma uncertainty of line_flux_ujy_um"),
    LINE_SNR: ((LINE,), "1", "line flux / its uncertainty"),
    LINE_CENTRE: ((LINE,), "um", "fitted observed centre (this line's window fitted alone)"),
    LINE_CENTRE_ERROR: ((LINE,), "um", "1-sigma uncertainty of line_centre"),
    LINE_CONTINUUM: ((LINE,), "uJy", "local linear continuum at the line centre"),
    LINE_EW_REST: ((LINE,), "Angstrom", "rest-frame equivalent width (emission positive)"),
    MODEL_FLUX: ((WAVELENGTH,), "uJy", "predicted flux density at the instrument resolution, on the observed grid"),
    MODEL_FLUX_ERROR: ((WAVELENGTH,), "uJy", "1-sigma model uncertainty ((q84 - q16) / 2; 0 without quantiles)"),
    MODEL_CALIBRATED: ((WAVELENGTH,), "uJy", "model_flux x calibration polynomial"),
    CALIBRATION: ((WAVELENGTH,), "1", "fitted multiplicative calibration polynomial"),
    CALIBRATION_ERROR: ((WAVELENGTH,), "1", "1-sigma uncertainty of the calibration polynomial"),
    CALIBRATION_COEFFICIENTS: ((DEGREE,), "1", "coefficient c_k of P(wavelength) = sum_k c_k (wavelength / um)^k"),
    CALIBRATION_COEFFICIENTS_ERROR: ((DEGREE,), "1", "1-sigma uncertainty of calibration_coefficients"),
    FIT_PIXEL: ((WAVELENGTH,), "1", "pixel used in the calibration fit (valid, modelled, away from lines)"),
    SPECTRUM_RESIDUAL: ((WAVELENGTH,), "1", "(flux - model_calibrated) / combined sigma (NaN where not valid)"),
    CHI2_BEFORE: ((), "1", "chi-square of the uncalibrated model over the valid pixels"),
    CHI2_AFTER: ((), "1", "chi-square of the calibrated model over the valid pixels"),
    CHI2_REDUCED_BEFORE: ((), "1", "chi2_before / n_pixels_fit"),
    CHI2_REDUCED_AFTER: ((), "1", "chi2_after / (n_pixels_fit - poly_order - 1)"),
    N_PIXELS_FIT: ((), "1", "number of valid pixels in the chi-square"),
    WINDOW_START: ((WINDOW,), "um", "start of the continuum window"),
    WINDOW_END: ((WINDOW,), "um", "end of the continuum window"),
    CONTINUUM_RESIDUAL: ((WINDOW,), "1", "median (flux - model_calibrated) / model_calibrated, lines excluded"),
    CONTINUUM_RESIDUAL_ERROR: ((WINDOW,), "1", "1-sigma uncertainty of continuum_residual (1.2533 x MAD scatter / sqrt(n))"),
    CONTINUUM_RESIDUAL_BEFORE: ((WINDOW,), "1", "median (flux - model_flux) / model_flux (before calibration), lines excluded"),
    D4000_OBSERVED: ((), "1", "D4000 narrow (Balogh+99) of the observed spectrum"),
    D4000_OBSERVED_ERROR: ((), "1", "1-sigma uncertainty of d4000_observed"),
    D4000_MODEL: ((), "1", "D4000 narrow of the calibrated model"),
    D4000_MODEL_ERROR: ((), "1", "model uncertainty of d4000_model (from the 16/84 quantile spectra)"),
    LINE_FLUX_OBSERVED: ((LINE,), _LINE_FLUX_CGS, "line flux measured on the observed spectrum"),
    LINE_FLUX_OBSERVED_ERROR: ((LINE,), _LINE_FLUX_CGS, "1-sigma uncertainty of line_flux_observed"),
    LINE_FLUX_MODEL: ((LINE,), _LINE_FLUX_CGS, "line flux measured the same way on the calibrated model"),
    LINE_FLUX_MODEL_ERROR: ((LINE,), _LINE_FLUX_CGS, "model uncertainty of line_flux_model (16/84 quantile spectra)"),
    LINE_RATIO_OBSERVED: ((LINE,), "1", "observed line flux / observed flux of the reference line"),
    LINE_RATIO_OBSERVED_ERROR: ((LINE,), "1", "1-sigma uncertainty of line_ratio_observed"),
    LINE_RATIO_MODEL: ((LINE,), "1", "model line flux / model flux of the reference line"),
    LINE_RATIO_MODEL_ERROR: ((LINE,), "1", "model uncertainty of line_ratio_model (16/84 quantile spectra)"),
}
#: The IFU cube variables (same names, dims (wavelength, y, x); flux per spaxel).
CUBE_VARIABLES: dict[str, tuple[tuple[str, ...], str, str]] = {
    FLUX: ((WAVELENGTH, Y, X), "uJy", "flux density per spaxel"),
    ERROR: ((WAVELENGTH, Y, X), "uJy", "1-sigma flux-density uncertainty per spaxel"),
    MASK: ((WAVELENGTH, Y, X), "1", "spaxel not used (True = masked: non-finite, error <= 0 or DQ DO_NOT_USE)"),
}

_COORD_ATTRS = {
    BAND: {"long_name": "filter name", "units": "1"},
    WAVELENGTH: {"long_name": "filter pivot wavelength", "units": "um"},
    Y: {"long_name": "pixel row index", "units": "pixel"},
    X: {"long_name": "pixel column index", "units": "pixel"},
    PSF_Y: {"long_name": "PSF row offset from centre", "units": "pixel"},
    PSF_X: {"long_name": "PSF column offset from centre", "units": "pixel"},
}

#: A PSF's centroid must lie within this many pixels of its central pixel.
PSF_CENTRE_TOLERANCE = 0.5
#: ``validate`` accepts PSF sums within this of 1.
PSF_SUM_TOLERANCE = 1e-6
#: Unmasked ``image`` and ``error`` values must lie within +-MAX_ABS_VALUE, and errors above
#: MIN_ERROR: squares, inverse variances and sums of them then stay far from float64
#: overflow/underflow (1e300 fluxes overflowed chi-square sums, 1e-300 errors gave infinite
#: weights).  Any real flux unit is well inside (1 nJy = 1e-32 erg/s/cm2/Hz).
MAX_ABS_VALUE = 1e60
MIN_ERROR = 1e-60


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def _native_float(a: Any, name: str, error: type[Exception] = SchemaError) -> np.ndarray:
    """A native-endian float64 copy of ``a`` (FITS data are big-endian); complex values raise
    ``error`` (casting would silently drop the imaginary part)."""
    if np.iscomplexobj(a):
        raise error(f"{name}: expected real numbers, got a complex array")
    try:
        arr = np.array(a, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise error(f"{name}: expected a numeric array, got {type(a).__name__} ({exc})") from None
    return arr


def check_labels(seg: Any, name: str = "segmentation") -> np.ndarray:
    """Integer labels (int32) from ``seg``; SchemaError naming ``name`` for non-numeric,
    non-integer, non-finite or out-of-int32-range values (never a silent cast)."""
    a = np.asarray(seg)
    if a.dtype.kind in "iub":
        vals = a
    elif a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise SchemaError(f"{name}: expected integer labels, got non-integer or non-finite values")
        vals = a
    else:
        raise SchemaError(f"{name}: expected integer labels, got dtype {a.dtype}")
    info = np.iinfo(np.int32)
    if vals.size and (vals.min() < info.min or vals.max() > info.max):
        raise SchemaError(f"{name}: labels must fit in int32 ({info.min}..{info.max}), got "
                          f"{vals.min()}..{vals.max()}")
    return vals.astype(np.int32)


def check_flux_unit(units: str) -> str:
    """Check that ``units`` is a flux-density unit astropy understands; return it normalised.

    ``"uJy"``, ``"nJy"``, ``"mJy"``, ``"Jy"`` and any unit convertible to Jy
    (e.g. ``"erg / (s cm2 Hz)"``) are accepted.  Surface brightness
    (``MJy/sr``) is not a per-pixel flux; :func:`pegleg.open_stamps` converts it.
    """
    import astropy.units as u

    if not isinstance(units, str) or not units.strip():
        raise SchemaError(f"units: expected a flux-density unit string such as 'uJy', got {units!r}")
    try:
        unit = u.Unit(units.strip())
    except (ValueError, TypeError):
        raise SchemaError(f"units: unknown unit {units!r}; expected a flux density such as 'uJy' or 'nJy'") from None
    if not unit.is_equivalent(u.Jy):
        raise SchemaError(
            f"units: {units!r} is not a flux density per pixel (not convertible to Jy); "
            "convert surface brightness (e.g. MJy/sr) with the pixel area first "
            "(pegleg.open_stamps does this for FITS mosaics)"
        )
    return units.strip()


def image_units(ds: xr.Dataset) -> str:
    """The flux unit of ``ds['image']``."""
    return ds[IMAGE].attrs.get("units", "uJy")


def variable(name: str, data: Any, ds: xr.Dataset | None = None, **extra: Any) -> tuple:
    """``(dims, data, attrs)`` for schema variable ``name``, ready for ``Dataset.assign``.

    Units marked "same as image" take ``ds['image']``'s unit.
    """
    dims, units, long_name = VARIABLES[name]
    if units == IMAGE_UNIT:
        units = image_units(ds) if ds is not None else "uJy"
    return dims, data, {"units": units, "long_name": long_name, **extra}


def source_label(seg: np.ndarray, centre: tuple[int, int] | None = None) -> int:
    """Segmentation label of the central source: the label at ``centre`` (default the
    stamp centre) or, if that pixel is sky, the label nearest to it; 0 if there is none."""
    seg = np.asarray(seg)
    cy, cx = centre if centre is not None else (seg.shape[0] // 2, seg.shape[1] // 2)
    if 0 <= cy < seg.shape[0] and 0 <= cx < seg.shape[1] and seg[cy, cx] > 0:
        return int(seg[cy, cx])
    iy, ix = np.nonzero(seg > 0)
    if iy.size == 0:
        return 0
    k = np.argmin((iy - cy) ** 2 + (ix - cx) ** 2)
    return int(seg[iy[k], ix[k]])


def source_region(ds: xr.Dataset) -> tuple[np.ndarray | None, np.ndarray]:
    """(own segment, neighbours) as bool (y, x) arrays from ``ds['segmentation']``.

    Without a segmentation map the segment is None and there are no neighbours.
    """
    shape = (ds.sizes[Y], ds.sizes[X])
    if SEGMENTATION not in ds:
        return None, np.zeros(shape, bool)
    seg = ds[SEGMENTATION].values
    own = source_label(seg)
    if own == 0:
        return None, np.zeros(shape, bool)
    return seg == own, (seg > 0) & (seg != own)


def fit_region(ds: xr.Dataset, region: Any = None) -> tuple[np.ndarray, str]:
    """(bool (y, x) region, description) of the pixels a step works on.

    ``region`` is None (the source's segment if ``segmentation`` exists, else every
    pixel), ``"segment"`` (requires a segmentation map), ``"all"`` or a boolean
    (y, x) array / DataArray.
    """
    shape = (ds.sizes[Y], ds.sizes[X])
    if region is None or (isinstance(region, str) and region == "segment"):
        own, _ = source_region(ds)
        if own is None:
            if isinstance(region, str):
                raise SchemaError("region='segment' needs a 'segmentation' variable with a central source")
            return np.ones(shape, bool), "all"
        return own, "segment"
    if isinstance(region, str):
        if region == "all":
            return np.ones(shape, bool), "all"
        raise SchemaError(f"region must be None, 'segment', 'all' or a boolean (y, x) array, got {region!r}")
    reg = np.asarray(region.values if isinstance(region, xr.DataArray) else region)
    if reg.shape != shape or reg.dtype != bool:
        raise SchemaError(f"region must be a boolean array of shape {shape}, got {reg.dtype} {reg.shape}")
    return reg, "given"


def set_attrs(da: xr.DataArray, units: str, long_name: str, **extra: Any) -> xr.DataArray:
    """Return ``da`` with ``units`` and ``long_name`` (and ``extra``) attributes set."""
    da = da.copy(deep=False)
    da.attrs = {**da.attrs, "units": units, "long_name": long_name, **extra}
    return da


def _jsonable(obj: Any) -> Any:
    """Best-effort conversion of step parameters to JSON-compatible values."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        if isinstance(obj, float) and not np.isfinite(obj):
            return repr(obj)
        return obj
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        if obj.size <= 16:
            return _jsonable(obj.tolist())
        return f"<array shape={obj.shape} dtype={obj.dtype}>"
    if isinstance(obj, (xr.DataArray, xr.Dataset)):
        return f"<{type(obj).__name__} dims={dict(obj.sizes)}>"
    return str(obj)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_history(ds: xr.Dataset) -> list[dict]:
    """The ``pegleg_history`` attribute as a list of step records (oldest first)."""
    text = ds.attrs.get(HISTORY)
    if text is None:
        return []
    try:
        hist = json.loads(text)
    except (TypeError, ValueError):
        raise SchemaError(f"attribute {HISTORY!r}: expected JSON text (a list of steps), got {str(text)[:80]!r}") from None
    if not isinstance(hist, list):
        raise SchemaError(f"attribute {HISTORY!r}: expected a JSON list of steps, got {type(hist).__name__}")
    return hist


def last_step(ds: xr.Dataset, step: str) -> dict | None:
    """The most recent history record of ``step`` (e.g. ``"sedfit"``), or None."""
    for record in reversed(read_history(ds)):
        if record.get("step") == step:
            return record
    return None


def append_history(ds: xr.Dataset, step: str, parameters: Mapping[str, Any] | None = None) -> xr.Dataset:
    """Return a shallow copy of ``ds`` whose history has one more step.

    Each record is ``{"step", "parameters", "pegleg_version", "time"}`` (time in UTC,
    ISO 8601).  Non-JSON parameters (arrays, objects) are summarised as text.
    """
    hist = read_history(ds)
    hist.append({
        "step": step,
        "parameters": _jsonable(dict(parameters or {})),
        "pegleg_version": __version__,
        "time": _now(),
    })
    out = ds.copy(deep=False)
    out.attrs = dict(ds.attrs)
    out.attrs[HISTORY] = json.dumps(hist)
    return out


def wcs_to_text(wcs: Any) -> str:
    """FITS header text of a WCS given as ``astropy.wcs.WCS``, ``fits.Header`` or header text."""
    from astropy.io import fits
    from astropy.wcs import WCS

    try:
        if isinstance(wcs, WCS):
            w = wcs
        elif isinstance(wcs, fits.Header):
            w = WCS(wcs, naxis=2)
        elif isinstance(wcs, str):
            w = WCS(fits.Header.fromstring(wcs, sep="\n" if "\n" in wcs else ""), naxis=2)
        else:
            raise TypeError(type(wcs).__name__)
        if w.naxis != 2 or not w.has_celestial:
            raise ValueError("not a 2-D celestial WCS")
        return w.to_header_string(relax=True)
    except Exception as exc:  # astropy raises many types for bad headers
        raise SchemaError(f"wcs: expected an astropy WCS, FITS header or header text with a 2-D celestial WCS ({exc})") from None


def wcs_from_text(text: str):
    """``astropy.wcs.WCS`` from header text stored in ``attrs['wcs']``."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from astropy.wcs import FITSFixedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)  # informational fixes of old cards
            return WCS(fits.Header.fromstring(text, sep="\n" if "\n" in text else ""), naxis=2)
    except Exception as exc:
        raise SchemaError(f"attribute 'wcs': not a readable FITS WCS header ({exc})") from None


# ---------------------------------------------------------------------------
# PSF checks
# ---------------------------------------------------------------------------
def _centroid_offset(p: np.ndarray) -> tuple[float, float]:
    w = np.clip(p, 0, None)
    w = w / w.max() if w.max() > 0 else w  # scale-free (PSF values near 1e308 overflowed w * index)
    tot = w.sum()
    c = (np.asarray(p.shape) - 1) / 2.0
    yy, xx = np.indices(p.shape)
    return float((w * yy).sum() / tot - c[0]), float((w * xx).sum() / tot - c[1])


def check_psf_array(psf: Any, band: str = "", *, normalise: bool = True,
                    centre_tolerance: float = PSF_CENTRE_TOLERANCE) -> np.ndarray:
    """Check one 2-D PSF image and return it as a (normalised) native float64 array.

    A usable PSF is 2-D, square or rectangular with odd sides, finite, has a positive
    sum, and its (non-negative part's) centroid lies within ``centre_tolerance``
    pixels of the central pixel.

    Raises
    ------
    PSFError
        Naming ``band`` and what is wrong.
    """
    what = f"psf for band {band!r}" if band else "psf"
    p = _native_float(psf, what, PSFError)
    if p.ndim != 2:
        raise PSFError(f"{what}: expected a 2-D image, got {p.ndim} dimensions")
    if p.shape[0] % 2 == 0 or p.shape[1] % 2 == 0:
        raise PSFError(f"{what}: expected odd sides so the PSF has a central pixel, got shape {p.shape}; "
                       "pegleg.psf.prepare_psf recentres and trims a PSF for you")
    if not np.all(np.isfinite(p)):
        raise PSFError(f"{what}: contains {int((~np.isfinite(p)).sum())} NaN/inf values")
    with np.errstate(over="ignore"):
        total = p.sum()
        positive = np.clip(p, 0, None).sum()
    if not (np.isfinite(total) and np.isfinite(positive)):
        raise PSFError(f"{what}: sum overflows (values up to {np.abs(p).max():g}); rescale the PSF image")
    if not total > 0 or not positive > 0:
        raise PSFError(f"{what}: sum is {total:g}; a PSF must have a positive total (is it all zero or negative?)")
    dy, dx = _centroid_offset(p)
    if np.hypot(dy, dx) > centre_tolerance:
        raise PSFError(f"{what}: centroid is ({dy:+.2f}, {dx:+.2f}) pixels from the central pixel "
                       f"(tolerance {centre_tolerance} px); recentre it (pegleg.psf.prepare_psf)")
    if normalise:
        p /= total
    return p


def _pad_to(p: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    py = (shape[0] - p.shape[0]) // 2
    px = (shape[1] - p.shape[1]) // 2
    return np.pad(p, ((py, shape[0] - p.shape[0] - py), (px, shape[1] - p.shape[1] - px)))


def _stack_psfs(psf: Any, bands: Sequence[str]) -> np.ndarray:
    """(band, psf_y, psf_x) array from an array, a single 2-D PSF or a mapping band -> PSF."""
    if isinstance(psf, xr.DataArray):
        if BAND in psf.dims:
            psf = {b: psf.sel({BAND: b}).values for b in bands}
        else:
            psf = psf.values
    if isinstance(psf, Mapping):
        missing = [b for b in bands if b not in psf]
        if missing:
            raise PSFError(f"psf: no PSF for band(s) {missing}; got PSFs for {list(psf)}")
        arrays = [check_psf_array(psf[b], b) for b in bands]
    else:
        if psf is None:
            raise PSFError("psf: a PSF is required for every band (an array (band, n, n), one (n, n) "
                           "PSF shared by all bands, or a mapping band -> PSF)")
        arr = np.asarray(psf)
        if arr.ndim == 2:
            arrays = [check_psf_array(arr, b) for b in bands]
        elif arr.ndim == 3:
            if arr.shape[0] != len(bands):
                raise PSFError(f"psf: has {arr.shape[0]} PSFs for {len(bands)} bands {list(bands)}")
            arrays = [check_psf_array(arr[i], b) for i, b in enumerate(bands)]
        else:
            raise PSFError(f"psf: expected dims (band, psf_y, psf_x) or (psf_y, psf_x), got {arr.ndim} dimensions")
    shape = (max(a.shape[0] for a in arrays), max(a.shape[1] for a in arrays))
    return np.stack([_pad_to(a, shape) for a in arrays])


# ---------------------------------------------------------------------------
# construction
# ---------------------------------------------------------------------------
def _check_bands(bands: Any, n: int | None = None) -> list[str]:
    if isinstance(bands, str):
        bands = [bands]
    try:
        blist = [str(b).strip() for b in bands]
    except TypeError:
        raise SchemaError(f"bands: expected a sequence of band names, got {bands!r}") from None
    if not blist or any(not b for b in blist):
        raise SchemaError(f"bands: expected non-empty band names, got {list(bands)!r}")
    for b in blist:
        _check_text(b, "bands")
    dup = sorted({b for b in blist if blist.count(b) > 1})
    if dup:
        raise SchemaError(f"bands: duplicated band name(s) {dup}; each band must appear once")
    if n is not None and len(blist) != n:
        raise SchemaError(f"bands: {len(blist)} names {blist} for {n} image planes")
    return blist


def _check_text(text: str, name: str) -> str:
    """``text`` if it can be stored (UTF-8 encodable: no lone surrogates), else SchemaError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise SchemaError(f"{name}: {text!r} is not valid Unicode text (cannot be encoded as UTF-8)") from None
    return text


def check_positive(value: Any, name: str, *, error: type[Exception] = SchemaError, what: str = "number") -> float:
    """``float(value)`` if it is a finite positive number, else ``error`` naming ``name``.

    The one validator of positive scalars (pixel scales, FWHMs, wavelengths, ...);
    ``what`` describes the expected quantity in the message (e.g. "pixel scale (arcsec/pixel)").
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise error(f"{name}: expected a {what}, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise error(f"{name}: expected a finite positive {what}, got {value!r}")
    return v


def check_positive_int(value: Any, name: str, *, error: type[Exception] = SchemaError) -> int:
    """``int(value)`` if it is an integer >= 1 (Python or numpy; not a bool), else ``error``
    naming ``name``.  The one validator of counts and sizes (block sizes, rounds, annuli, ...)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise error(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _check_pixel_scale(pixel_scale: Any) -> float:
    try:
        arr = np.atleast_1d(np.asarray(pixel_scale, dtype=float)) if np.ndim(pixel_scale) else None
    except (TypeError, ValueError):
        raise SchemaError(f"pixel_scale: expected a number (arcsec/pixel), got {pixel_scale!r}") from None
    if arr is not None:
        if arr.size == 0:
            raise SchemaError("pixel_scale: expected a number (arcsec/pixel), got an empty sequence")
        if not np.all(np.isfinite(arr)) or np.ptp(arr) > 1e-6 * np.nanmax(np.abs(arr)):
            raise SchemaError(f"pixel_scale: bands have different pixel scales {arr.tolist()}; "
                              "resample them to one grid first")
        pixel_scale = arr[0]
    return check_positive(pixel_scale, "pixel_scale", what="number (arcsec/pixel)")


def _check_redshift(redshift: Any) -> float | None:
    if redshift is None:
        return None
    try:
        z = float(redshift)
    except (TypeError, ValueError):
        raise SchemaError(f"redshift: expected a number, got {redshift!r}") from None
    if not np.isfinite(z) or z < 0:
        raise SchemaError(f"redshift: expected a finite number >= 0, got {redshift!r}")
    return z


def from_arrays(image: Any, error: Any, psf: Any, bands: Sequence[str] | str, pixel_scale: float, *,
                mask: Any = None, wcs: Any = None, redshift: float | None = None,
                units: str = "uJy", segmentation: Any = None,
                wavelength: Sequence[float] | None = None, source_id: str | None = None,
                resolution: str = "observed") -> xr.Dataset:
    """Build a stamp Dataset from numpy arrays.

    Parameters
    ----------
    image, error : array_like, (band, y, x) or (y, x) for one band
        Flux per pixel and its 1-sigma uncertainty, in ``units``.
    psf : array_like (band, n, n) or (n, n), or mapping band -> (n, n)
        PSF of each band at the image pixel scale, odd-sized and centred.  PSFs of
        different sizes are zero-padded to a common size; each is normalised to sum 1.
    bands : sequence of str
        Filter names, one per image plane (e.g. ``"F444W"``).
    pixel_scale : float
        Pixel scale in arcsec/pixel (one number: all bands share one grid).
    mask : array_like of bool, optional
        True where a pixel must not be used.  Pixels whose image or error is NaN/inf
        (or beyond +-:data:`MAX_ABS_VALUE`) are added to the mask with a
        :class:`~pegleg.PeglegWarning`.
    wcs : astropy.wcs.WCS, astropy.io.fits.Header or str, optional
        Celestial WCS of the pixel grid; stored as header text in ``attrs['wcs']``.
    redshift : float, optional
        Source redshift (stored in ``attrs['redshift']``).
    units : str
        Flux-density unit of ``image`` and ``error`` (default ``"uJy"``).
    segmentation : array_like of int (y, x), optional
        Segmentation labels (0 = sky).
    wavelength : sequence of float, optional
        Pivot wavelengths in micron; needed only for filters pegleg does not know.
    source_id : str, optional
        Identifier stored in ``attrs['source_id']``.
    resolution : str
        ``"observed"`` (default) or ``"matched:<BAND>"`` when the images were already
        PSF-matched to one band.

    Returns
    -------
    xarray.Dataset
        A valid stamp Dataset (see :mod:`pegleg.schema`).

    Raises
    ------
    SchemaError
        For wrong dimensions, shape mismatches, complex or non-numeric arrays,
        non-positive (or below :data:`MIN_ERROR`) errors on unmasked pixels, bad units,
        duplicated bands, bad pixel scale, segmentation labels that are not integers.
    PSFError
        For NaN, all-zero, even-sized or off-centre PSFs or missing PSF bands.
    """
    img = _native_float(image, "image")
    err = _native_float(error, "error")
    if img.ndim == 2:
        img = img[None]
    if err.ndim == 2:
        err = err[None]
    if img.ndim != 3:
        raise SchemaError(f"image: expected dims (band, y, x) or (y, x), got {img.ndim} dimensions")
    if err.shape != img.shape:
        raise SchemaError(f"error: shape {err.shape} differs from image shape {img.shape}")
    if img.shape[1] < 3 or img.shape[2] < 3:
        raise SchemaError(f"image: stamp of shape {img.shape[1:]} is too small (at least 3x3 pixels)")
    blist = _check_bands(bands, img.shape[0])
    ps = _check_pixel_scale(pixel_scale)
    z = _check_redshift(redshift)
    units = check_flux_unit(units)

    if mask is None:
        msk = np.zeros(img.shape, dtype=bool)
    else:
        msk = np.array(mask, dtype=bool)
        if msk.ndim == 2 and msk.shape == img.shape[1:]:
            msk = np.broadcast_to(msk, img.shape).copy()
        if msk.shape != img.shape:
            raise SchemaError(f"mask: shape {msk.shape} differs from image shape {img.shape}")

    with np.errstate(invalid="ignore"):
        bad = ~msk & ~(np.isfinite(img) & np.isfinite(err)
                       & (np.abs(img) <= MAX_ABS_VALUE) & (np.abs(err) <= MAX_ABS_VALUE))
    if bad.any():
        per_band = {b: int(n) for b, n in zip(blist, bad.sum(axis=(1, 2))) if n}
        warnings.warn(f"image/error: {int(bad.sum())} unmasked NaN/inf pixel(s) (or |value| > {MAX_ABS_VALUE:g}) "
                      f"were masked {per_band}", PeglegWarning, stacklevel=2)
        msk = msk | bad
    nonpos = ~msk & (err <= 0)
    if nonpos.any():
        per_band = {b: int(n) for b, n in zip(blist, nonpos.sum(axis=(1, 2))) if n}
        raise SchemaError(f"error: {int(nonpos.sum())} unmasked pixel(s) have error <= 0 {per_band}; "
                          "errors must be > 0 where mask is False (mask those pixels)")
    tiny = ~msk & (err < MIN_ERROR)
    if tiny.any():
        per_band = {b: int(n) for b, n in zip(blist, tiny.sum(axis=(1, 2))) if n}
        raise SchemaError(f"error: {int(tiny.sum())} unmasked pixel(s) have error < {MIN_ERROR:g} {per_band}; "
                          "rescale image and error to a larger flux unit (e.g. uJy)")

    psf_arr = _stack_psfs(psf, blist)

    if wavelength is None:
        wl = np.array([_filters.pivot_wavelength(b) for b in blist])
    else:
        try:
            wl = np.asarray(wavelength, dtype=float).ravel()
        except (TypeError, ValueError):
            raise SchemaError(f"wavelength: expected {len(blist)} positive finite values (micron), "
                              f"got {wavelength!r}") from None
        if wl.shape != (len(blist),) or not np.all(np.isfinite(wl)) or np.any(wl <= 0):
            raise SchemaError(f"wavelength: expected {len(blist)} positive finite values (micron), got {wavelength!r}")

    ny, nx = img.shape[1:]
    npy, npx = psf_arr.shape[1:]
    coords = {
        BAND: (BAND, np.array(blist, dtype=object), _COORD_ATTRS[BAND]),
        WAVELENGTH: (BAND, wl, _COORD_ATTRS[WAVELENGTH]),
        Y: (Y, np.arange(ny), _COORD_ATTRS[Y]),
        X: (X, np.arange(nx), _COORD_ATTRS[X]),
        PSF_Y: (PSF_Y, np.arange(npy) - npy // 2, _COORD_ATTRS[PSF_Y]),
        PSF_X: (PSF_X, np.arange(npx) - npx // 2, _COORD_ATTRS[PSF_X]),
    }
    data_vars = {
        IMAGE: ((BAND, Y, X), img, {"units": units, "long_name": VARIABLES[IMAGE][2]}),
        ERROR: ((BAND, Y, X), err, {"units": units, "long_name": VARIABLES[ERROR][2]}),
        MASK: ((BAND, Y, X), msk, {"units": "1", "long_name": VARIABLES[MASK][2]}),
        PSF: ((BAND, PSF_Y, PSF_X), psf_arr, {"units": "1", "long_name": VARIABLES[PSF][2]}),
    }
    if segmentation is not None:
        seg = np.asarray(segmentation)
        if seg.shape != (ny, nx):
            raise SchemaError(f"segmentation: shape {seg.shape} differs from the image grid {(ny, nx)}")
        data_vars[SEGMENTATION] = ((Y, X), check_labels(seg), {"units": "1", "long_name": VARIABLES[SEGMENTATION][2]})

    attrs: dict[str, Any] = {PIXEL_SCALE: ps, RESOLUTION: _check_resolution(resolution, blist)}
    if z is not None:
        attrs[REDSHIFT] = z
    if wcs is not None:
        attrs[WCS_ATTR] = wcs_to_text(wcs)
    if source_id is not None:
        attrs[SOURCE_ID] = _check_text(str(source_id), "source_id")
    attrs[HISTORY] = "[]"
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    ds = append_history(ds, "from_arrays", {
        "bands": blist, "shape": [ny, nx], "pixel_scale": ps, "units": units,
        "redshift": z, "resolution": attrs[RESOLUTION], "psf_shape": [npy, npx],
    })
    return ds


def _check_resolution(resolution: Any, bands: Sequence[str] | None = None) -> str:
    if not isinstance(resolution, str):
        raise SchemaError(f"attribute 'resolution': expected a string, got {resolution!r}")
    kind, _, target = resolution.partition(":")
    if kind not in RESOLUTIONS or (kind == "observed" and target) or (kind == "matched" and not target):
        raise SchemaError(f"attribute 'resolution': expected 'observed', 'matched:<BAND>', 'deconvolved' "
                          f"or 'deconvolved:<BAND>', got {resolution!r}")
    return resolution


# ---------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------
def _row_blocks(ds: xr.Dataset, max_values: int = 1 << 20):
    """(image, error, mask) numpy arrays, all rows at once for in-memory Datasets, blocks
    of rows of at most ``max_values`` values for lazy (dask-backed) ones."""
    img, err, m = ds[IMAGE], ds[ERROR], ds[MASK]
    ny = ds.sizes[Y]
    lazy = any(v.chunks is not None for v in (img, err, m))
    rows = max(1, max_values // max(1, img.size // max(ny, 1))) if lazy else max(ny, 1)
    for y0 in range(0, max(ny, 1), rows):
        sl = {Y: slice(y0, y0 + rows)}
        yield img[sl].values, err[sl].values, m[sl].values


def validate(ds: xr.Dataset) -> xr.Dataset:
    """Check that ``ds`` is a valid stamp Dataset and return it unchanged.

    Checks dims of every schema variable, ``units`` and ``long_name`` on every data
    variable, a bool ``mask``, finite data within +-:data:`MAX_ABS_VALUE` and
    ``error >=`` :data:`MIN_ERROR` on unmasked pixels, one
    normalised, odd-sized, centred PSF per band, unique bands with a ``wavelength``,
    a finite positive ``pixel_scale``, and readable ``resolution``, ``wcs`` and
    ``pegleg_history`` attributes.

    Raises
    ------
    SchemaError, PSFError
        Naming the first problem found.
    """
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"expected an xarray.Dataset, got {type(ds).__name__}")
    for name in (IMAGE, ERROR, MASK, PSF):
        if name not in ds:
            raise SchemaError(f"variable {name!r} is missing; a stamp Dataset needs image, error, mask and psf")
    for name, (dims, _, _) in VARIABLES.items():
        if name in ds and ds[name].dims != dims:
            raise SchemaError(f"variable {name!r}: expected dims {dims}, got {ds[name].dims}")
    for name, da in ds.data_vars.items():
        missing = [a for a in ("units", "long_name") if a not in da.attrs]
        if missing:
            raise SchemaError(f"variable {name!r}: missing attribute(s) {missing}")
    bands = [str(b) for b in ds[BAND].values]
    _check_bands(bands)
    if WAVELENGTH not in ds.coords or ds[WAVELENGTH].dims != (BAND,):
        raise SchemaError("coordinate 'wavelength' (band) is missing")
    if not np.all(np.isfinite(ds[WAVELENGTH].values)) or np.any(ds[WAVELENGTH].values <= 0):
        raise SchemaError("coordinate 'wavelength': expected positive finite values (micron)")
    _check_pixel_scale(ds.attrs.get(PIXEL_SCALE))
    check_flux_unit(image_units(ds))
    if ds[ERROR].attrs.get("units") != image_units(ds):
        raise SchemaError(f"variable 'error': units {ds[ERROR].attrs.get('units')!r} differ from image units "
                          f"{image_units(ds)!r}")
    if ds[MASK].dtype != bool:
        raise SchemaError(f"variable 'mask': expected dtype bool, got {ds[MASK].dtype}")
    for img, err, m in _row_blocks(ds):
        ok = ~m
        if not np.all(np.isfinite(img[ok])) or not np.all(np.isfinite(err[ok])):
            raise SchemaError("variables 'image'/'error': NaN or inf on unmasked pixels (mask them)")
        if np.any(err[ok] <= 0):
            raise SchemaError("variable 'error': values <= 0 on unmasked pixels (mask them)")
        if (np.any(np.abs(img[ok]) > MAX_ABS_VALUE) or np.any(err[ok] > MAX_ABS_VALUE)
                or np.any(err[ok] < MIN_ERROR)):
            raise SchemaError(f"variables 'image'/'error': unmasked values outside |image| <= {MAX_ABS_VALUE:g}, "
                              f"{MIN_ERROR:g} <= error <= {MAX_ABS_VALUE:g}; rescale them (another flux unit) "
                              "or mask those pixels")
    psf = ds[PSF].values
    for i, b in enumerate(bands):
        check_psf_array(psf[i], b, normalise=False)
        s = psf[i].sum()
        if abs(s - 1) > PSF_SUM_TOLERANCE:
            raise PSFError(f"psf for band {b!r}: sums to {s:.8f}, expected 1 (within {PSF_SUM_TOLERANCE})")
    if SEGMENTATION in ds and not np.issubdtype(ds[SEGMENTATION].dtype, np.integer):
        raise SchemaError(f"variable 'segmentation': expected integer labels, got {ds[SEGMENTATION].dtype}")
    _check_resolution(ds.attrs.get(RESOLUTION, "observed"))
    if REDSHIFT in ds.attrs:
        _check_redshift(ds.attrs[REDSHIFT])
    if WCS_ATTR in ds.attrs:
        wcs_from_text(ds.attrs[WCS_ATTR])
    read_history(ds)
    return ds
