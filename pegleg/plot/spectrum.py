"""Spectrum figure: an observed spectrum against a calibrated model (:func:`pegleg.spectrum.compare`)."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .. import schema
from ..exceptions import SchemaError
from ._style import new_figure

_REQUIRED = (schema.FLUX, schema.ERROR, schema.MODEL_CALIBRATED, schema.CALIBRATION, schema.SPECTRUM_RESIDUAL)


def _label(name: str, rest: float) -> str:
    """Short label of a line or blend: the component nearest the (flux-weighted) rest wavelength."""
    from ..spectrum import LINES

    parts = name.split("+")
    known = [p for p in parts if p in LINES]
    if len(parts) == 1 or not known:
        return parts[0]
    return min(known, key=lambda p: abs(LINES[p] - rest)) + "+"


def _scalar(ds: xr.Dataset, name: str) -> float:
    return float(ds[name]) if name in ds else np.nan


def spectrum_comparison(result: xr.Dataset, *, fig: Figure | None = None) -> Figure:
    """Observed spectrum, calibrated model and residuals of a :func:`pegleg.spectrum.compare` result.

    Top panel: the observed ``flux`` (steps) with its 1-sigma ``error`` band, masked
    pixels omitted; the calibrated prediction ``model_calibrated`` with its model band
    (+-``calibration x model_flux_error``) and, dotted, the uncalibrated ``model_flux``.
    Emission lines measured by the comparison are marked at their observed
    wavelengths (rest wavelength x (1 + redshift)).  Middle panel: the residual
    (flux - model_calibrated) / sigma with lines at 0 and +-1; pixels left out of the
    calibration fit (near lines) are drawn hollow.  Bottom panel: the calibration
    polynomial with its 1-sigma band.  The title gives the redshift, the reduced
    chi-square before and after calibration and D4000 (observed / model).

    Parameters
    ----------
    result : xarray.Dataset
        The output of :func:`pegleg.spectrum.compare`.
    fig : matplotlib.figure.Figure, optional
        Figure to draw into (cleared first).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    SchemaError
        ``result`` lacks a variable of the comparison.
    """
    missing = [n for n in _REQUIRED if n not in result]
    if missing or schema.WAVELENGTH not in result.coords:
        raise SchemaError(f"plot.spectrum_comparison: variable(s) {missing or ['wavelength']} missing; pass the "
                          "Dataset returned by pegleg.spectrum.compare")
    wl = np.asarray(result[schema.WAVELENGTH].values, float)
    f = np.asarray(result[schema.FLUX].values, float)
    e = np.asarray(result[schema.ERROR].values, float)
    bad = np.asarray(result[schema.MASK].values, bool) if schema.MASK in result else np.zeros(wl.size, bool)
    m = np.asarray(result[schema.MODEL_CALIBRATED].values, float)
    m0 = np.asarray(result[schema.MODEL_FLUX].values, float) if schema.MODEL_FLUX in result else None
    cal = np.asarray(result[schema.CALIBRATION].values, float)
    merr = (cal * np.asarray(result[schema.MODEL_FLUX_ERROR].values, float)
            if schema.MODEL_FLUX_ERROR in result else np.zeros(wl.size))
    res = np.asarray(result[schema.SPECTRUM_RESIDUAL].values, float)
    fitpix = np.asarray(result[schema.FIT_PIXEL].values, bool) if schema.FIT_PIXEL in result else ~bad
    units = str(result[schema.FLUX].attrs.get("units", "uJy"))

    fig = new_figure(fig, (8.0, 6.2))
    ax, axr, axc = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1.2, 0.9]})
    good = ~bad
    fo = np.where(good, f, np.nan)
    eo = np.where(good, e, np.nan)
    ax.fill_between(wl, fo - eo, fo + eo, step="mid", color="0.75", lw=0, label="observed 1-sigma")
    ax.step(wl, fo, where="mid", color="k", lw=0.8, label="observed")
    if m0 is not None:
        ax.plot(wl, m0, color="C0", lw=0.8, ls=":", label="model (uncalibrated)")
    if np.any(merr > 0):
        ax.fill_between(wl, m - merr, m + merr, color="C3", alpha=0.3, lw=0, label="model 16-84%")
    ax.plot(wl, m, color="C3", lw=1.0, label="model x calibration")
    finite = np.concatenate([fo[np.isfinite(fo)], m[np.isfinite(m) & good]])
    if finite.size:
        lo, hi = float(np.percentile(finite, 0.5)), float(finite.max())
        pad = 0.05 * (hi - lo if hi > lo else 1.0)
        ax.set_ylim(min(lo, 0.0) - pad, hi + 3 * pad)
    z = result.attrs.get(schema.REDSHIFT)
    if schema.LINE in result.dims and result.sizes[schema.LINE] and z not in (None, "none"):
        top = ax.get_ylim()[1]
        for name, rest in zip(result[schema.LINE].values, result[schema.LINE_REST_WAVELENGTH].values):
            lam = float(rest) * (1 + float(z)) / 1e4
            ax.axvline(lam, color="C2", lw=0.6, ls="--", alpha=0.7)
            ax.text(lam, top, _label(str(name), float(rest)), rotation=90, fontsize=6, va="top", ha="right",
                    color="C2")
    ax.set_ylabel(f"flux density [{units}]")
    ax.legend(fontsize=6, loc="center right", ncol=2)

    axr.axhline(0, color="k", lw=0.8)
    for s in (-1, 1):
        axr.axhline(s, color="0.5", lw=0.7, ls="--")
    axr.plot(wl[fitpix], res[fitpix], "o", color="k", ms=2)
    other = ~fitpix & np.isfinite(res)
    if other.any():
        axr.plot(wl[other], res[other], "o", color="C3", mfc="none", ms=2.5, label="not in calibration fit")
        axr.legend(fontsize=6, loc="upper right")
    rr = res[np.isfinite(res)]
    if rr.size:
        lim = max(3.0, float(np.percentile(np.abs(rr), 98)) * 1.1)
        axr.set_ylim(-lim, lim)
    axr.set_ylabel("residual [sigma]")

    cerr = np.asarray(result[schema.CALIBRATION_ERROR].values, float) if schema.CALIBRATION_ERROR in result else 0 * cal
    axc.fill_between(wl, cal - cerr, cal + cerr, color="C1", alpha=0.3, lw=0)
    axc.plot(wl, cal, color="C1", lw=1.0)
    axc.set_ylabel("calibration", fontsize=8)
    axc.set_xlabel("observed wavelength [micron]")
    if np.any(good):
        axc.set_xlim(wl[good].min() - 0.02 * np.ptp(wl[good]), wl[good].max() + 0.02 * np.ptp(wl[good]))

    parts = []
    if z not in (None, "none"):
        parts.append(f"z = {float(z):.4f}")
    parts.append(f"chi2_red {_scalar(result, schema.CHI2_REDUCED_BEFORE):.2f} -> "
                 f"{_scalar(result, schema.CHI2_REDUCED_AFTER):.2f}")
    d_o, d_m = _scalar(result, schema.D4000_OBSERVED), _scalar(result, schema.D4000_MODEL)
    if np.isfinite(d_o) or np.isfinite(d_m):
        parts.append(f"D4000 {d_o:.2f} / {d_m:.2f} (obs/model)")
    source = str(result.attrs.get(schema.SPECTRUM_SOURCE, "")).split("/")[-1]
    ax.set_title((source + "\n" if source else "") + "   ".join(parts), fontsize=8)
    return fig
