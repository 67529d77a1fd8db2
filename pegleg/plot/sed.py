"""SED-fit figures: maps of the fitted quantities and the SED of one pixel."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from .. import schema
from ..exceptions import SchemaError
from ._style import CMAP, grid_shape, new_figure

#: ``sedfit_flag`` bit of pixels with no valid band (nothing was fitted).
FLAG_NO_DATA = 1
#: The quantiles of the posterior-quantile variables: lower, median, upper.
_LO, _MED, _HI = 0.16, 0.5, 0.84
_DEFAULT_MAPS = (schema.LOG_STELLAR_MASS, schema.LOG_SFR100, schema.AV, schema.LOG_AGE_MW, schema.CHI2,
                 schema.INFORMATION_GAIN)


def _attrs(ds: xr.Dataset, name: str) -> tuple[str, str]:
    """(units, long_name) of ``ds[name]``, falling back to the schema's."""
    dims_units_long = schema.VARIABLES.get(name, ((), "", name))
    units = ds[name].attrs.get("units", dims_units_long[1])
    if units == schema.IMAGE_UNIT:
        units = schema.image_units(ds)
    return str(units), str(ds[name].attrs.get("long_name", dims_units_long[2]))


def _quantile(da: xr.DataArray, q: float) -> xr.DataArray:
    """``da`` at quantile ``q`` (matched with a float tolerance)."""
    if schema.QUANTILE not in da.coords:
        raise SchemaError(f"variable {da.name!r}: dimension 'quantile' has no coordinate values")
    qs = np.asarray(da[schema.QUANTILE].values, dtype=float)
    hit = np.flatnonzero(np.isclose(qs, q, rtol=0, atol=1e-6))
    if hit.size == 0:
        raise SchemaError(f"variable {da.name!r}: quantile {q} not in the quantile coordinate {qs.tolist()}")
    return da.isel({schema.QUANTILE: int(hit[0])})


def _n_bands(ds: xr.Dataset) -> xr.DataArray:
    """Bands used per pixel: ``n_bands``, or (without it) the unmasked finite bands."""
    if schema.N_BANDS in ds:
        return ds[schema.N_BANDS]
    ok = np.isfinite(ds[schema.IMAGE]) & np.isfinite(ds[schema.ERROR]) & (ds[schema.ERROR] > 0)
    if schema.MASK in ds:
        ok = ok & ~ds[schema.MASK]
    return ok.sum(schema.BAND)


def _reduced_chi2(chi2, n_bands):
    """chi2 / max(n_bands - 1, 1)."""
    return chi2 / np.maximum(np.asarray(n_bands, dtype=float) - 1.0, 1.0)


def _map_panels(ds: xr.Dataset, name: str, width: bool, info_quantity: str | None) -> list[tuple]:
    """[(name, title, (y, x) array, colour-bar label, units, log scale)] for quantity ``name``."""
    da = ds[name]
    units, long_name = _attrs(ds, name)
    extra = set(da.dims) - {schema.Y, schema.X}
    if schema.Y not in da.dims or schema.X not in da.dims or not extra <= {schema.QUANTILE, schema.INFO_QUANTITY} \
            or len(extra) > 1:
        raise SchemaError(f"variable {name!r}: expected dims (y, x), (y, x, quantile) or (y, x, info_quantity), "
                          f"got {da.dims}")
    if schema.QUANTILE in da.dims:
        panels = [(f"{name} (median)", _quantile(da, _MED), f"{long_name}, median", False)]
        if width:
            w = _quantile(da, _HI) - _quantile(da, _LO)
            panels.append((f"{name} (84-16 width)", w, f"{long_name}, 84-16 width", False))
    elif schema.INFO_QUANTITY in da.dims:
        if schema.INFO_QUANTITY in da.coords:
            available = [str(v) for v in da[schema.INFO_QUANTITY].values]
        else:
            available = [str(i) for i in range(da.sizes[schema.INFO_QUANTITY])]
        chosen = available[0] if info_quantity is None else str(info_quantity)
        if chosen not in available:
            raise SchemaError(f"info_quantity {info_quantity!r} not in {name!r}; available: {available}")
        panels = [(f"{name} ({chosen})", da.isel({schema.INFO_QUANTITY: available.index(chosen)}),
                   f"{long_name} ({chosen})", False)]
    elif name == schema.CHI2:
        if schema.N_BANDS not in ds and not (schema.IMAGE in ds and schema.ERROR in ds):
            raise SchemaError("chi2 map: the reduced chi2 needs 'n_bands' (or image/error/mask to count bands); "
                              f"available: {list(ds.data_vars)}")
        panels = [("reduced chi2", _reduced_chi2(da, _n_bands(ds)), f"{long_name} / max(n_bands - 1, 1)", True)]
    else:
        panels = [(name, da, long_name, False)]
    return [(name, title, a.transpose(schema.Y, schema.X).values.astype(float), label, units, log)
            for title, a, label, log in panels]


