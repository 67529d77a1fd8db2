"""Calibrate error maps against the measured pixel noise.

Error maps delivered with mosaics often do not describe the per-pixel scatter of the
stamp that is fitted: PSF matching smooths the images (the pixel-to-pixel rms drops,
neighbouring pixels become correlated) and drizzled or weight-map-derived errors can be
off by large factors.  Measured on the shared JOF stamps after PSF matching to F444W
and deconvolution, the robust sky rms was 0.02-0.03x the median ``ERR`` in the HST
bands, 0.2-0.3x in the NIRCam short-wavelength bands and 0.5-1.0x in the long-wavelength
bands.  A per-pixel SED likelihood needs the per-pixel noise, so
:func:`calibrate_errors` rescales each band's ``error`` by

    factor = robust rms of the sky pixels / median error over the same pixels

(sky = unmasked, outside every segment grown by 4 pixels, the deconvolution residual when present, else
the image minus its median; robust rms = 1.4826 x median absolute deviation after 3-sigma
clipping) and records the factor in ``error_scale`` (band; calibrating again multiplies it, so
it stays the total factor applied to the input errors).  Sums of pixels (bins,
apertures) of smoothed images have *larger* errors than the quadrature sum of these
per-pixel errors: see the correlated-noise note of ``ds.pegleg.bin``.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from . import schema as S
from .exceptions import SchemaError

__all__ = ["calibrate_errors", "ERROR_SCALE", "sky_rms"]

ERROR_SCALE = S.ERROR_SCALE


def sky_rms(values: np.ndarray) -> float:
    """Robust rms (1.4826 MAD after 3-sigma clipping) of finite ``values``."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 10:
        return float("nan")
    for _ in range(5):
        med = np.median(v)
        mad = 1.4826 * np.median(np.abs(v - med))
        keep = np.abs(v - med) < 3 * mad
        if keep.all() or keep.sum() < 10:
            break
        v = v[keep]
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def calibrate_errors(ds: xr.Dataset, *, sky=None, min_pixels: int = 50) -> xr.Dataset:
    """Return a copy of ``ds`` whose ``error`` matches the measured sky rms (module docstring).

    ``sky`` is an optional boolean (y, x) map of sky pixels (default: outside every
    segment grown by 4 pixels, or -- without a segmentation map -- away from pixels
    above 2 sigma in any band, grown by 3 pixels).  Bands with fewer than ``min_pixels``
    usable sky pixels keep factor 1 (a warning names them).
    """
    import warnings

    from .exceptions import PeglegWarning

    S.validate(ds)
    S.check_positive_int(min_pixels, "min_pixels")
    ny, nx = ds.sizes[S.Y], ds.sizes[S.X]
    if sky is None:
        from scipy import ndimage

        if S.SEGMENTATION in ds:
            # keep clear of the segments' faint outskirts
            sky = ~ndimage.binary_dilation(ds[S.SEGMENTATION].values > 0, iterations=4)
        else:
            img = ds[S.IMAGE].values
            err = ds[S.ERROR].values
            ok = ~ds[S.MASK].values & np.isfinite(img) & np.isfinite(err) & (err > 0)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                # masked pixels never count as detections (whatever fill value they hold)
                det = np.where(ok, img / np.where(ok, err, 1.0), -np.inf).max(axis=0) > 2
            sky = ~ndimage.binary_dilation(det, iterations=3)
    sky = np.asarray(sky.values if isinstance(sky, xr.DataArray) else sky)
    if sky.shape != (ny, nx) or sky.dtype != bool:
        raise SchemaError(f"sky must be a boolean (y, x) array of shape {(ny, nx)}, got {sky.dtype} {sky.shape}")
    source = ds[S.RESIDUAL].values if S.RESIDUAL in ds else None
    factors = np.ones(ds.sizes[S.BAND])
    few = []
    for i, band in enumerate(ds[S.BAND].values):
        use = sky & ~ds[S.MASK].values[i] & np.isfinite(ds[S.ERROR].values[i]) & (ds[S.ERROR].values[i] > 0)
        vals = (source[i] if source is not None else ds[S.IMAGE].values[i] - np.nanmedian(ds[S.IMAGE].values[i][use]))[use] \
            if use.any() else np.array([])
        if np.isfinite(vals).sum() < min_pixels:
            few.append(str(band))
            continue
        rms = sky_rms(vals)
        med_err = float(np.median(ds[S.ERROR].values[i][use]))
        if np.isfinite(rms) and rms > 0 and med_err > 0:
            factors[i] = rms / med_err
    if few:
        warnings.warn(f"calibrate_errors: bands {few} have fewer than {min_pixels} sky pixels; error kept",
                      PeglegWarning, stacklevel=2)
    out = ds.copy()
    fac = xr.DataArray(factors, dims=S.BAND)
    out[S.ERROR] = ds[S.ERROR] * fac
    out[S.ERROR].attrs = dict(ds[S.ERROR].attrs)
    # a deconvolved Dataset: its error is sqrt(error_observed**2 + model_error**2) and the model's
    # bootstrap noise was drawn at the input error level, so every part scales by the same factor
    # (the bootstrap draws about the best fit, so that bin errors from them scale too)
    for name in (S.ERROR_OBSERVED, S.MODEL_ERROR):
        if name in ds:
            out[name] = (ds[name] * fac).assign_attrs(ds[name].attrs)
    if S.MGM_FLUX_DRAWS in ds and S.MGM_FLUX in ds:
        best = ds[S.MGM_FLUX]
        out[S.MGM_FLUX_DRAWS] = (best + (ds[S.MGM_FLUX_DRAWS] - best) * fac).transpose(
            *ds[S.MGM_FLUX_DRAWS].dims).assign_attrs(ds[S.MGM_FLUX_DRAWS].attrs)
    # a second calibration multiplies: error_scale stays the total factor applied to the input errors
    total = factors * (ds[ERROR_SCALE].values if ERROR_SCALE in ds else 1.0)
    out[ERROR_SCALE] = xr.DataArray(total, dims=S.BAND, attrs={"units": "1", "long_name": S.VARIABLES[ERROR_SCALE][2]})
    return S.append_history(out, "calibrate_errors", {"factors": dict(zip(map(str, ds[S.BAND].values),
                                                                            np.round(factors, 5).tolist())),
                                                      "sky_pixels": int(sky.sum())})
