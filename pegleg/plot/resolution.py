"""Figure of :func:`pegleg.resolution.resolution_test`."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..exceptions import SchemaError
from ._style import new_figure


def resolution_test(result: xr.Dataset, *, fig: Figure | None = None) -> Figure:
    """Image ratios, profile ratios and recovered resolution of a resolution test.

    Top row: the short/long PSF-corrected image ratio for each recipe (linear, 0.7-1.3).
    Bottom left: the profile ratios against radius (arcsec) with the 2 r50 limit;
    bottom right: effective FWHM of the corrected point sources (and galaxy, when the
    truth was given) as a fraction of each band's original PSF FWHM.

    Parameters
    ----------
    result : xarray.Dataset
        Output of :func:`pegleg.resolution.resolution_test`.
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).

    Returns
    -------
    matplotlib.figure.Figure
    """
    if "profile_ratio" not in result:
        raise SchemaError("plot.resolution_test: expected the output of resolution_test()")
    fig = new_figure(fig, (8.0, 6.0))
    gs = fig.add_gridspec(2, 2)
    short, long = result.attrs.get("short", "short"), result.attrs.get("long", "long")
    for i, recipe in enumerate(result["recipe"].values):
        ax = fig.add_subplot(gs[0, i])
        im = ax.imshow(result["image_ratio"].sel(recipe=recipe).values, origin="lower", cmap="RdBu_r",
                       vmin=0.7, vmax=1.3, interpolation="nearest")
        ax.set_title(f"{recipe}: {short}/{long}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
    ax = fig.add_subplot(gs[1, 0])
    for recipe in result["recipe"].values:
        ax.plot(result["radius"].values, result["profile_ratio"].sel(recipe=recipe).values, "o-", ms=3,
                label=f"{recipe} (flatness {float(result['ratio_flatness'].sel(recipe=recipe)):.3f})")
    r50 = result.attrs.get("r50_long")
    if r50:
        ax.axvline(2 * r50, color="0.5", ls="--", lw=1, label="2 r50")
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xlabel("radius [arcsec]")
    ax.set_ylabel(f"profile ratio {short}/{long}")
    ax.set_ylim(0.6, 1.4)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(gs[1, 1])
    x = np.arange(result.sizes["recipe"])
    w = 0.2
    for j, band in enumerate(result["band"].values):
        ax.bar(x + (j - 0.5) * w, result["fwhm_fraction_point"].sel(band=band).values, w, label=f"{band} point")
        if "fwhm_fraction_galaxy" in result:
            ax.bar(x + (j + 1.5) * w, result["fwhm_fraction_galaxy"].sel(band=band).values, w, alpha=0.6,
                   label=f"{band} galaxy")
    ax.set_xticks(x + 0.25, result["recipe"].values)
    ax.set_ylabel("corrected FWHM / original PSF FWHM")
    ax.legend(fontsize=7)
    return fig
