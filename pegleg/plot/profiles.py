"""Profile figures: mass / light / colour / SED-quantity profiles and the M/L-colour relation.

The inputs are the Datasets of :mod:`pegleg.mass_profile`: :func:`profiles` draws a
:func:`pegleg.mass_profile.profiles` result and/or a :func:`pegleg.mass_profile.mass_profile`
result; :func:`ml_colour` draws a :func:`pegleg.mass_profile.ml_colour` result.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

from .. import schema
from ..exceptions import SchemaError
from ._style import CMAP, new_figure

R = "radius"
#: The variable that marks a :func:`pegleg.mass_profile.mass_profile` result.
MASS = "mass_density"
LIGHT = "light"
#: Quantities drawn one per panel below the surface densities and colours (in this order).
OTHER = (schema.SFR_DENSITY, schema.AV, schema.LOG_AGE_MW, schema.LOG_SSFR, schema.LOG_METALLICITY)
#: Of those, the ones drawn on a log y-axis.
LOG_Y = (schema.SFR_DENSITY,)
#: With more bands than this, only F444W (or the mass profile's band) is drawn in the light.
MAX_BANDS = 4
_MASS_COLOUR = "k"
_LIGHT_R50_COLOUR = "C1"


# -- helpers ---------------------------------------------------------------------------------------------------------
def _values(ds: xr.Dataset, name: str, dims: tuple[str, ...] = (R,)) -> np.ndarray:
    da = ds[name]
    if set(da.dims) != set(dims):
        raise SchemaError(f"plot.profiles: variable {name!r} has dims {da.dims}; expected {dims}")
    return np.asarray(da.transpose(*dims).values, dtype=float)


def _radius(ds: xr.Dataset) -> np.ndarray:
    return np.asarray(ds[R].values, dtype=float)


def _r_max(*dss: xr.Dataset | None) -> float:
    out = 0.0
    for ds in dss:
        if ds is None:
            continue
        r = ds["radius_outer"].values if "radius_outer" in ds.coords else _radius(ds)
        r = np.asarray(r, dtype=float)
        r = r[np.isfinite(r)]
        if r.size:
            out = max(out, float(r.max()) * (1.0 if "radius_outer" in ds.coords else 1.05))
    return out or 1.0


def _kpc_per_arcsec(*dss: xr.Dataset | None) -> float | None:
    """kpc per arcsec from a ``radius_kpc`` coordinate, else from ``attrs['redshift']``; None if neither."""
    for ds in dss:
        if ds is not None and "radius_kpc" in ds.coords:
            r, k = _radius(ds), np.asarray(ds["radius_kpc"].values, dtype=float)
            ok = np.isfinite(r) & np.isfinite(k) & (r > 0)
            if ok.any():
                return float(np.median(k[ok] / r[ok]))
    for ds in dss:
        z = None if ds is None else ds.attrs.get(schema.REDSHIFT)
        if z is not None and np.isfinite(float(z)) and float(z) > 0:
            from ..cosmology import kpc_per_arcsec

            return kpc_per_arcsec(float(z))
    return None


def _label(ds: xr.Dataset, name: str) -> str:
    """``long_name [units]`` of ``ds[name]``; the generic annulus description of a radial profile is
    replaced by the schema's long name of the quantity."""
    units_long = schema.PHYSICAL.get(name, ("", name))
    long_name = str(ds[name].attrs.get("long_name", units_long[1]))
    if "annulus" in long_name and name in schema.PHYSICAL:
        long_name = units_long[1]
    units = str(ds[name].attrs.get("units", units_long[0]))
    return f"{long_name} [{units}]" if units else long_name


