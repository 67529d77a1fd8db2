"""Deconvolution figure: data, convolved model, residual and PSF-corrected image per band."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .. import schema
from ..exceptions import SchemaError
from ._style import CMAP, asinh_image, asinh_limits, new_figure

_COLUMNS = (("image_observed", "data"), ("model_convolved", "model * PSF"), ("residual", "residual"),
            ("image", "PSF-corrected"))


def deconvolution(ds: xr.Dataset, *, bands: Sequence[str] | None = None, panel_size: float = 1.7,
                  fig: Figure | None = None) -> Figure:
    """One row per band: data, convolved model (+ sky), residual, PSF-corrected image.

    Data, model and corrected image share one asinh stretch per band (softened at the
    median error); the residual is shown linearly from -3 to +3 sigma.  The row label
    gives the fitted total flux (image units), r50 (arcsec) and reduced chi^2.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of ``ds.pegleg.deconvolve()``.
    bands : sequence of str, optional
        Bands to show (default all).
    panel_size : float
        Size of one panel in inches.
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if schema.MODEL not in ds:
        raise SchemaError("plot.deconvolution: the Dataset has not been deconvolved (no 'model'); "
                          "run ds.pegleg.deconvolve() first")
    blist = list(bands) if bands is not None else [str(b) for b in ds[schema.BAND].values]
    missing = [b for b in blist if b not in ds[schema.BAND].values]
    if missing:
        raise SchemaError(f"bands {missing} not in the Dataset")
    fig = new_figure(fig, (panel_size * 4, panel_size * len(blist) + 0.3))
    axes = fig.subplots(len(blist), 4, squeeze=False)
    for row, band in zip(axes, blist):
        d = ds.sel({schema.BAND: band})
        err = d[schema.ERROR].values
        good = np.isfinite(err) & (err > 0)
        noise = float(np.median(err[good])) if good.any() else None
        sky = float(d[schema.SKY]) if np.isfinite(float(d[schema.SKY])) else 0.0
        lims = asinh_limits(d[schema.IMAGE_OBSERVED].values - sky, noise)
        for ax, (var, title) in zip(row, _COLUMNS):
            a = d[var].values.astype(float)
            if var == schema.RESIDUAL:
                s = noise or float(np.nanstd(a)) or 1.0
                ax.imshow(a / s, origin="lower", cmap="RdBu_r", vmin=-3, vmax=3, interpolation="nearest")
            else:
                shown = a - sky if var == schema.IMAGE_OBSERVED else a
                ax.imshow(asinh_image(shown, *lims), origin="lower", cmap=CMAP, vmin=0, vmax=1,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if band == blist[0]:
                ax.set_title(title, fontsize=8)
        row[0].set_ylabel(f"{band}\nF={float(d[schema.FLUX_TOTAL]):.3g}  r50={float(d[schema.R50]):.3f}\"\n"
                          f"chi2r={float(d[schema.CHI2_REDUCED]):.2f}", fontsize=7)
    fig.suptitle(f"{ds.attrs.get(schema.SOURCE_ID, '')}  deconvolution ({ds.attrs.get(schema.RESOLUTION, '')})".strip(),
                 fontsize=9)
    return fig
