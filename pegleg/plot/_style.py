"""Shared figure helpers: one look for every pegleg figure."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

MASK_RGBA = (1.0, 0.25, 0.1, 0.55)
CMAP = "magma"


def new_figure(fig: Figure | None, figsize: tuple[float, float]) -> Figure:
    """Return ``fig`` cleared, or a new pyplot-free Figure of ``figsize`` inches."""
    if fig is None:
        return Figure(figsize=figsize, layout="constrained")
    fig.clear()
    return fig


def grid_shape(n: int, ncols: int | None = None) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for ``n`` panels."""
    ncols = ncols or int(np.ceil(np.sqrt(n * 1.3)))
    ncols = max(1, min(ncols, n))
    return int(np.ceil(n / ncols)), ncols


def asinh_limits(data: np.ndarray, noise: float | None = None) -> tuple[float, float, float]:
    """(vmin, vmax, softening) for an asinh stretch: softening ~ the noise level."""
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        return 0.0, 1.0, 1.0
    vmax = float(np.percentile(finite, 99.7))
    if noise is None or not np.isfinite(noise) or noise <= 0:
        noise = float(1.4826 * np.median(np.abs(finite - np.median(finite)))) or abs(vmax) * 1e-3 or 1.0
    vmin = -2.0 * noise
    if vmax <= vmin:
        vmax = vmin + 10 * noise
    return vmin, vmax, noise


def asinh_image(data: np.ndarray, vmin: float, vmax: float, soft: float) -> np.ndarray:
    """Map ``data`` to [0, 1] with an asinh stretch of softening ``soft``."""
    f = lambda v: np.arcsinh(v / soft)  # noqa: E731
    lo, hi = f(vmin), f(vmax)
    return np.clip((f(np.nan_to_num(data, nan=vmin)) - lo) / (hi - lo), 0, 1)
