"""Grid of band stamps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .. import schema
from ..exceptions import SchemaError
from ._style import CMAP, MASK_RGBA, asinh_image, asinh_limits, grid_shape, new_figure


def stamps(ds: xr.Dataset, var: str = schema.IMAGE, *, bands: Sequence[str] | None = None,
           show_mask: bool = True, ncols: int | None = None, panel_size: float = 1.9,
           common_stretch: bool = False, fig: Figure | None = None) -> Figure:
    """Plot every band of ``ds[var]`` in a grid with an asinh stretch.

    Parameters
    ----------
    ds : xarray.Dataset
        A stamp Dataset.
    var : str
        Variable with dims (band, y, x) to show (default ``"image"``).
    bands : sequence of str, optional
        Bands to show (default all, in wavelength order).
    show_mask : bool
        Overlay masked pixels (``mask`` True) in translucent orange.
    ncols : int, optional
        Columns of the grid.
    panel_size : float
        Size of one panel in inches.
    common_stretch : bool
        One stretch for all bands (default: each band its own, softened at its noise).
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if var not in ds:
        raise SchemaError(f"variable {var!r} not in the Dataset; available: {list(ds.data_vars)}")
    da = ds[var]
    if schema.BAND not in da.dims or schema.Y not in da.dims or schema.X not in da.dims:
        raise SchemaError(f"variable {var!r}: expected dims including (band, y, x), got {da.dims}")
    blist = list(bands) if bands is not None else [str(b) for b in ds[schema.BAND].values]
    missing = [b for b in blist if b not in ds[schema.BAND].values]
    if missing:
        raise SchemaError(f"bands {missing} not in the Dataset; available: {[str(b) for b in ds[schema.BAND].values]}")
    nrow, ncol = grid_shape(len(blist), ncols)
    fig = new_figure(fig, (panel_size * ncol, panel_size * nrow + 0.2))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    mask = ds[schema.MASK] if (show_mask and schema.MASK in ds) else None
    err = ds[schema.ERROR] if schema.ERROR in ds else None
    if common_stretch:
        alld = da.sel({schema.BAND: blist}).values
        noise = float(np.nanmedian(err.sel({schema.BAND: blist}).values)) if err is not None else None
        common = asinh_limits(alld, noise)
    for ax, band in zip(axes.flat, blist):
        d = da.sel({schema.BAND: band}).transpose(schema.Y, schema.X).values.astype(float)
        if common_stretch:
            lims = common
        else:
            noise = None
            if err is not None:
                e = err.sel({schema.BAND: band}).values
                noise = float(np.nanmedian(e[np.isfinite(e) & (e > 0)])) if np.any(np.isfinite(e) & (e > 0)) else None
            lims = asinh_limits(d, noise)
        ax.imshow(asinh_image(d, *lims), origin="lower", cmap=CMAP, vmin=0, vmax=1, interpolation="nearest")
        if mask is not None:
            m = mask.sel({schema.BAND: band}).values
            if m.any():
                overlay = np.zeros(m.shape + (4,))
                overlay[m] = MASK_RGBA
                ax.imshow(overlay, origin="lower", interpolation="nearest")
        wl = float(ds[schema.WAVELENGTH].sel({schema.BAND: band})) if schema.WAVELENGTH in ds.coords else None
        ax.set_title(f"{band}" + (f"  {wl:.2f} µm" if wl else ""), fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(blist):]:
        ax.set_visible(False)
    title = ds.attrs.get(schema.SOURCE_ID, "")
    res = ds.attrs.get(schema.RESOLUTION, "")
    fig.suptitle(f"{title}  {var}  ({res})".strip(), fontsize=9)
    return fig