def _positive(a: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def _triple(v) -> np.ndarray | None:
    """The [16, 50, 84] percentiles of an attribute (or a scalar repeated), None if absent."""
    if v is None:
        return None
    a = np.atleast_1d(np.asarray(v, dtype=float)).ravel()
    if a.size == 3:
        return a
    if a.size == 1:
        return np.repeat(a, 3)
    return None


def _extrapolated(mass: xr.Dataset) -> np.ndarray:
    """Annuli of a mass profile that use M/L x light: ``extrapolated``, else ``~reliable``, else beyond r_reliable."""
    if "extrapolated" in mass:
        return _values(mass, "extrapolated").astype(bool)
    if "reliable" in mass:
        return ~_values(mass, "reliable").astype(bool)
    r_rel = mass.attrs.get("r_reliable")
    if r_rel is not None and np.isfinite(float(r_rel)):
        return _radius(mass) > float(r_rel)
    return np.zeros(mass.sizes[R], bool)


def _split_plot(ax: Axes, r: np.ndarray, y: np.ndarray, extrap: np.ndarray, label: str, label_ext: str,
                **kw) -> None:
    """Solid line over the measured annuli, dashed over the extrapolated ones (joined to the last measured)."""
    meas = ~extrap
    ax.plot(r[meas], y[meas], "-", label=label, **kw)
    if extrap.any():
        idx = np.flatnonzero(extrap)
        before = np.flatnonzero(meas[:idx[0]])
        if before.size:
            idx = np.concatenate([[before[-1]], idx])
        ax.plot(r[idx], y[idx], "--", label=label_ext, **kw)


def _light_bands(names: list[str], bands: Sequence[str] | str | None, preferred: str | None) -> list[str]:
    if bands is not None:
        chosen = [bands] if isinstance(bands, str) else [str(b) for b in bands]
        missing = [b for b in chosen if b not in names]
        if missing:
            raise SchemaError(f"plot.profiles: band(s) {missing} not in the light profiles (bands: {names})")
        return chosen
    if len(names) <= MAX_BANDS:
        return names
    for b in ("F444W", preferred):
        if b in names:
            return [b]
    return [names[-1]]


# -- profiles --------------------------------------------------------------------------------------------------------
def profiles(prof: xr.Dataset | None = None, *, mass: xr.Dataset | None = None,
             bands: Sequence[str] | str | None = None, fig: Figure | None = None) -> Figure:
    """Stacked radial profiles sharing one radius axis (arcsec; kpc on top when known).

    Panels, top to bottom (each only when there is something to draw):

    1. Surface densities, log y-axis.  The stellar-mass density of a
       :func:`pegleg.mass_profile.mass_profile` result: solid over the annuli of the
       resolved fit, dashed over the extrapolated ones (M/L x light; the dashed line
       starts at the last measured annulus so the two join), a +-1 sigma band
       (``mass_density_error``; its lower edge floored at 1/100 of the profile), vertical
       lines at the medians of ``r50_mass`` (black, dotted) and ``r50_light`` (orange,
       dotted) and a grey shading beyond ``r_reliable``.  Without a mass profile, the
       ``stellar_mass_density`` of ``prof`` (solid); with both, that one is drawn thin
       and grey for comparison.  Light profiles (``light`` of ``prof``, else the mass
       profile's ``light_density``) are scaled to the mass density at the innermost
       annulus for a shape comparison -- one line per band, or only F444W with more
       than :data:`MAX_BANDS` bands; without any mass they are drawn unscaled in their
       own units.  Non-positive values are not drawn.
    2. Colours: every ``colour_<blue>_<red>`` variable [mag].
    3. M/L of the mass profile (``ml``, log y-axis; solid where measured, dashed where
       extrapolated) with the measured ``ml_measured`` +- ``ml_error`` as points.
    4. One panel per present quantity among ``sfr_density`` (log y-axis), ``av``,
       ``log_age_mw``, ``log_ssfr``, ``log_metallicity``, labelled ``long_name [units]``
       (the schema's name of the quantity when the variable only carries the generic
       annulus description of :func:`pegleg.profiles.radial_profile`).

    ``r_reliable`` is shaded on every panel.  The title gives ``source_id`` (if any) and
    the total ``log_mass_total`` (median and 16/84 range).

    Parameters
    ----------
    prof : xarray.Dataset, optional
        A :func:`pegleg.mass_profile.profiles` result, or a
        :func:`pegleg.mass_profile.mass_profile` result (recognised by ``mass_density``;
        then it is taken as ``mass``).  ``ds.pegleg.plot.profiles()`` passes ``ds`` here.
    mass : xarray.Dataset, optional
        A :func:`pegleg.mass_profile.mass_profile` result.
    bands : str or sequence of str, optional
        Bands of the light profiles to draw (default: all, or F444W if more than
        :data:`MAX_BANDS`).
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).

    Returns
    -------
    matplotlib.figure.Figure
        The panels are ``fig.axes`` in the order above (the kpc axis is a child of the
        top panel).

    Raises
    ------
    SchemaError
        Nothing to draw (none of the variables above), a mass profile given twice or
        ``mass`` without ``mass_density``, no ``radius`` dimension, unexpected dims, or
        unknown ``bands``.
    """
    if prof is not None and MASS in prof:
        if mass is not None:
            raise SchemaError("plot.profiles: two mass_profile results (the first argument has 'mass_density' and "
                              "mass= is given); pass a profiles() result first")
        prof, mass = None, prof
    if mass is not None and MASS not in mass:
        raise SchemaError(f"plot.profiles: mass= must be a mass_profile result with 'mass_density'; it has "
                          f"{sorted(map(str, mass.data_vars))}")
    if prof is None and mass is None:
        raise SchemaError("plot.profiles: pass a profiles() and/or a mass_profile() Dataset")
    for ds in (prof, mass):
        if ds is not None and R not in ds.dims:
            raise SchemaError(f"plot.profiles: the Dataset has no 'radius' dimension (dims: {dict(ds.sizes)}); pass "
                              "a pegleg.mass_profile.profiles() or mass_profile() result")
    pvars = [] if prof is None else [str(v) for v in prof.data_vars]
    colours = [v for v in pvars if v.startswith("colour_")]
    others = [v for v in OTHER if v in pvars]
    smd = schema.STELLAR_MASS_DENSITY if schema.STELLAR_MASS_DENSITY in pvars else None
    has_light = LIGHT in pvars or (mass is not None and "light_density" in mass)
    has_ml = mass is not None and "ml" in mass
    panels = (["density"] if (mass is not None or smd or has_light) else []) + (["colour"] if colours else []) \
        + (["ml"] if has_ml else []) + others
    if not panels:
        raise SchemaError(f"plot.profiles: nothing to draw; expected 'mass_density', 'stellar_mass_density', 'light', "
                          f"'colour_*' or any of {list(OTHER)}; the Dataset has {pvars}")

    ratios = [2.2 if p == "density" else 1.0 for p in panels]
    fig = new_figure(fig, (5.6, 1.0 + 1.4 * sum(ratios)))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": ratios})[:, 0]
    ax_of = dict(zip(panels, axes))
    r_max = _r_max(prof, mass)
    attrs = {} if mass is None else mass.attrs
    r_rel = attrs.get("r_reliable")
    r_rel = float(r_rel) if r_rel is not None and np.isfinite(float(r_rel)) else None
    extrap = None if mass is None else _extrapolated(mass)

    # 1. surface densities
    if "density" in ax_of:
        ax = ax_of["density"]
        ref_r = ref_d = None
        units = ""
        if mass is not None:
            r, d = _radius(mass), _values(mass, MASS)
            e = _values(mass, "mass_density_error") if "mass_density_error" in mass else np.zeros_like(d)
            e = np.where(np.isfinite(e), np.abs(e), 0.0)
            dp = _positive(d)
            ax.fill_between(r, np.maximum(dp - e, dp / 100.0), dp + e, color=_MASS_COLOUR, alpha=0.15, lw=0,
                            label="mass +-1 sigma")
            band = attrs.get("band", "")
            _split_plot(ax, r, dp, extrap, "stellar mass (resolved fit)",
                        f"stellar mass (M/L x {band} light)" if band else "stellar mass (M/L x light)",
                        color=_MASS_COLOUR, lw=1.6)
            ref_r, ref_d = r, dp
            units = str(mass[MASS].attrs.get("units", "Msun/kpc2"))
            for key, colour in (("r50_mass", _MASS_COLOUR), ("r50_light", _LIGHT_R50_COLOUR)):
                t = _triple(attrs.get(key))
                if t is not None and np.isfinite(t[1]):
                    ax.axvline(t[1], color=colour, ls=":", lw=1.1,
                               label=f"{key} = {t[1]:.2f}\" (+{t[2] - t[1]:.2f} -{t[1] - t[0]:.2f})")
        if smd is not None:
            r, d = _radius(prof), _positive(_values(prof, smd))
            if mass is None:
                ax.plot(r, d, "-", color=_MASS_COLOUR, lw=1.6, label="stellar mass (resolved fit)")
                ref_r, ref_d = r, d
                units = str(prof[smd].attrs.get("units", "Msun/kpc2"))
            else:
                ax.plot(r, d, "-", color="0.55", lw=0.9, label="stellar mass (profiles)")
        _draw_light(ax, prof, mass, bands, ref_r, ref_d)
        ax.set_yscale("log")
        ax.set_ylabel(f"surface density [{units}]" if ref_d is not None else
                      f"surface brightness [{_light_units(prof, mass)}]", fontsize=8)
        _limit_log(ax)
        legend_title = "light scaled to the central mass" if ref_d is not None and has_light else None

    # 2. colours
    if "colour" in ax_of:
        ax = ax_of["colour"]
        for i, name in enumerate(colours):
            lab = str(prof[name].attrs.get("long_name", name.removeprefix("colour_").replace("_", " - ")))
            ax.plot(_radius(prof), _values(prof, name), "o-", ms=2.5, lw=1.2, color=f"C{i}", label=lab)
        if len(colours) == 1:
            ax.set_ylabel(_label(prof, colours[0]), fontsize=8)
        else:
            ax.set_ylabel("colour [mag]", fontsize=8)
            ax.legend(fontsize=6)

    # 3. M/L
    if "ml" in ax_of:
        ax = ax_of["ml"]
        r = _radius(mass)
        _split_plot(ax, r, _positive(_values(mass, "ml")), extrap, "M/L used", "M/L extrapolated", color="C2", lw=1.4)
        if "ml_measured" in mass:
            m = _positive(_values(mass, "ml_measured"))
            me = _values(mass, "ml_error") if "ml_error" in mass else np.zeros_like(m)
            me = np.where(np.isfinite(me), np.abs(me), 0.0)
            ok = np.isfinite(m)
            ax.errorbar(r[ok], m[ok], yerr=np.vstack([np.minimum(me[ok], 0.99 * m[ok]), me[ok]]), fmt="o", ms=2.5,
                        color="0.3", lw=0.8, capsize=0, label="M/L measured")
        ax.set_yscale("log")
        ax.set_ylabel(textwrap.fill(_label(mass, "ml"), 30), fontsize=7)
        _limit_log(ax)
        _plain_log_labels(ax)
        ax.legend(fontsize=6)

    # 4. other quantities
    for name in others:
        ax = ax_of[name]
        y = _values(prof, name)
        if name in LOG_Y:
            y = _positive(y)
        ax.plot(_radius(prof), y, "o-", ms=2.5, lw=1.2, color="C4")
        if name in LOG_Y:
            ax.set_yscale("log")
            _limit_log(ax)
            _plain_log_labels(ax)
        ax.set_ylabel(textwrap.fill(_label(prof, name), 30), fontsize=7)

    for i, ax in enumerate(axes):
        if r_rel is not None and r_rel < r_max:
            ax.axvspan(r_rel, r_max, color="0.5", alpha=0.12, lw=0,
                       label=f"beyond r_reliable = {r_rel:.2f}\"" if i == 0 else None)
        ax.tick_params(which="both", labelsize=7)
    if "density" in ax_of:
        ax_of["density"].legend(fontsize=6, loc="lower left", title=legend_title, title_fontsize=6)
    axes[-1].set_xlim(0.0, r_max)
    axes[-1].set_xlabel("radius (semi-major axis) [arcsec]", fontsize=8)
    k = _kpc_per_arcsec(mass, prof)
    if k is not None and k > 0:
        top = axes[0].secondary_xaxis("top", functions=(lambda x: x * k, lambda x: x / k))
        top.set_xlabel("radius [kpc]", fontsize=8)
        top.tick_params(labelsize=7)
    title = str((mass if mass is not None else prof).attrs.get(schema.SOURCE_ID, ""))
    lm = _triple(attrs.get("log_mass_total"))
    if lm is not None and np.isfinite(lm[1]):
        title += f"  log M* = {lm[1]:.2f} (+{lm[2] - lm[1]:.2f} -{lm[1] - lm[0]:.2f})"
        if attrs.get("ml_method"):
            title += f", M/L {attrs['ml_method']}"
    if title.strip():
        fig.suptitle(title.strip(), fontsize=9)
    return fig


def _light_units(prof: xr.Dataset | None, mass: xr.Dataset | None) -> str:
    if prof is not None and LIGHT in prof:
        return str(prof[LIGHT].attrs.get("units", ""))
    if mass is not None and "light_density" in mass:
        return str(mass["light_density"].attrs.get("units", ""))
    return ""


def _draw_light(ax: Axes, prof, mass, bands, ref_r, ref_d) -> None:
    """Light profiles, scaled to ``ref_d`` at the innermost annulus when there is a mass profile."""
    if prof is not None and LIGHT in prof:
        da = prof[LIGHT]
        if set(da.dims) != {schema.BAND, R}:
            raise SchemaError(f"plot.profiles: variable 'light' has dims {da.dims}; expected ('band', 'radius')")
        names = [str(b) for b in da[schema.BAND].values]
        r = _radius(prof)
        rows = {b: np.asarray(da.sel({schema.BAND: b}).values, dtype=float) for b in names}
    elif mass is not None and "light_density" in mass:
        names = [str(mass.attrs.get("band", "light"))]
        r = _radius(mass)
        rows = {names[0]: _values(mass, "light_density")}
    else:
        return
    preferred = None if mass is None else mass.attrs.get("band")
    chosen = _light_bands(names, bands, preferred)
    cmap = colormaps[CMAP]
    for b in chosen:
        light = _positive(rows[b])
        shown = light
        if ref_d is not None:
            ok_l, ok_m = np.flatnonzero(np.isfinite(light)), np.isfinite(ref_d)
            if ok_l.size == 0 or not ok_m.any():
                continue
            j = ok_l[0]
            shown = light * float(np.interp(r[j], ref_r[ok_m], ref_d[ok_m])) / light[j]
        colour = cmap(0.2 + 0.55 * (names.index(b) / max(len(names) - 1, 1)))
        ax.plot(r, shown, "-", color=colour, lw=1.0, alpha=0.9, label=f"{b} light")


def _plain_log_labels(ax: Axes) -> None:
    """Plain numbers (not 2x10^0) on a log y-axis spanning less than a decade (else the default labels)."""
    lo, hi = ax.get_ylim()
    if not (lo > 0 and hi / lo < 10):
        return
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _limit_log(ax: Axes) -> None:
    """Keep a log y-axis within 6 decades below the highest drawn value."""
    hi = []
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        y = y[np.isfinite(y) & (y > 0)]
        if y.size:
            hi.append(y.max())
    if hi:
        lo, top = ax.get_ylim()
        floor = max(hi) * 1e-6
        if lo < floor:
            ax.set_ylim(floor, top)


# -- M/L - colour ----------------------------------------------------------------------------------------------------
def ml_colour(mlc: xr.Dataset, *, ax: Axes | None = None, fig: Figure | None = None) -> Figure:
    """log M/L against colour of a :func:`pegleg.mass_profile.ml_colour` result.

    Small translucent points: every pixel (``colour``, ``log_ml``).  The running median
    (``running_median`` at the ``colour_bin`` coordinate) with a band of +-
    ``running_scatter``; the linear fit ``intercept + slope x colour`` over the range of
    the pixels, its legend entry giving ``slope +- slope_error``; a text box with the
    ``scatter`` (dex) and ``spearman``.  Axis labels are the variables' ``long_name``
    and ``units`` (falling back to the ``colour`` and ``band`` attributes).

    Parameters
    ----------
    mlc : xarray.Dataset
        The output of :func:`pegleg.mass_profile.ml_colour`.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into (not cleared); takes precedence over ``fig``.
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    SchemaError
        ``colour`` or ``log_ml`` is missing or not over ``pixel``.
    """
    missing = [n for n in ("colour", "log_ml") if n not in mlc]
    if missing:
        raise SchemaError(f"plot.ml_colour: variable(s) {missing} not in the Dataset ({sorted(map(str, mlc.data_vars))}); "
                          "pass the Dataset returned by pegleg.mass_profile.ml_colour")
    for n in ("colour", "log_ml"):
        if mlc[n].dims != ("pixel",):
            raise SchemaError(f"plot.ml_colour: variable {n!r} has dims {mlc[n].dims}; expected ('pixel',)")
    if ax is None:
        fig = new_figure(fig, (4.8, 3.9))
        ax = fig.subplots()
    else:
        fig = ax.get_figure()
    at = mlc.attrs
    c = np.asarray(mlc["colour"].values, dtype=float)
    lml = np.asarray(mlc["log_ml"].values, dtype=float)
    ok = np.isfinite(c) & np.isfinite(lml)
    ax.scatter(c[ok], lml[ok], s=4, alpha=0.35, color="0.35", lw=0, label=f"pixels (N = {int(ok.sum())})")
    if "running_median" in mlc and "colour_bin" in mlc.coords:
        cb = np.asarray(mlc["colour_bin"].values, dtype=float)
        med = np.asarray(mlc["running_median"].values, dtype=float)
        sc = (np.asarray(mlc["running_scatter"].values, dtype=float) if "running_scatter" in mlc
              else np.full_like(med, np.nan))
        good = np.isfinite(cb) & np.isfinite(med)
        order = np.argsort(cb[good])
        cb, med, sc = cb[good][order], med[good][order], sc[good][order]
        if np.isfinite(sc).any():
            s = np.where(np.isfinite(sc), sc, 0.0)
            ax.fill_between(cb, med - s, med + s, color="C0", alpha=0.25, lw=0, label="running scatter")
        ax.plot(cb, med, "o-", color="C0", ms=3.5, lw=1.5, label="running median")
    slope, inter = at.get("slope"), at.get("intercept")
    if slope is not None and inter is not None and np.isfinite(float(slope)) and np.isfinite(float(inter)) and ok.any():
        xs = np.array([c[ok].min(), c[ok].max()])
        err = at.get("slope_error")
        err_txt = f" +- {float(err):.3f}" if err is not None and np.isfinite(float(err)) else ""
        ax.plot(xs, float(inter) + float(slope) * xs, "-", color="C3", lw=1.3,
                label=f"fit: slope = {float(slope):.3f}{err_txt}")
    parts = []
    if at.get("scatter") is not None:
        parts.append(f"scatter = {float(at['scatter']):.3f} dex")
    if at.get("spearman") is not None:
        parts.append(f"Spearman rho = {float(at['spearman']):.2f}")
    if parts:
        ax.text(0.97, 0.04, "\n".join(parts), transform=ax.transAxes, ha="right", va="bottom", fontsize=7,
                bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.8, "lw": 0.5})
    col_name = str(mlc["colour"].attrs.get("long_name", at.get("colour", "colour")))
    ax.set_xlabel(f"{col_name} [{mlc['colour'].attrs.get('units', 'mag')}]", fontsize=8)
    band = at.get("band", "")
    ml_name = str(mlc["log_ml"].attrs.get("long_name", f"log M*/L in {band}".strip()))
    ml_units = mlc["log_ml"].attrs.get("units")
    ax.set_ylabel(f"{ml_name} [{ml_units}]" if ml_units else ml_name, fontsize=8)
    ax.set_title(f"M/L - colour ({at.get('colour', col_name)}, {band})" if band else "M/L - colour", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left")
    return fig
