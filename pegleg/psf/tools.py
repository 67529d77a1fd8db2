"""Preparation of PSF images: resampling, recentring, trimming, normalising, measuring.

Every PSF that enters a stamp Dataset goes through :func:`prepare_psf`, which turns a
PSF image as found on disk (any byte order, any pixel scale, even or odd size, not
quite centred, not normalised) into what :mod:`pegleg.schema` requires: a native
float64 image at the image pixel scale, odd-sized, with its centroid on the central
pixel and summing to 1.

Conventions
-----------
- Arrays are indexed ``[y, x]``; offsets are returned as ``(dy, dx)`` in pixels.
- The *central pixel* of an ``(ny, nx)`` image (odd sides) is ``(ny // 2, nx // 2)``.
- The *centroid* is the first moment of the non-negative part of the PSF (the same
  definition :func:`pegleg.schema.check_psf_array` uses).
- Pixel scales are in arcsec/pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import schema
from ..exceptions import PSFError

__all__ = [
    "prepare_psf",
    "resample_psf",
    "recenter_psf",
    "trim_psf",
    "pad_to_odd",
    "psf_centroid",
    "encircled_energy",
]

#: Relative pixel-scale difference above which :func:`prepare_psf` resamples.
RESAMPLE_TOLERANCE = 1e-3
#: Centroid offset (pixels) below which a PSF counts as centred (no further shift).
_CENTRE_GOAL = 2e-3
#: Largest side (pixels) of a resampled PSF: beyond it the pixel scales are wrong
#: (e.g. a PIXELSCL card in degrees), not the PSF large.
MAX_RESAMPLED_SIZE = 4097


def _what(name: str) -> str:
    return f"psf {name!r}" if name else "psf"


def _as_2d(psf: Any, name: str = "") -> np.ndarray:
    """Native-endian float64 copy of a 2-D PSF (FITS data are big-endian)."""
    if np.iscomplexobj(psf):
        raise PSFError(f"{_what(name)}: expected real numbers, got a complex array")
    try:
        p = np.array(psf, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise PSFError(f"{_what(name)}: expected a numeric 2-D array ({exc})") from None
    if p.ndim != 2:
        raise PSFError(f"{_what(name)}: expected a 2-D image, got {p.ndim} dimensions (shape {p.shape})")
    if p.shape[0] < 1 or p.shape[1] < 1:
        raise PSFError(f"{_what(name)}: empty image of shape {p.shape}")
    return p


def _check_values(p: np.ndarray, name: str = "") -> None:
    bad = ~np.isfinite(p)
    if bad.any():
        raise PSFError(f"{_what(name)}: contains {int(bad.sum())} NaN/inf value(s); "
                       "a PSF image must be finite everywhere")
    total = p.sum()
    if not total > 0 or not np.clip(p, 0, None).sum() > 0:
        raise PSFError(f"{_what(name)}: sum is {total:g}; a PSF must have a positive total "
                       "(is it all zero or negative?)")


def _check_scale(value: Any, what: str) -> float:
    return schema.check_positive(value, what, error=PSFError, what="pixel scale (arcsec/pixel)")


def _odd_shape(size: Any, what: str = "size") -> tuple[int, int]:
    shape = (size, size) if np.ndim(size) == 0 else tuple(size)
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError, OverflowError):
        raise PSFError(f"{what}: expected an odd int or a pair of odd ints, got {size!r}") from None
    if len(shape) != 2 or any(s < 1 or s % 2 == 0 for s in shape):
        raise PSFError(f"{what}: expected odd positive sides so the PSF has a central pixel, got {size!r}")
    return shape  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------
def _centroid_abs(p: np.ndarray) -> tuple[float, float]:
    """Centroid (y, x) in pixel-index coordinates of the non-negative part of ``p``."""
    w = np.clip(p, 0, None)
    tot = w.sum()
    if not tot > 0:
        raise PSFError("psf: no positive pixels, the centroid is undefined")
    return float(w.sum(axis=1) @ np.arange(p.shape[0]) / tot), float(w.sum(axis=0) @ np.arange(p.shape[1]) / tot)


def _peak_abs(p: np.ndarray) -> tuple[float, float]:
    """Peak position (y, x) from a 1-D parabola through the brightest pixel and its neighbours."""
    iy, ix = np.unravel_index(np.argmax(p), p.shape)
    pos = []
    for i, n, line in ((iy, p.shape[0], p[:, ix]), (ix, p.shape[1], p[iy, :])):
        off = 0.0
        if 0 < i < n - 1:
            a, b, c = line[i - 1], line[i], line[i + 1]
            den = a - 2 * b + c
            if den < 0:
                off = float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))
        pos.append(i + off)
    return pos[0], pos[1]


def psf_centroid(psf: Any) -> tuple[float, float]:
    """Offset of the PSF centroid from the central pixel.

    Parameters
    ----------
    psf : array_like, (ny, nx)
        PSF image (any normalisation).  For even sides the "central pixel" is the
        half-integer position ``(ny - 1) / 2``.

    Returns
    -------
    (dy, dx) : tuple of float
        Centroid of the non-negative part of ``psf`` minus ``((ny - 1) / 2, (nx - 1) / 2)``,
        in pixels.
    """
    p = _as_2d(psf)
    cy, cx = _centroid_abs(p)
    return cy - (p.shape[0] - 1) / 2.0, cx - (p.shape[1] - 1) / 2.0


def encircled_energy(psf: Any, radii: Any, *, center: tuple[float, float] | None = None,
                     oversample: int = 10) -> np.ndarray:
    """Fraction of the PSF's total flux inside circles of the given radii.

    Each pixel is split into ``oversample x oversample`` sub-pixels that carry equal
    shares of its flux; the encircled energy at radius ``r`` is the summed flux of the
    sub-pixels whose centres lie within ``r``.  With the default ``oversample=10`` this
    matches exact circle-pixel overlap to ~1e-3 of the total for radii >= 1 pixel.

    Parameters
    ----------
    psf : array_like, (ny, nx)
        PSF image (any normalisation; the result is relative to ``psf.sum()``).
    radii : float or array_like
        Aperture radii in pixels.
    center : (y, x), optional
        Aperture centre in pixel-index coordinates; default the central pixel
        ``((ny - 1) / 2, (nx - 1) / 2)``.
    oversample : int
        Sub-pixels per pixel side.

    Returns
    -------
    numpy.ndarray
        Encircled-energy fractions (dimensionless), same shape as ``radii``.
    """
    p = _as_2d(psf)
    _check_values(p)
    r = np.asarray(radii, dtype=float)
    if np.any(~np.isfinite(r)) or np.any(r < 0):
        raise PSFError(f"encircled_energy: radii must be finite and >= 0 (pixels), got {radii!r}")
    k = int(oversample)
    if k < 1:
        raise PSFError(f"encircled_energy: oversample must be >= 1, got {oversample!r}")
    cy, cx = ((p.shape[0] - 1) / 2.0, (p.shape[1] - 1) / 2.0) if center is None else map(float, center)
    sub = (np.arange(k) + 0.5) / k - 0.5
    ys = (np.arange(p.shape[0])[:, None] + sub[None, :]).ravel() - cy
    xs = (np.arange(p.shape[1])[:, None] + sub[None, :]).ravel() - cx
    d2 = (ys[:, None] ** 2 + xs[None, :] ** 2).ravel()
    w = np.repeat(np.repeat(p, k, axis=0), k, axis=1).ravel() / (k * k)
    order = np.argsort(d2, kind="stable")
    d2s = d2[order]
    cum = np.concatenate([[0.0], np.cumsum(w[order])])
    idx = np.searchsorted(d2s, r.ravel() ** 2, side="right")
    return (cum[idx] / p.sum()).reshape(r.shape)


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------
def pad_to_odd(psf: Any) -> np.ndarray:
    """Zero-pad an even side by one pixel (at the end) so both sides are odd.

    Parameters
    ----------
    psf : array_like, (ny, nx)

    Returns
    -------
    numpy.ndarray
        Native float64, ``(ny + (ny + 1) % 2, nx + (nx + 1) % 2)``.  Pixel values and
        their indices are unchanged; use :func:`recenter_psf` to centre the result.
    """
    p = _as_2d(psf)
    return np.pad(p, ((0, 1 - p.shape[0] % 2), (0, 1 - p.shape[1] % 2)))


def trim_psf(psf: Any, size: Any) -> np.ndarray:
    """Crop or zero-pad a PSF symmetrically about its central pixel to ``size``.

    Parameters
    ----------
    psf : array_like, (ny, nx)
        PSF with odd sides (even sides are first padded with :func:`pad_to_odd`).
    size : int or (int, int)
        Odd output size in pixels (``n`` or ``(ny, nx)``).

    Returns
    -------
    numpy.ndarray
        Native float64 of shape ``size`` whose central pixel is the input's central
        pixel.  Not renormalised (flux outside the crop is lost).
    """
    p = pad_to_odd(psf)
    out_shape = _odd_shape(size)
    out = p
    for axis, (n_in, n_out) in enumerate(zip(p.shape, out_shape)):
        d = (n_in - n_out) // 2  # both odd -> even difference
        if d > 0:
            out = out.take(np.arange(d, d + n_out), axis=axis)
        elif d < 0:
            pad = [(0, 0), (0, 0)]
            pad[axis] = (-d, -d)
            out = np.pad(out, pad)
    return np.ascontiguousarray(out)


def recenter_psf(psf: Any, *, method: str = "centroid", tolerance: float = _CENTRE_GOAL) -> np.ndarray:
    """Shift a PSF by a sub-pixel amount so its centre sits on the central pixel.

    The image is first padded to odd sides (:func:`pad_to_odd`), then shifted with a
    cubic-spline interpolation (``scipy.ndimage.shift``) by the measured offset; the
    shift is refined (from the original image, so it is interpolated only once per
    iteration) until the offset is below ``tolerance``.  Shifts larger than a pixel
    are done exactly by whole pixels first (zero padding, same size).  The sum is not
    renormalised; the flux shifted out of the frame is lost.

    Parameters
    ----------
    psf : array_like, (ny, nx)
        PSF image.
    method : {"centroid", "peak"}
        Centre definition: first moment of the non-negative part, or the brightest
        pixel refined by a parabola through its neighbours.
    tolerance : float
        Offset (pixels) accepted as centred.

    Returns
    -------
    numpy.ndarray
        Native float64, odd sides.
    """
    from scipy import ndimage

    if method not in ("centroid", "peak"):
        raise PSFError(f"recenter_psf: method must be 'centroid' or 'peak', got {method!r}")
    measure = _centroid_abs if method == "centroid" else _peak_abs
    p = pad_to_odd(psf)
    _check_values(p)
    centre = np.array([p.shape[0] // 2, p.shape[1] // 2], dtype=float)
    off = np.array(measure(p)) - centre
    if np.hypot(*off) <= tolerance:
        return p
    # whole-pixel part: exact roll with zero fill
    whole = np.round(off).astype(int)
    if np.any(whole):
        p = _shift_whole(p, -whole)
        off = np.array(measure(p)) - centre
    pad = 3
    base = np.pad(p, pad)
    total = np.zeros(2)
    out = p
    for _ in range(6):
        if np.hypot(*off) <= tolerance:
            break
        total = total + off
        shifted = ndimage.shift(base, -total, order=3, mode="grid-constant", cval=0.0, prefilter=True)
        out = shifted[pad:-pad, pad:-pad]
        off = np.array(measure(out)) - centre
    return np.ascontiguousarray(out)


def _shift_whole(p: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Shift by whole pixels (dy, dx), filling with zeros, same shape."""
    out = np.zeros_like(p)
    dy, dx = int(shift[0]), int(shift[1])
    ny, nx = p.shape
    ys, yd = (slice(0, ny - dy), slice(dy, ny)) if dy >= 0 else (slice(-dy, ny), slice(0, ny + dy))
    xs, xd = (slice(0, nx - dx), slice(dx, nx)) if dx >= 0 else (slice(-dx, nx), slice(0, nx + dx))
    out[yd, xd] = p[ys, xs]
    return out