def maps(ds: xr.Dataset, quantities: Sequence[str] | str = _DEFAULT_MAPS, *, fig: Figure | None = None,
         cmap: str = CMAP, mask_flagged: bool = True, width: bool = False, info_quantity: str | None = None,
         ncols: int | None = None, panel_size: float = 2.6) -> Figure:
    """Maps of SED-fit quantities, one panel per quantity, each with its own colour bar.

    Variables with a ``quantile`` dimension show the posterior median (and, with
    ``width=True``, a second panel with the 84-16 percentile width);
    ``information_gain`` shows one ``info_quantity`` (default the first); ``chi2`` is
    shown as the reduced chi^2, ``chi2 / max(n_bands - 1, 1)``, on a log colour scale
    (``n_bands`` counted from the unmasked bands when the Dataset has no ``n_bands``).
    Colour limits are the 1st and 99th percentiles of the shown pixels.  Colour bars
    are labelled with the variable's ``long_name`` and ``units``.  Axes are positional
    pixel indices, the ones :func:`sed` takes.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of the SED fit (``ds.pegleg.sedfit()``); any (y, x) variable can be shown.
    quantities : sequence of str
        Variables to show (default log_stellar_mass, log_sfr100, av, log_age_mw, chi2,
        information_gain).
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).
    cmap : str
        Colour map.
    mask_flagged : bool
        Blank pixels with ``sedfit_flag & 1`` (no valid band); NaN pixels are always blank.
    width : bool
        Add a panel with the 84-16 width after every median map.
    info_quantity : str, optional
        Which ``info_quantity`` of ``information_gain`` to show (default the first).
    ncols : int, optional
        Columns of the grid.
    panel_size : float
        Size of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    SchemaError
        A quantity is not in the Dataset (the message lists what is), has unexpected
        dims, or ``info_quantity`` is unknown.
    """
    names = [quantities] if isinstance(quantities, str) else list(quantities)
    if not names:
        raise SchemaError("plot.maps: quantities is empty; name at least one variable")
    missing = [n for n in names if n not in ds]
    if missing:
        raise SchemaError(f"plot.maps: variable(s) {missing} not in the Dataset; available: {list(ds.data_vars)}")
    panels = [p for n in names for p in _map_panels(ds, n, width, info_quantity)]
    blank = None
    if mask_flagged and schema.SEDFIT_FLAG in ds:
        flag = ds[schema.SEDFIT_FLAG].transpose(schema.Y, schema.X).values
        blank = (np.nan_to_num(flag, nan=0).astype(np.int64) & FLAG_NO_DATA) != 0
    nrow, ncol = grid_shape(len(panels), ncols)
    fig = new_figure(fig, (panel_size * 1.35 * ncol, panel_size * nrow + 0.3))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax, (name, title, a, label, units, log) in zip(axes.flat, panels):
        if blank is not None and name != schema.SEDFIT_FLAG:
            a = np.where(blank, np.nan, a)
        finite = a[np.isfinite(a) & (a > 0)] if log else a[np.isfinite(a)]
        if log and finite.size:
            lo, hi = np.percentile(finite, [1, 99])
            norm = LogNorm(vmin=lo, vmax=max(hi, lo * 1.01))
            a = np.where(a > 0, a, np.nan)
        elif finite.size:
            lo, hi = np.percentile(finite, [1, 99])
            norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
        else:
            norm = Normalize(vmin=0.0, vmax=1.0)
        im = ax.imshow(a, origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
        ax.set_title(title, fontsize=7)
        ax.tick_params(labelsize=6)
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(5, integer=True))
        cb = fig.colorbar(im, ax=ax, shrink=0.85)
        cb.set_label(f"{textwrap.fill(label, 32)} [{units}]", fontsize=6)
        cb.ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{ds.attrs.get(schema.SOURCE_ID, '')}  SED fit ({ds.attrs.get(schema.RESOLUTION, '')})".strip(),
                 fontsize=9)
    return fig


def _pixel_index(ds: xr.Dataset, value, dim: str) -> int:
    n = ds.sizes.get(dim)
    if n is None:
        raise SchemaError(f"plot.sed: the Dataset has no {dim!r} dimension")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SchemaError(f"plot.sed: {dim} must be an integer pixel index, got {value!r}")
    if not 0 <= int(value) < n:
        raise SchemaError(f"plot.sed: pixel {dim}={value} is outside the image (0 <= {dim} < {n})")
    return int(value)


def _fmt(v: float) -> str:
    return f"{v:.2f}" if np.isfinite(v) else "nan"


