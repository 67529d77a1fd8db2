"""Sub-pixel registration of the bands of a stamp Dataset to a reference band.

:func:`register` measures, for every band, the translation that aligns it with the
reference band, and optionally applies it.

Method
======
Common resolution
    Bands with different PSFs do not look alike, so each pair is compared at a common
    resolution by *cross-convolution*: the band's image convolved with the reference
    PSF against the reference image convolved with the band's PSF (both then carry
    ``psf_band * psf_ref``).  No matching kernel is needed, and the convolutions do not
    move anything (the PSFs are centred).  Skipped when both PSFs are identical (e.g.
    data already PSF-matched) or with ``psf_match=False``.
Preparation
    Masked and non-finite pixels (and neighbours in the segmentation map) are filled by
    normalised Gaussian interpolation of the valid pixels around them (sigma 1.5 px;
    far from any valid pixel: 0) so that holes do not correlate with themselves; a sky
    level (median of the valid pixels outside the dilated source segment) is
    subtracted; after the convolutions both images are multiplied by the same window:
    a 2-D Tukey window (``alpha = 0.3``) times, when there is a segmentation map, the
    source segment dilated by 3 pixels and smoothed (Gaussian, sigma 2 px), which
    confines the comparison to the galaxy.
Shift
    :func:`skimage.registration.phase_cross_correlation` with ``normalization=None``
    (plain cross-correlation: phase normalisation whitens the noise and is much worse on
    smooth, noisy galaxy images) and ``upsample_factor`` (default 100: 0.01 px steps).
Uncertainty
    ``n_bootstrap`` (default 16) noise realisations: Gaussian noise with the ``error``
    map added to both images (independently, from ``numpy.random.default_rng(seed)``)
    and the shift measured again; the error is the standard deviation of those shifts.
    (Each realisation carries the data's noise plus as much again, but its shift
    scatters about the data's shift only by the added noise, i.e. by the data's own
    noise.)  Morphological differences between bands (colour gradients, clumps) are
    *not* noise and can move the measured shift by more than this error: the shift
    aligns the *light distributions*, which for a galaxy with colour gradients or
    line-emitting clumps is not an astrometric offset (on the JADES stamps, already on
    one grid, bands differ by up to ~1 px for this reason).

Sign convention
===============
``shift_y``, ``shift_x`` are the shift **to apply** to a band (``scipy.ndimage.shift``
convention: content at pixel ``p`` moves to ``p + shift``) to align it with the
reference.  If a band's galaxy sits at ``x = 30.4`` and the reference's at ``x = 30.0``,
``shift_x = -0.4``.  The reference band's shift is 0 (error 0).
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr
from scipy import ndimage, signal

from . import schema as S
from ._inpaint import fill_masked
from .exceptions import PeglegWarning, SchemaError

__all__ = ["register", "measure_shift", "shift_image", "MAX_SHIFT", "MAX_SHIFT_ERROR"]

SHIFT_Y, SHIFT_X, SHIFT_Y_ERROR, SHIFT_X_ERROR = S.SHIFT_Y, S.SHIFT_X, S.SHIFT_Y_ERROR, S.SHIFT_X_ERROR

_FILL_SIGMA = 1.5
_TUKEY_ALPHA = 0.3
#: Shifts larger than this (pixels) are reported but flagged unreliable (not applied).
MAX_SHIFT = 5.0
#: Shifts with a bootstrap error (quadrature sum of y and x) above this (pixels) are
#: flagged unreliable (not applied): typically bands where the galaxy is not detected.
MAX_SHIFT_ERROR = 0.5
#: Largest ``upsample`` (0.001-pixel steps) and ``n_bootstrap`` accepted: the upsampled DFT
#: allocates arrays growing with ``upsample`` (1e9 asked for 235 GiB).
MAX_UPSAMPLE = 1000
#: ``apply=True`` masks a shifted band's edge pixels that draw more than this fraction of
#: their interpolation weight from beyond the stamp (a 0.5-pixel shift: one edge row).
EDGE_FRACTION = 0.25
MAX_BOOTSTRAP = 10_000


# ---------------------------------------------------------------------------
# numpy helpers
# ---------------------------------------------------------------------------
def _fill(img: np.ndarray, valid: np.ndarray, sigma: float = _FILL_SIGMA) -> np.ndarray:
    """``img`` with invalid pixels replaced by normalised Gaussian interpolation (else 0)."""
    return fill_masked(img, valid, (sigma,))


def _window(shape: tuple[int, int], region: np.ndarray | None) -> np.ndarray:
    w = np.outer(signal.windows.tukey(shape[0], _TUKEY_ALPHA), signal.windows.tukey(shape[1], _TUKEY_ALPHA))
    if region is not None and region.any():
        g = ndimage.gaussian_filter(ndimage.binary_dilation(region, iterations=3).astype(float), 2.0)
        w = w * (g / g.max())
    return w


def _sky(img: np.ndarray, valid: np.ndarray, region: np.ndarray | None) -> float:
    if region is None or not region.any():
        return 0.0
    outside = valid & ~ndimage.binary_dilation(region, iterations=5)
    return float(np.median(img[outside])) if outside.sum() >= 50 else 0.0


def _convolve(img: np.ndarray, psf: np.ndarray | None) -> np.ndarray:
    return img if psf is None else signal.fftconvolve(img, psf, mode="same")


def measure_shift(reference: np.ndarray, moving: np.ndarray, *, window: np.ndarray | None = None,
                  upsample: int = 100) -> np.ndarray:
    """Shift ``(dy, dx)`` to apply to ``moving`` to align it with ``reference`` (pixels).

    Plain (not phase-normalised) cross-correlation with DFT upsampling
    (:func:`skimage.registration.phase_cross_correlation`) of the two images times
    ``window``.  Convention: ``scipy.ndimage.shift(moving, shift)`` matches ``reference``.
    """
    from skimage.registration import phase_cross_correlation

    if window is not None:
        reference, moving = reference * window, moving * window
    if not (np.any(reference) and np.any(moving)):
        return np.full(2, np.nan)
    shift, _, _ = phase_cross_correlation(reference, moving, upsample_factor=int(upsample), normalization=None)
    return np.asarray(shift, dtype=float)


def shift_image(img: np.ndarray, shift: tuple[float, float], valid: np.ndarray | None = None,
                order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Shift ``img`` by ``shift`` (``scipy.ndimage.shift`` convention, spline ``order``).

    Invalid pixels are filled (normalised Gaussian interpolation) before shifting.
    Returns ``(shifted, touched)``: ``touched`` marks output pixels whose interpolation
    used an invalid pixel (the shifted invalid mask, linear interpolation, any overlap,
    grown by one pixel for the cubic spline's reach) or that draw more than
    :data:`EDGE_FRACTION` of their linear-interpolation weight from beyond the stamp edge
    (there the edge values are extended).
    """
    valid = np.isfinite(img) if valid is None else (valid & np.isfinite(img))
    out = ndimage.shift(_fill(img, valid), shift, order=order, mode="nearest")
    touched = ndimage.shift((~valid).astype(float), shift, order=1, mode="constant", cval=0.0) > 1e-6
    if order > 1:
        touched = ndimage.binary_dilation(touched, np.ones((3, 3), bool))
    # the stamp edge: pixels drawing more than EDGE_FRACTION of their (linear) weight from
    # beyond the stamp have no data (a 0.02-pixel shift does not empty the edge rows)
    beyond = ndimage.shift(np.zeros(img.shape), shift, order=1, mode="grid-constant", cval=1.0)
    return out, touched | (beyond > EDGE_FRACTION)