# ---------------------------------------------------------------------------
# resampling
# ---------------------------------------------------------------------------
def resample_psf(psf: Any, from_scale: float, to_scale: float, *, size: Any = None,
                 tolerance: float = _CENTRE_GOAL) -> np.ndarray:
    """Resample a PSF image to another pixel scale, conserving flux, centred on the centroid.

    The input pixel values are treated as *integrals* over their pixels.  Their 2-D
    cumulative sum is known exactly at the input pixel corners; a bicubic spline
    (``scipy.interpolate.RectBivariateSpline``, interpolating) through it gives the
    flux enclosed below/left of any point, and the flux of each output pixel is the
    difference of that cumulative function at its four corners.  So the output is the
    exact integral over each output pixel of a smooth (piecewise bi-quadratic)
    reconstruction of the input surface brightness: the total is conserved exactly
    when the output covers the input, and no extra blur from the input pixels is
    added (unlike interpolating pixel values as if they were point samples, which
    broadens the PSF by the input pixel's variance ``from_scale**2 / 12``).  Outside
    the input footprint the flux is zero.

    The output grid is placed so that the input centroid falls on its central pixel;
    the placement is refined until the output's own centroid is within ``tolerance``
    pixels of the central pixel.

    Parameters
    ----------
    psf : array_like, (ny, nx)
        PSF image at ``from_scale``; values are flux per input pixel.
    from_scale, to_scale : float
        Input and output pixel scales in arcsec/pixel.
    size : int or (int, int), optional
        Odd output size in output pixels.  Default: the smallest odd size whose
        central-pixel-centred footprint covers the whole input footprint (so the
        total flux is conserved).
    tolerance : float
        Centroid goal in output pixels.

    Returns
    -------
    numpy.ndarray
        Native float64 ``(n_y, n_x)``, odd sides, flux per output pixel, sum equal to
        the input sum (when the output covers the input).
    """
    from scipy.interpolate import RectBivariateSpline

    p = _as_2d(psf)
    _check_values(p)
    s_in = _check_scale(from_scale, "from_scale")
    s_out = _check_scale(to_scale, "to_scale")
    ratio = s_in / s_out  # output pixels per input pixel
    ny, nx = p.shape
    cum = np.zeros((ny + 1, nx + 1))
    cum[1:, 1:] = p.cumsum(axis=0).cumsum(axis=1)
    ey = np.arange(ny + 1) - 0.5  # input pixel edges, input-index coordinates
    ex = np.arange(nx + 1) - 0.5
    # cubic needs >= 4 edge points per axis
    spline = RectBivariateSpline(ey, ex, cum, kx=min(3, ny), ky=min(3, nx), s=0)

    cy, cx = _centroid_abs(p)
    if size is None:
        half_y = max(cy + 0.5, ny - 0.5 - cy) * ratio
        half_x = max(cx + 0.5, nx - 0.5 - cx) * ratio
        if not max(half_y, half_x) <= MAX_RESAMPLED_SIZE / 2:
            raise PSFError(f"psf: resampling a {ny}x{nx} PSF from {s_in:g} to {s_out:g} arcsec/pixel would need "
                           f"more than {MAX_RESAMPLED_SIZE} pixels per side; check the pixel scales (PIXELSCL)")
        shape = (2 * int(np.ceil(half_y - 0.5 - 1e-9)) + 1, 2 * int(np.ceil(half_x - 0.5 - 1e-9)) + 1)
    else:
        shape = _odd_shape(size)
    jy = np.arange(shape[0] + 1) - 0.5 - shape[0] // 2  # output edges relative to the central pixel
    jx = np.arange(shape[1] + 1) - 0.5 - shape[1] // 2
    centre = np.array([shape[0] // 2, shape[1] // 2], dtype=float)

    origin = np.array([cy, cx])
    out = None
    for _ in range(8):
        yy = np.clip(origin[0] + jy / ratio, ey[0], ey[-1])
        xx = np.clip(origin[1] + jx / ratio, ex[0], ex[-1])
        c_out = spline(yy, xx, grid=True)
        out = np.diff(np.diff(c_out, axis=0), axis=1)
        off = np.array(_centroid_abs(out)) - centre
        if np.hypot(*off) <= tolerance:
            break
        origin = origin + off / ratio
    return np.ascontiguousarray(out)


# ---------------------------------------------------------------------------
# the one routine
# ---------------------------------------------------------------------------
def prepare_psf(psf: Any, *, from_scale: float | None = None, to_scale: float | None = None,
                size: Any = None, name: str = "") -> np.ndarray:
    """Turn a PSF image as found on disk into a schema-ready PSF.

    Steps: native float64 copy (FITS arrays are big-endian); check that it is finite
    with a positive sum; resample with :func:`resample_psf` if ``from_scale`` and
    ``to_scale`` differ by more than 0.1%; recentre with :func:`recenter_psf` (padding
    even sides to odd first); crop or pad to ``size`` with :func:`trim_psf`; normalise
    to sum 1; and check with :func:`pegleg.schema.check_psf_array`.

    Parameters
    ----------
    psf : array_like, (ny, nx)
        PSF image, any normalisation (model PSF stamps usually sum to slightly less
        than 1 because they are truncated; the result is renormalised to 1).
    from_scale : float, optional
        Pixel scale of ``psf`` in arcsec/pixel (e.g. FITS card ``PIXELSCL``).
    to_scale : float, optional
        Target (image) pixel scale in arcsec/pixel.  If either scale is None the PSF is
        assumed to be at the target scale already.
    size : int or (int, int), optional
        Odd output size in pixels; default keeps the (resampled) size.
    name : str
        Band or file name used in error messages.

    Returns
    -------
    numpy.ndarray
        Native float64, odd sides, centroid within 0.01 pixel of the central pixel,
        sum 1 (within 1e-12).

    Raises
    ------
    PSFError
        Naming ``name``: not 2-D, NaN/inf values, zero or negative sum, bad scales.
    """
    p = _as_2d(psf, name)
    _check_values(p, name)
    if from_scale is not None and to_scale is not None:
        s_in = _check_scale(from_scale, f"{_what(name)}: from_scale")
        s_out = _check_scale(to_scale, f"{_what(name)}: to_scale")
        if abs(s_in / s_out - 1) > RESAMPLE_TOLERANCE:
            p = resample_psf(p, s_in, s_out)
    p = recenter_psf(p)
    if size is not None:
        p = trim_psf(p, size)
    _check_values(p, name)
    p = p / p.sum()
    return schema.check_psf_array(p, name, normalise=True)