def sed(ds: xr.Dataset, y: int, x: int, *, ax: Axes | Sequence[Axes] | None = None,
        fig: Figure | None = None) -> Figure:
    """The SED of pixel (y, x): data, model and residuals against wavelength.

    Top panel: the observed ``image`` with ``error`` bars against the band
    ``wavelength`` (micron, log axis) and the posterior-mean ``model_image`` (squares
    joined in wavelength order).  Bottom panel: ``sed_residual`` in units of the
    likelihood sigma with lines at 0 and +-1.  Masked bands (``mask`` True) are drawn
    hollow and grey.  The title gives the pixel's median log stellar mass, log SFR100,
    A_V and reduced chi^2 (``chi2 / max(n_bands - 1, 1)``) and its ``sedfit_flag``
    when non-zero.  Without SED-fit outputs only the data are drawn.

    Parameters
    ----------
    ds : xarray.Dataset
        Output of the SED fit (``ds.pegleg.sedfit()``), or any stamp Dataset.
    y, x : int
        Positional pixel indices (row, column), as on the axes of :func:`maps`.
    ax : matplotlib.axes.Axes or (Axes, Axes), optional
        Axes to draw into: one Axes for the SED alone (no residual panel), or a pair
        (SED, residual).  Takes precedence over ``fig``.
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    SchemaError
        The pixel is outside the image, or ``image``, ``error`` or the ``wavelength``
        coordinate is missing.
    """
    for name in (schema.IMAGE, schema.ERROR):
        if name not in ds:
            raise SchemaError(f"plot.sed: variable {name!r} not in the Dataset; available: {list(ds.data_vars)}")
    if schema.WAVELENGTH not in ds.coords:
        raise SchemaError("plot.sed: coordinate 'wavelength' (band) is missing")
    iy, ix = _pixel_index(ds, y, schema.Y), _pixel_index(ds, x, schema.X)
    if ax is None:
        fig = new_figure(fig, (5.0, 4.2))
        ax_sed, ax_res = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    elif isinstance(ax, Axes):
        ax_sed, ax_res = ax, None
        fig = ax.get_figure()
    else:
        ax_sed, ax_res = ax
        fig = ax_sed.get_figure()
    px = ds.isel({schema.Y: iy, schema.X: ix})
    wl = np.asarray(px[schema.WAVELENGTH].values, dtype=float)
    order = np.argsort(wl)
    wl = wl[order]
    flux = np.asarray(px[schema.IMAGE].values, dtype=float)[order]
    err = np.asarray(px[schema.ERROR].values, dtype=float)[order]
    masked = np.asarray(px[schema.MASK].values, dtype=bool)[order] if schema.MASK in ds else np.zeros(wl.size, bool)
    good = ~masked
    units = schema.image_units(ds)
    err_shown = np.where(np.isfinite(err) & (err > 0), err, 0.0)
    ax_sed.errorbar(wl[good], flux[good], yerr=err_shown[good], fmt="o", color="k", ms=4, capsize=2, lw=1,
                    label="observed")
    if masked.any():
        ax_sed.errorbar(wl[masked], flux[masked], yerr=err_shown[masked], fmt="o", color="0.6", mfc="none", ms=4,
                        capsize=2, lw=1, label="observed (masked)")
    if schema.MODEL_IMAGE in ds:
        model = np.asarray(px[schema.MODEL_IMAGE].values, dtype=float)[order]
        ax_sed.plot(wl, model, "s-", color="C3", ms=4, lw=1, mfc="none", alpha=0.9, label="model")
    ax_sed.set_xscale("log")
    ax_sed.set_ylabel(f"flux [{units}]")
    ax_sed.legend(fontsize=7)
    bottom = ax_sed
    if ax_res is not None:
        ax_res.axhline(0, color="k", lw=0.8)
        for s in (-1, 1):
            ax_res.axhline(s, color="0.5", lw=0.8, ls="--")
        if schema.SED_RESIDUAL in ds:
            res = np.asarray(px[schema.SED_RESIDUAL].values, dtype=float)[order]
            ax_res.plot(wl[good], res[good], "o", color="k", ms=4, label="residual")
            if masked.any():
                ax_res.plot(wl[masked], res[masked], "o", color="0.6", mfc="none", ms=4, label="residual (masked)")
        ax_res.set_xscale("log")
        ax_res.set_ylabel("residual [sigma]")
        bottom = ax_res
    bottom.set_xlabel("wavelength [micron]")
    bottom.xaxis.set_major_formatter(LogFormatter())
    bottom.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    parts = []
    for name, label in ((schema.LOG_STELLAR_MASS, "log M*"), (schema.LOG_SFR100, "log SFR100"),
                        (schema.AV, "A_V")):
        if name in ds:
            da = px[name]
            v = float(_quantile(da, _MED)) if schema.QUANTILE in da.dims else float(da)
            parts.append(f"{label}={_fmt(v)}")
    if schema.CHI2 in ds:
        parts.append(f"chi2_red={_fmt(float(_reduced_chi2(float(px[schema.CHI2]), float(_n_bands(px)))))}")
    if schema.SEDFIT_FLAG in ds and np.isfinite(float(px[schema.SEDFIT_FLAG])) and int(px[schema.SEDFIT_FLAG]):
        parts.append(f"flag={int(px[schema.SEDFIT_FLAG])}")
    head = f"{ds.attrs.get(schema.SOURCE_ID, '')} pixel (y={iy}, x={ix})".strip()
    ax_sed.set_title(head + ("\n" + "  ".join(parts) if parts else ""), fontsize=8)
    return fig