# ---------------------------------------------------------------------------
# the step
# ---------------------------------------------------------------------------
def register(ds: xr.Dataset, reference: str = "F444W", *, apply: bool = False, upsample: int = 100,
             psf_match: bool = True, n_bootstrap: int = 16, seed: int = 0) -> xr.Dataset:
    """Measure (and optionally apply) the sub-pixel shift of every band relative to ``reference``.

    Parameters
    ----------
    ds : xarray.Dataset
        A stamp Dataset (:mod:`pegleg.schema`).
    reference : str
        The band the others are aligned to (default ``"F444W"``).
    apply : bool
        Also shift the images: every float ``(band, y, x)`` variable (``image``, models,
        ...) by cubic spline (masked pixels filled first), ``error`` by linear
        interpolation of the variance, and ``mask`` shifted and grown: a pixel is
        masked when its interpolation touched a masked pixel (plus one pixel for the
        spline's reach) or drew more than :data:`EDGE_FRACTION` of its weight from
        beyond the stamp edge.  ``attrs['registered_to']`` names the reference and
        ``attrs['registration']`` the shifted bands; bands whose shift is unreliable
        (see Warns) are left as they are.
    upsample : int
        DFT upsampling factor: shifts are measured in steps of ``1 / upsample`` pixel
        (1..:data:`MAX_UPSAMPLE`).
    psf_match : bool
        Compare bands at a common resolution by cross-convolution (band * PSF_ref vs
        ref * PSF_band) when their PSFs differ.
    n_bootstrap : int
        Noise realisations for the uncertainties (0: no errors, NaN).
    seed : int
        Seed of the noise realisations (results are deterministic).

    Returns
    -------
    xarray.Dataset
        A copy with ``shift_y``, ``shift_x``, ``shift_y_error``, ``shift_x_error``
        (band; pixels).  **Sign**: the shift to *apply* to each band to align it with
        the reference (``scipy.ndimage.shift`` convention; a band whose galaxy lies
        0.4 px right of the reference's gets ``shift_x = -0.4``).  With ``apply=True``
        the images are shifted (then re-registering gives ~0).  The input is never
        modified; history step ``"register"``.

    Warns
    -----
    PeglegWarning
        For bands whose shift is unreliable: not finite, larger than
        :data:`MAX_SHIFT` (5 px) or with a bootstrap error above :data:`MAX_SHIFT_ERROR`
        (0.5 px) -- typically bands where the galaxy is not detected (dropouts).

    Raises
    ------
    SchemaError
        Invalid Dataset, unknown reference band (naming the available bands), bad
        ``upsample``/``n_bootstrap``.
    """
    S.validate(ds)
    bands = [str(b) for b in ds[S.BAND].values]
    if not isinstance(reference, str) or reference not in bands:
        raise SchemaError(f"reference: band {reference!r} is not in the Dataset; available bands: {bands}")
    for name, v in (("upsample", upsample), ("n_bootstrap", n_bootstrap), ("seed", seed)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < (1 if name == "upsample" else 0):
            raise SchemaError(f"{name}: expected an integer >= {1 if name == 'upsample' else 0}, got {v!r}")
    if upsample > MAX_UPSAMPLE or n_bootstrap > MAX_BOOTSTRAP:
        raise SchemaError(f"upsample, n_bootstrap: expected at most {MAX_UPSAMPLE} and {MAX_BOOTSTRAP}, got "
                          f"{upsample} and {n_bootstrap} (memory and time grow with them)")
    if not isinstance(apply, (bool, np.bool_)) or not isinstance(psf_match, (bool, np.bool_)):
        raise SchemaError("apply, psf_match: expected True or False")

    ny, nx = ds.sizes[S.Y], ds.sizes[S.X]
    region, neighbours = S.source_region(ds)
    window = _window((ny, nx), region)
    img = ds[S.IMAGE].values
    err = ds[S.ERROR].values
    valid = ~ds[S.MASK].values & ~neighbours[None] & np.isfinite(img) & np.isfinite(err)
    psf = ds[S.PSF].values
    iref = bands.index(reference)
    sky = np.array([_sky(img[i], valid[i], region) for i in range(len(bands))])
    noise_sd = np.where(valid, err, 0.0)

    def prep(i: int, noise: np.ndarray | None = None) -> np.ndarray:
        x = img[i] - sky[i]
        if noise is not None:
            x = x + noise
        return _fill(x, valid[i])

    rng = np.random.default_rng(int(seed))
    nb = len(bands)
    shifts = np.zeros((nb, 2))
    errors = np.zeros((nb, 2))
    matched = []
    for i, b in enumerate(bands):
        if i == iref:
            continue
        same = psf[i].shape == psf[iref].shape and np.allclose(psf[i], psf[iref], rtol=0, atol=1e-12)
        cross = psf_match and not same
        if cross:
            matched.append(b)
        p_for_band, p_for_ref = (psf[iref], psf[i]) if cross else (None, None)

        def one(noise_b=None, noise_r=None):
            mov = _convolve(prep(i, noise_b), p_for_band)
            ref = _convolve(prep(iref, noise_r), p_for_ref)
            return measure_shift(ref, mov, window=window, upsample=upsample)

        shifts[i] = one()
        if n_bootstrap > 0:
            boot = np.array([one(rng.standard_normal((ny, nx)) * noise_sd[i],
                                 rng.standard_normal((ny, nx)) * noise_sd[iref]) for _ in range(n_bootstrap)])
            errors[i] = np.std(boot, axis=0, ddof=1) if n_bootstrap > 1 else np.nan
        else:
            errors[i] = np.nan
    reliable = np.all(np.isfinite(shifts), axis=1) & (np.hypot(shifts[:, 0], shifts[:, 1]) <= MAX_SHIFT)
    if n_bootstrap > 1:
        reliable &= np.hypot(errors[:, 0], errors[:, 1]) <= MAX_SHIFT_ERROR
    unreliable = [b for b, ok in zip(bands, reliable) if not ok]
    if unreliable:
        detail = {b: [round(float(shifts[i, 0]), 3), round(float(shifts[i, 1]), 3),
                      round(float(np.hypot(*errors[i])), 3)] for i, b in enumerate(bands) if b in unreliable}
        warnings.warn(f"register: shifts of band(s) {unreliable} relative to {reference} are unreliable "
                      f"(no signal, |shift| > {MAX_SHIFT} px or bootstrap error > {MAX_SHIFT_ERROR} px; "
                      f"[shift_y, shift_x, error]: {detail})"
                      + ("; they are not shifted" if apply else ""), PeglegWarning, stacklevel=2)

    out = ds.copy(deep=True)
    out = out.assign({
        SHIFT_Y: S.variable(SHIFT_Y, shifts[:, 0]),
        SHIFT_X: S.variable(SHIFT_X, shifts[:, 1]),
        SHIFT_Y_ERROR: S.variable(SHIFT_Y_ERROR, errors[:, 0]),
        SHIFT_X_ERROR: S.variable(SHIFT_X_ERROR, errors[:, 1]),
    })
    params = {
        "reference": reference, "apply": bool(apply), "upsample": int(upsample), "psf_match": bool(psf_match),
        "cross_convolved_bands": matched, "n_bootstrap": int(n_bootstrap), "seed": int(seed),
        "window": "tukey(0.3) x smoothed source segment" if region is not None else "tukey(0.3)",
        "shifts": {b: [round(float(s[0]), 4), round(float(s[1]), 4)] for b, s in zip(bands, shifts)},
        "unreliable": unreliable,
    }
    if apply:
        out = _apply(out, np.where(reliable[:, None], shifts, np.nan), reference)
    return S.append_history(out, "register", params)


def _apply(out: xr.Dataset, shifts: np.ndarray, reference: str) -> xr.Dataset:
    """Shift every float (band, y, x) variable, the errors (as variances; ``error``,
    ``error_observed``, ``model_error``), the mask and a deconvolution's model centres."""
    mask = out[S.MASK].values.copy()
    new_mask = mask.copy()
    # 1-sigma maps are shifted as variances (those of a deconvolved Dataset too)
    error_vars = [n for n in (S.ERROR, S.ERROR_OBSERVED, S.MODEL_ERROR)
                  if n in out.data_vars and out[n].dims == (S.BAND, S.Y, S.X)]
    cube_vars = [n for n, v in out.data_vars.items()
                 if v.dims == (S.BAND, S.Y, S.X) and np.issubdtype(v.dtype, np.floating) and n not in error_vars]
    cubes = {n: out[n].values.copy() for n in cube_vars}
    errs = {n: out[n].values.copy() for n in error_vars}
    err = errs[S.ERROR]
    centres = {n: out[n].values.copy() for n in (S.CENTRE_Y, S.CENTRE_X)
               if n in out.data_vars and out[n].dims == (S.BAND,)}
    done = []
    for i, s in enumerate(shifts):
        if not np.all(np.isfinite(s)) or np.allclose(s, 0.0):
            continue
        valid = ~mask[i] & np.isfinite(err[i])
        for n in error_vars:            # error first: its reach (touched) grows the mask
            e = errs[n][i]
            ok = valid & np.isfinite(e)
            shifted_var, t = shift_image(np.where(ok, e, 0.0) ** 2, tuple(s), ok, order=1)
            errs[n][i] = np.sqrt(np.clip(shifted_var, 0.0, None))
            if n == S.ERROR:
                touched = t
        # the deconvolution's model geometry moves with the image
        for n, axis in ((S.CENTRE_Y, 0), (S.CENTRE_X, 1)):
            if n in centres:
                centres[n][i] += s[axis]
        for n in cube_vars:
            vals = cubes[n][i]
            if n == S.IMAGE:
                shifted, t = shift_image(vals, tuple(s), valid, order=3)
                touched |= t  # cubic-spline reach included (grown by one pixel)
            else:
                shifted, _ = shift_image(vals, tuple(s), np.isfinite(vals), order=3)
                shifted[_shifted_nan(vals, s)] = np.nan
            cubes[n][i] = shifted
        # no unmasked pixel without a usable error
        new_mask[i] = touched | ~(np.isfinite(err[i]) & (err[i] > 0))
        done.append(str(out[S.BAND].values[i]))
    out = out.assign({n: out[n].copy(data=cubes[n]) for n in cube_vars})
    out = out.assign({n: out[n].copy(data=errs[n]) for n in error_vars})
    out = out.assign({n: out[n].copy(data=centres[n]) for n in centres})
    out[S.MASK] = out[S.MASK].copy(data=new_mask)
    out.attrs["registered_to"] = reference
    out.attrs["registration"] = (f"bands {done} shifted by (shift_y, shift_x) to align with {reference} "
                                 "(cubic spline; error: linear interpolation of the variance; mask grown)")
    return out


def _shifted_nan(values: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Where the non-finite pixels of ``values`` land after ``shift`` (linear, any overlap)."""
    bad = ~np.isfinite(values)
    if not bad.any():
        return np.zeros(values.shape, bool)
    return ndimage.shift(bad.astype(float), shift, order=1, mode="constant", cval=0.0) > 1e-6
