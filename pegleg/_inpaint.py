"""Filling masked pixels by normalised Gaussian interpolation (shared by matching and registration)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Smallest share of Gaussian weight on valid pixels for an interpolated value to be used.
MIN_WEIGHT = 1e-3


def fill_masked(img: np.ndarray, valid: np.ndarray, sigmas: Sequence[float] = (1.5,)) -> np.ndarray:
    """A copy of ``img`` with the pixels where ``valid`` is False interpolated.

    Normalised convolution: ``G * (img valid) / G * valid`` with a Gaussian ``G`` of the
    first width in ``sigmas`` (pixels); pixels with too little valid weight around them
    (< :data:`MIN_WEIGHT`) are filled at the next, wider width, and so on; those still
    unfilled after the last width are 0.  Valid pixels are returned unchanged.
    """
    valid = np.asarray(valid, bool)
    out = np.where(valid, img, 0.0).astype(float)
    todo = ~valid
    if not todo.any():
        return out
    num_src = out.copy()
    den_src = valid.astype(float)
    for s in sigmas:
        num = ndimage.gaussian_filter(num_src, s, mode="constant")
        den = ndimage.gaussian_filter(den_src, s, mode="constant")
        ok = todo & (den > MIN_WEIGHT)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[ok] = num[ok] / den[ok]
        todo &= ~ok
        if not todo.any():
            break
    return out
