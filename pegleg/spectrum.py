"""Spectra: read 1-D spectra and IFU cubes, find redshifts, measure lines, compare to models.

A *spectrum Dataset* has one dimension ``wavelength`` (observed frame, micron,
ascending) and the variables ``flux`` and ``error`` (uJy) and ``mask`` (bool, True =
do not use), with attributes ``kind = "1d"`` and ``source`` (the file it came from).
An IFU *cube Dataset* has the same variables with dims (wavelength, y, x), flux per
spaxel in uJy, ``kind = "cube"`` and the celestial WCS as header text in
``attrs["wcs"]``.  All names, dims and units live in :mod:`pegleg.schema`
(``SPECTRUM_VARIABLES``, ``CUBE_VARIABLES``).

The functions:

:func:`read`
    FITS binary tables, text/CSV files and JWST ``s3d`` cubes.
:func:`extract`
    Sum the spaxels of a cube inside a region (cube grid, or an image-grid mask
    reprojected through the two WCSs).
:func:`prism_resolution`, :func:`convolve_to_resolution`
    The NIRSpec PRISM/CLEAR resolving power and a Gaussian line-spread function of
    wavelength-dependent width.
:func:`redshift_from_lines`, :func:`line_fluxes`
    Emission-line redshift (grid search over a line template, refined by Gaussian
    fits) and Gaussian line fluxes with a local linear continuum.
:func:`d4000`
    The narrow 4000 A break (Balogh et al. 1999).
:func:`predict`, :func:`compare`
    A bagpipes model spectrum (median and 16/84 quantiles of parameter draws) and its
    comparison with an observed spectrum: convolution to the instrument resolution,
    a multiplicative calibration polynomial, chi-square, continuum residuals, D4000
    and line ratios.

Line wavelengths are vacuum rest wavelengths in Angstrom (:data:`LINES`).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from . import schema
from .exceptions import FileFormatError, FitError, SchemaError

__all__ = [
    "LINES", "read", "extract", "prism_resolution", "convolve_to_resolution",
    "redshift_from_lines", "line_fluxes", "d4000", "predict", "predict_spectrum", "compare",
]

# ---------------------------------------------------------------------------
# constants
# ---------------------------------------------------------------------------
_C_KMS = 299792.458
_FWHM_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))  # 2.3548
#: uJy um -> erg/s/cm2 at 1 um: F = A * c / lambda^2 with f_nu 1e-29 cgs and um = 1e-4 cm.
_UJY_UM_TO_CGS = 2.99792458e-15

#: Strong emission lines: name -> vacuum rest wavelength (Angstrom).
LINES: dict[str, float] = {
    "Lyalpha": 1215.67,
    "[OII]3727": 3727.09,
    "[OII]3730": 3729.88,
    "[NeIII]3870": 3869.86,
    "Hgamma": 4341.69,
    "Hbeta": 4862.68,
    "[OIII]4960": 4960.29,
    "[OIII]5008": 5008.24,
    "[NII]6550": 6549.86,
    "Halpha": 6564.61,
    "[NII]6585": 6585.27,
    "[SII]6718": 6718.29,
    "[SII]6733": 6732.67,
    "[SIII]9071": 9071.10,
    "[SIII]9533": 9533.20,
    "HeI10833": 10833.31,
    "Pabeta": 12821.59,
    "Paalpha": 18756.13,
}
# Nominal relative strengths, used ONLY to split the flux of lines closer than half a
# resolution element, which are fitted as one profile (fixed ratio): [OIII] 1:2.98 and
# [NII] 1:2.94 (atomic physics), [OII] 3729/3726 ~ 1.25 and [SII] 6716/6731 ~ 1.33 (low
# density), [NII]6585/Halpha = 0.1 (typical of low-metallicity star-forming galaxies).
_NOMINAL = {"[OII]3727": 0.8, "[OII]3730": 1.0, "[OIII]4960": 1.0 / 2.98, "[OIII]5008": 1.0,
            "[NII]6550": 0.1 / 2.94, "Halpha": 1.0, "[NII]6585": 0.1, "[SII]6718": 1.0, "[SII]6733": 0.75,
            "[SIII]9071": 1.0 / 2.44, "[SIII]9533": 1.0}

# NIRSpec PRISM/CLEAR nominal resolving power R = lambda / FWHM, every 0.1 um from 0.5 to
# 6.0 um, sampled from the JWST User Documentation dispersion curve
# ``jwst_nirspec_prism_disp.fits`` (JDox "NIRSpec Dispersers and Filters"; copy
# distributed with msaexp): R = lambda / (2.2 * dlambda/dpixel), i.e. a 2.2-pixel FWHM
# line-spread function for a uniformly illuminated shutter.  Minimum 30.1 at 1.18 um.
_PRISM_WAVE = np.round(np.arange(0.5, 6.0001, 0.1), 1)
_PRISM_R = np.array([
    90.97, 63.98, 48.91, 40.05, 34.80, 31.82, 30.40, 30.09, 30.64, 31.85, 33.62, 35.87, 38.53, 41.57,
    44.96, 48.67, 52.69, 56.99, 61.59, 66.45, 71.59, 77.00, 82.66, 88.59, 94.78, 101.22, 107.92, 114.88,
    122.10, 129.58, 137.32, 145.32, 153.58, 162.10, 170.89, 179.95, 189.28, 198.88, 208.75, 218.91,
    229.34, 240.05, 251.05, 262.34, 273.92, 285.80, 297.98, 310.45, 323.24, 336.33, 349.74, 363.47,
    377.52, 391.89, 406.60, 421.64])
_PRISM_SPLINE = None

_WAVE_NAMES = ("wavelength", "wave", "lambda", "wavelen", "wav", "lam", "wl")
_FLUX_NAMES = ("flux", "flux_density", "fnu", "f_nu", "flam", "f_lambda", "f")
_ERROR_NAMES = ("flux_err", "flux_error", "fluxerr", "err", "error", "e_flux", "eflux", "dflux",
                "sigma", "unc", "uncertainty", "noise")
_UNIT_ALIASES = {"microjy": "uJy", "microjansky": "uJy", "ujy": "uJy", "njy": "nJy", "nanojansky": "nJy",
                 "mjy": "mJy", "jy": "Jy", "jansky": "Jy", "micron": "um", "microns": "um", "mum": "um",
                 "a": "Angstrom", "aa": "Angstrom", "angstroms": "Angstrom", "ang": "Angstrom",
                 "\u00c5": "Angstrom"}
# D4000 narrow (Balogh et al. 1999): <F_nu> in 4000-4100 A over <F_nu> in 3850-3950 A (rest).
_D4000_BLUE = (3850.0, 3950.0)
_D4000_RED = (4000.0, 4100.0)


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------
def _var(name: str, data: Any, table: Mapping = schema.SPECTRUM_VARIABLES, **extra: Any) -> tuple:
    """``(dims, data, attrs)`` of spectrum variable ``name`` from the schema table."""
    dims, units, long_name = table[name]
    return dims, data, {"units": units, "long_name": long_name, **extra}


def _wave_coord(wl: np.ndarray) -> tuple:
    dims, units, long_name = schema.SPECTRUM_VARIABLES[schema.WAVELENGTH]
    return dims, np.asarray(wl, float), {"units": units, "long_name": long_name}


def _parse_unit(text: Any, what: str):
    """astropy unit from a unit string (FITS/generic spellings and a few aliases)."""
    import astropy.units as u

    if isinstance(text, u.UnitBase):
        return text
    if not isinstance(text, str) or not text.strip():
        raise SchemaError(f"{what}: expected a unit string, got {text!r}")
    s = text.strip()
    s = _UNIT_ALIASES.get(s.lower(), s)
    # "A" / "AA" / "Angstroms" inside compound units (erg/s/cm2/A): Angstrom, never Ampere
    s = re.sub(r"(?<![A-Za-z])(AA|A|Angstroms|\u00c5)(?![A-Za-z])", "Angstrom", s)
    for fmt in (None, "fits"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # UnitsWarning about non-standard spellings
                return u.Unit(s, format=fmt, parse_strict="raise")
        except (ValueError, TypeError):
            continue
    raise SchemaError(f"{what}: unknown unit {text!r}; expected e.g. 'um', 'Angstrom', 'uJy', 'Jy', "
                      "'erg/s/cm2/Angstrom'")


def _wavelength_to_um(values: np.ndarray, unit, what: str) -> np.ndarray:
    import astropy.units as u

    try:
        return (np.asarray(values, float) * unit).to_value(u.um, equivalencies=u.spectral())
    except u.UnitConversionError:
        raise SchemaError(f"{what}: unit {unit.to_string()!r} is not a wavelength (or frequency)") from None


def _flux_to_ujy(values: np.ndarray, unit, wl_um: np.ndarray, what: str) -> np.ndarray:
    """Flux density (F_nu or F_lambda) to uJy at wavelengths ``wl_um`` (broadcast on the last axis)."""
    import astropy.units as u

    values = np.asarray(values, float)
    if unit.is_equivalent(u.Jy):
        return values * unit.to(u.uJy)
    if unit.is_equivalent(u.erg / u.s / u.cm ** 2 / u.AA):
        # F_nu = F_lambda lambda^2 / c
        lam_aa = np.asarray(wl_um, float) * 1e4
        flam = values * unit.to(u.erg / u.s / u.cm ** 2 / u.AA)
        return flam * lam_aa ** 2 / 2.99792458e18 * 1e29
    raise SchemaError(f"{what}: unit {unit.to_string()!r} is not a flux density (F_nu such as uJy, "
                      "or F_lambda such as erg/s/cm2/Angstrom)")


def _resolving_power(R: Any) -> Callable[[np.ndarray], np.ndarray]:
    """R(lambda_um) from "prism", a positive number or a callable."""
    if isinstance(R, str):
        if R.strip().lower() == "prism":
            return prism_resolution
        raise SchemaError(f"resolution: unknown instrument {R!r}; expected 'prism', a number or a callable")
    if callable(R):
        def f(wl):
            out = np.broadcast_to(np.asarray(R(np.asarray(wl, float)), float), np.shape(wl))
            if not np.all(np.isfinite(out)) or np.any(out <= 0):
                raise SchemaError("resolution: the callable returned non-positive or non-finite R")
            return out
        return f
    if np.ndim(R) == 0:
        r = schema.check_positive(R, "resolution", what="resolving power R = lambda / FWHM")
        return lambda wl: np.full(np.shape(wl), r)
    raise SchemaError(f"resolution: expected 'prism', a number or a callable R(wavelength_um), got {R!r}")


def _edges(wl: np.ndarray) -> np.ndarray:
    """Pixel edges from pixel centres (mid-points; the ends extrapolated by half a pixel)."""
    wl = np.asarray(wl, float)
    mid = 0.5 * (wl[1:] + wl[:-1])
    return np.concatenate([[wl[0] - (mid[0] - wl[0])], mid, [wl[-1] + (wl[-1] - mid[-1])]])


def _check_wavelength(wl: Any, what: str = "wavelength") -> np.ndarray:
    w = np.asarray(wl, dtype=float)
    if w.ndim != 1 or w.size < 2 or not np.all(np.isfinite(w)) or np.any(np.diff(w) <= 0) or w[0] <= 0:
        raise SchemaError(f"{what}: expected a 1-D, positive, strictly increasing array (micron) "
                          "with at least two values")
    return w


def _spectrum_arrays(ds: Any, what: str = "spectrum") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(wavelength, flux, error, good) of a 1-D spectrum Dataset."""
    if not isinstance(ds, xr.Dataset):
        raise SchemaError(f"{what}: expected a 1-D spectrum Dataset (pegleg.spectrum.read), got {type(ds).__name__}")
    if ds.attrs.get(schema.SPECTRUM_KIND) == "cube" or set(ds.dims) - {schema.WAVELENGTH}:
        raise SchemaError(f"{what}: expected a 1-D spectrum with the single dim 'wavelength', got dims "
                          f"{dict(ds.sizes)}; extract a 1-D spectrum from a cube with pegleg.spectrum.extract")
    for name in (schema.FLUX, schema.ERROR):
        if name not in ds:
            raise SchemaError(f"{what}: variable {name!r} is missing (have {list(ds.data_vars)})")
    wl = _check_wavelength(ds[schema.WAVELENGTH].values, f"{what}: coordinate 'wavelength'")
    f = np.asarray(ds[schema.FLUX].values, float)
    e = np.asarray(ds[schema.ERROR].values, float)
    m = np.asarray(ds[schema.MASK].values, bool) if schema.MASK in ds else np.zeros(wl.size, bool)
    good = ~m & np.isfinite(f) & np.isfinite(e) & (e > 0)
    return wl, f, e, good


def _spectrum_dataset(wl, flux, error, mask, attrs) -> xr.Dataset:
    ds = xr.Dataset(
        {schema.FLUX: _var(schema.FLUX, flux), schema.ERROR: _var(schema.ERROR, error),
         schema.MASK: _var(schema.MASK, mask)},
        coords={schema.WAVELENGTH: _wave_coord(wl)}, attrs=attrs)
    return ds


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
def _is_fits(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(9) == b"SIMPLE  ="


def _match_column(names: Sequence[str], candidates: Sequence[str]) -> str | None:
    lower = {n.lower().strip(): n for n in names}
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def _finish_1d(path: Path, wl_um, flux_ujy, err_ujy, extra_attrs: dict) -> xr.Dataset:
    wl_um, flux_ujy, err_ujy = (np.asarray(a, float) for a in (wl_um, flux_ujy, err_ujy))
    keep = np.isfinite(wl_um) & (wl_um > 0)
    if keep.sum() < 2:
        raise FileFormatError(f"{path}: fewer than two finite positive wavelengths")
    wl_um, flux_ujy, err_ujy = wl_um[keep], flux_ujy[keep], err_ujy[keep]
    order = np.argsort(wl_um, kind="stable")
    wl_um, flux_ujy, err_ujy = wl_um[order], flux_ujy[order], err_ujy[order]
    if np.any(np.diff(wl_um) <= 0):
        raise FileFormatError(f"{path}: repeated wavelength values; expected one flux per wavelength")
    with np.errstate(invalid="ignore"):
        mask = ~(np.isfinite(flux_ujy) & np.isfinite(err_ujy) & (err_ujy > 0))
    attrs = {schema.SPECTRUM_KIND: "1d", schema.SPECTRUM_SOURCE: str(path), **extra_attrs}
    return _spectrum_dataset(wl_um, flux_ujy, err_ujy, mask, attrs)


def _read_fits_table(path: Path, hdu, flux_unit, wavelength_unit) -> xr.Dataset:
    names = list(hdu.columns.names)
    cw, cf, ce = (_match_column(names, c) for c in (_WAVE_NAMES, _FLUX_NAMES, _ERROR_NAMES))
    if ce is None:
        raise FileFormatError(f"{path} (extension {hdu.name!r}): table has wavelength column {cw!r} and flux "
                              f"column {cf!r} but no error column (expected one of {list(_ERROR_NAMES)}; "
                              f"columns: {names})")
    data = hdu.data

    def unit_of(col, given, default, what):
        if given is not None:
            return _parse_unit(given, what)
        raw = hdu.columns[col].unit
        return _parse_unit(raw if raw else default, f"{path}: column {col!r} unit (TUNIT)")

    uw = unit_of(cw, wavelength_unit, "um", "wavelength_unit")
    uf = unit_of(cf, flux_unit, "uJy", "flux_unit")
    ue = unit_of(ce, flux_unit, hdu.columns[cf].unit or "uJy", "flux_unit")

    def column(name):
        values = data[name]
        if np.iscomplexobj(values):
            raise FileFormatError(f"{path}: column {name!r} holds complex numbers; expected real values")
        try:
            return np.asarray(values, float).ravel()
        except (TypeError, ValueError) as exc:
            raise FileFormatError(f"{path}: column {name!r} is not numeric ({exc})") from None

    wl = _wavelength_to_um(column(cw), uw, f"{path}: column {cw!r}")
    flux = _flux_to_ujy(column(cf), uf, wl, f"{path}: column {cf!r}")
    err = _flux_to_ujy(column(ce), ue, wl, f"{path}: column {ce!r}")
    return _finish_1d(path, wl, flux, err, {"extension": hdu.name, "columns": f"{cw},{cf},{ce}"})


def _read_cube(path: Path, hdul, sci, flux_unit) -> xr.Dataset:
    import astropy.units as u
    from astropy.wcs import WCS, FITSFixedWarning
    from astropy.wcs.utils import proj_plane_pixel_area

    label = f"{path} (extension {sci.name!r})"
    data = np.asarray(sci.data, dtype=np.float64)
    hdr = sci.header
    names = [h.name for h in hdul]
    if "ERR" not in names:
        raise FileFormatError(f"{path}: cube has no ERR extension (extensions: {names})")
    err = np.asarray(hdul["ERR"].data, dtype=np.float64)
    if err.shape != data.shape:
        raise FileFormatError(f"{path}: ERR shape {err.shape} differs from SCI shape {data.shape}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            w = WCS(hdr, fobj=hdul)
    except Exception as exc:  # astropy raises many types for bad headers
        raise FileFormatError(f"{label}: unreadable WCS ({exc})") from None
    if w.naxis != 3 or not w.has_celestial or w.wcs.spec != 2:
        raise FileFormatError(f"{label}: expected a 3-D WCS with celestial axes 1-2 and a spectral axis 3 "
                              f"(CTYPE3 = 'WAVE'), got CTYPE {list(w.wcs.ctype)}")
    nw = data.shape[0]
    ws = w.sub([3])
    world = np.asarray(ws.all_pix2world(np.arange(nw, dtype=float), 0)[0], float)
    wunit = ws.wcs.cunit[0]
    wl = _wavelength_to_um(world, _parse_unit(str(wunit) or "m", f"{label}: CUNIT3"), f"{label}: spectral axis")
    if flux_unit is not None:
        unit = _parse_unit(flux_unit, "flux_unit")
    elif "BUNIT" in hdr:
        unit = _parse_unit(hdr["BUNIT"], f"{label}: BUNIT")
    else:
        raise SchemaError(f"{label}: no BUNIT header card; pass flux_unit= (e.g. 'MJy/sr')")
    cel = w.celestial
    area_sr = float(proj_plane_pixel_area(cel)) * (np.pi / 180.0) ** 2
    if unit.is_equivalent(u.Jy / u.sr):
        factor = float((1 * unit * u.sr).to_value(u.uJy)) * area_sr
    elif unit.is_equivalent(u.Jy):
        factor = float(unit.to(u.uJy))
    else:
        raise SchemaError(f"{label}: unit {unit.to_string()!r} is neither a surface brightness (MJy/sr) nor a "
                          "flux density per spaxel (Jy)")
    flux = data * factor
    error = err * factor
    with np.errstate(invalid="ignore"):
        mask = ~(np.isfinite(flux) & np.isfinite(error) & (error > 0))
    if "DQ" in names and hdul["DQ"].data is not None and hdul["DQ"].data.shape == data.shape:
        mask |= (np.asarray(hdul["DQ"].data).astype(np.int64) & 1) != 0  # DO_NOT_USE
    order = np.argsort(wl, kind="stable")
    if np.any(np.diff(wl[order]) <= 0):
        raise FileFormatError(f"{label}: repeated wavelength values along the spectral axis")
    ny, nx = data.shape[1:]
    pixel_scale = float(np.sqrt(area_sr)) * 180.0 / np.pi * 3600.0
    coords = {schema.WAVELENGTH: _wave_coord(wl[order]),
              schema.Y: (schema.Y, np.arange(ny), {"long_name": "spaxel row index", "units": "pixel"}),
              schema.X: (schema.X, np.arange(nx), {"long_name": "spaxel column index", "units": "pixel"})}
    t = schema.CUBE_VARIABLES
    ds = xr.Dataset({schema.FLUX: _var(schema.FLUX, flux[order], t),
                     schema.ERROR: _var(schema.ERROR, error[order], t),
                     schema.MASK: _var(schema.MASK, mask[order], t)},
                    coords=coords,
                    attrs={schema.SPECTRUM_KIND: "cube", schema.SPECTRUM_SOURCE: str(path),
                           schema.WCS_ATTR: schema.wcs_to_text(cel), schema.PIXEL_SCALE: pixel_scale,
                           "extension": sci.name, "flux_conversion": factor})
    return ds


def _read_fits(path: Path, flux_unit, wavelength_unit) -> xr.Dataset:
    from .io.fits import _open_fits

    hdul = _open_fits(path)
    try:
        tables = [h for h in hdul if getattr(h, "columns", None) is not None and h.data is not None]
        for hdu in tables:
            names = list(hdu.columns.names)
            if _match_column(names, _WAVE_NAMES) and _match_column(names, _FLUX_NAMES):
                return _read_fits_table(path, hdu, flux_unit, wavelength_unit)
        cubes = [h for h in hdul if getattr(h, "is_image", False) and h.data is not None and h.data.ndim == 3]
        sci = next((h for h in cubes if h.name == "SCI"), cubes[0] if cubes else None)
        if sci is not None:
            return _read_cube(path, hdul, sci, flux_unit)
        seen = {h.name: (list(h.columns.names) if getattr(h, "columns", None) is not None
                         else (None if h.data is None else list(h.data.shape))) for h in hdul}
        raise FileFormatError(
            f"{path}: no spectrum found; expected a binary table with wavelength ({'/'.join(_WAVE_NAMES[:3])}), "
            f"flux and error columns, or a 3-D SCI cube (extensions: {seen})")
    finally:
        hdul.close()


def _read_text(path: Path, flux_unit, wavelength_unit) -> xr.Dataset:
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise FileFormatError(f"{path}: not a readable text or FITS spectrum ({type(exc).__name__}: {exc})") from None
    lines = [ln.strip() for ln in text.splitlines()]
    comments = [ln.lstrip("#").strip() for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    if not body:
        raise FileFormatError(f"{path}: no data rows; expected columns wavelength, flux, error")
    delim = "," if "," in body[0] else None

    def split(ln):
        return [t.strip() for t in (ln.split(delim) if delim else ln.split())]

    def numeric(tokens):
        try:
            [float(t) for t in tokens]
        except ValueError:
            return False
        return True

    header = None
    if not numeric(split(body[0])):
        header, body = split(body[0]), body[1:]
    elif comments:
        cand = split(comments[-1]) if delim else comments[-1].split()
        if _match_column(cand, _WAVE_NAMES) and _match_column(cand, _FLUX_NAMES):
            header = cand
    rows = [split(ln) for ln in body]
    ncol = len(rows[0]) if rows else 0
    if not rows or any(len(r) != ncol for r in rows):
        raise FileFormatError(f"{path}: rows have different numbers of columns; expected a table of "
                              "wavelength, flux, error")
    try:
        table = np.array([[float(t) for t in r] for r in rows], dtype=float)
    except ValueError as exc:
        raise FileFormatError(f"{path}: non-numeric value in the data rows ({exc})") from None
    if header is not None:
        if len(header) != ncol:
            raise FileFormatError(f"{path}: header {header} has {len(header)} names for {ncol} columns")
        idx = [_match_column(header, c) for c in (_WAVE_NAMES, _FLUX_NAMES, _ERROR_NAMES)]
        if any(i is None for i in idx):
            raise FileFormatError(f"{path}: header {header} lacks a wavelength, flux or error column "
                                  f"(expected e.g. {_WAVE_NAMES[0]!r}, {_FLUX_NAMES[0]!r}, {_ERROR_NAMES[0]!r})")
        cols = [header.index(i) for i in idx]
    elif ncol == 3:
        cols = [0, 1, 2]
    else:
        raise FileFormatError(f"{path}: {ncol} columns and no header; expected 3 columns (wavelength, flux, "
                              "error) or a header naming them")
    uw = _parse_unit(wavelength_unit or "um", "wavelength_unit")
    uf = _parse_unit(flux_unit or "uJy", "flux_unit")
    wl = _wavelength_to_um(table[:, cols[0]], uw, "wavelength_unit")
    flux = _flux_to_ujy(table[:, cols[1]], uf, wl, "flux_unit")
    err = _flux_to_ujy(table[:, cols[2]], uf, wl, "flux_unit")
    return _finish_1d(path, wl, flux, err, {})


def read(path: str | os.PathLike, *, flux_unit: str | None = None,
         wavelength_unit: str | None = None) -> xr.Dataset:
    """Read a 1-D spectrum or an IFU cube into a spectrum Dataset.

    Recognised content (the format is detected from the bytes, not the suffix):

    * a FITS binary table (the first one with a wavelength and a flux column) with
      columns named like ``WAVELENGTH``/``WAVE``/``LAMBDA``, ``FLUX`` and
      ``FLUX_ERR``/``ERR``/``ERROR`` (case-insensitive); units from the ``TUNIT``
      cards (default um and uJy when a card is missing);
    * a text file, whitespace- or comma-separated, with a header line naming the
      columns (plain or after ``#``) or exactly 3 columns wavelength, flux, error;
      units from the arguments (default um and uJy);
    * a JWST ``s3d`` IFU cube: a 3-D ``SCI`` image (wavelength, y, x) with ``ERR``
      (optionally ``DQ``; bit 1 DO_NOT_USE is masked) and a WCS whose third axis is
      spectral.  Surface brightness (``BUNIT = MJy/sr``) is converted to uJy per spaxel
      with the spaxel solid angle from the celestial WCS
      (``astropy.wcs.utils.proj_plane_pixel_area``).

    Fluxes may be F_nu (any unit convertible to Jy) or F_lambda (convertible to
    erg/s/cm2/Angstrom); wavelengths any length (or frequency) unit.

    Parameters
    ----------
    path : str or path-like
        The file.
    flux_unit, wavelength_unit : str, optional
        Units of the flux/error and wavelength columns; override the file's ``TUNIT``
        or ``BUNIT`` cards.  ``"A"``/``"AA"`` mean Angstrom.

    Returns
    -------
    xarray.Dataset
        1-D: dim ``wavelength`` (observed, um, ascending), ``flux`` and ``error``
        (uJy), ``mask`` (True where flux or error is non-finite or error <= 0);
        attrs ``kind = "1d"``, ``source``.  Cube: ``flux``, ``error``, ``mask`` with
        dims (wavelength, y, x), attrs ``kind = "cube"``, ``source``, ``wcs`` (the
        celestial WCS as header text) and ``pixel_scale`` (arcsec per spaxel).

    Raises
    ------
    FileFormatError
        Missing file, unreadable content, no wavelength/flux/error columns, a cube
        without ``ERR`` or a spectral WCS (the message names the file and what was
        expected).
    SchemaError
        Unknown units, or units that are not a wavelength / flux density.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise FileFormatError(f"read: expected a file path, got {type(path).__name__} {path!r}")
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileFormatError(f"{p}: file not found; expected a FITS or text spectrum")
    if p.is_dir():
        raise FileFormatError(f"{p}: is a folder; expected a FITS or text spectrum file")
    if _is_fits(p):
        return _read_fits(p, flux_unit, wavelength_unit)
    return _read_text(p, flux_unit, wavelength_unit)


def _as_celestial_wcs(wcs: Any, what: str):
    from astropy.io import fits
    from astropy.wcs import WCS, FITSFixedWarning

    if isinstance(wcs, str):
        return schema.wcs_from_text(wcs)
    try:
        if isinstance(wcs, fits.Header):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FITSFixedWarning)
                wcs = WCS(wcs)
        if isinstance(wcs, WCS) and wcs.has_celestial:
            return wcs.celestial
    except Exception as exc:
        raise SchemaError(f"{what}: unreadable WCS ({exc})") from None
    raise SchemaError(f"{what}: expected an astropy WCS, a FITS header or header text with a celestial WCS, "
                      f"got {type(wcs).__name__}")


def extract(cube: xr.Dataset, region: Any, *, image_wcs: Any = None,
            max_masked_fraction: float = 0.0) -> xr.Dataset:
    """Sum the spaxels of an IFU cube inside a region into a 1-D spectrum.

    Parameters
    ----------
    cube : xarray.Dataset
        A cube from :func:`read` (``kind = "cube"``).
    region : array_like of bool
        Without ``image_wcs``: a (y, x) mask on the cube's spaxel grid.  With
        ``image_wcs``: a (Y, X) mask on the pixel grid of an image (e.g. a segment of a
        stamp Dataset), reprojected to the cube by nearest pixel: every spaxel centre
        is mapped to the sky with the cube's celestial WCS and then to the image with
        ``image_wcs``; the spaxel is in the region when the image pixel containing that
        position is True (positions off the image are outside).  No fractional overlap
        is computed, so the summed area matches the image region only to within the
        spaxels along its edge.
    image_wcs : astropy.wcs.WCS, astropy.io.fits.Header or str, optional
        Celestial WCS of the image grid of ``region`` (header text as stored in a stamp
        Dataset's ``attrs["wcs"]`` works).
    max_masked_fraction : float
        A wavelength of the extracted spectrum is masked when more than this fraction
        of the region's spaxels are masked there (default 0: any masked spaxel masks the
        wavelength).  Unmasked spaxels are summed; masked ones contribute nothing.

    Returns
    -------
    xarray.Dataset
        A 1-D spectrum: ``flux`` = sum over the region, ``error`` = quadrature sum
        (neighbouring spaxels of resampled cubes are correlated, so this underestimates
        the true error), ``mask``; attrs ``kind = "1d"``, ``source``, ``n_spaxels``.

    Raises
    ------
    SchemaError
        ``cube`` is not a cube, the region has the wrong shape or selects no spaxel,
        or the WCS is missing or unreadable.
    """
    if not isinstance(cube, xr.Dataset) or cube.attrs.get(schema.SPECTRUM_KIND) != "cube":
        raise SchemaError("extract: expected a cube Dataset from pegleg.spectrum.read (attrs kind='cube')")
    ny, nx = cube.sizes[schema.Y], cube.sizes[schema.X]
    reg = np.asarray(region)
    if reg.dtype != bool:
        raise SchemaError(f"extract: region must be a boolean mask, got dtype {reg.dtype}")
    if image_wcs is None:
        if reg.shape != (ny, nx):
            raise SchemaError(f"extract: region shape {reg.shape} differs from the cube's spaxel grid {(ny, nx)}; "
                              "pass image_wcs= for a mask on an image grid")
        sel = reg
    else:
        if reg.ndim != 2:
            raise SchemaError(f"extract: region must be a 2-D (y, x) mask, got shape {reg.shape}")
        if schema.WCS_ATTR not in cube.attrs:
            raise SchemaError("extract: the cube has no 'wcs' attribute to reproject an image region")
        wc = schema.wcs_from_text(cube.attrs[schema.WCS_ATTR])
        wi = _as_celestial_wcs(image_wcs, "image_wcs")
        yy, xx = np.mgrid[0:ny, 0:nx]
        sky = wc.pixel_to_world(xx.ravel().astype(float), yy.ravel().astype(float))
        px, py = wi.world_to_pixel(sky)
        ix, iy = np.round(np.asarray(px, float)).astype(np.int64), np.round(np.asarray(py, float)).astype(np.int64)
        inside = (ix >= 0) & (ix < reg.shape[1]) & (iy >= 0) & (iy < reg.shape[0])
        sel = np.zeros(ny * nx, bool)
        sel[inside] = reg[iy[inside], ix[inside]]
        sel = sel.reshape(ny, nx)
    n = int(sel.sum())
    if n == 0:
        raise SchemaError("extract: the region selects no spaxel of the cube")
    f = cube[schema.FLUX].transpose(schema.WAVELENGTH, schema.Y, schema.X).values[:, sel]
    e = cube[schema.ERROR].transpose(schema.WAVELENGTH, schema.Y, schema.X).values[:, sel]
    m = cube[schema.MASK].transpose(schema.WAVELENGTH, schema.Y, schema.X).values[:, sel]
    flux = np.where(m, 0.0, f).sum(axis=1)
    err = np.sqrt(np.where(m, 0.0, e ** 2).sum(axis=1))
    masked = m.mean(axis=1) > max_masked_fraction
    masked |= ~np.isfinite(flux) | ~(err > 0)
    attrs = {schema.SPECTRUM_KIND: "1d", schema.SPECTRUM_SOURCE: cube.attrs.get(schema.SPECTRUM_SOURCE, ""),
             "n_spaxels": n,
             "extracted_from": "cube" if image_wcs is None else "cube (image-grid region, nearest pixel)"}
    return _spectrum_dataset(cube[schema.WAVELENGTH].values, flux, err, masked, attrs)


# ---------------------------------------------------------------------------
# resolution
# ---------------------------------------------------------------------------
def prism_resolution(wavelength_um: Any) -> np.ndarray:
    """Nominal resolving power R = lambda / FWHM of NIRSpec PRISM/CLEAR.

    Tabulated every 0.1 um over 0.5-6.0 um from the JWST User Documentation
    dispersion curve ``jwst_nirspec_prism_disp.fits`` (JDox, "NIRSpec Dispersers and
    Filters"), where R = lambda / (2.2 dlambda/dpixel) for a uniformly illuminated
    shutter, and interpolated with a cubic spline in log R (within 0.05% of the full
    1001-point curve).  R falls from 91 at 0.5 um to a minimum of 30.1 at 1.18 um and
    rises to 286 at 5.0 um.  Outside 0.5-6.0 um the end values are used.  In-flight
    line-spread functions of compact sources are narrower (R higher by up to ~1.3-1.5,
    de Graaff et al. 2025; Shajib et al. 2025), which :func:`line_fluxes` absorbs by
    fitting a width scale.

    Parameters
    ----------
    wavelength_um : array_like
        Observed wavelength(s) in micron.

    Returns
    -------
    numpy.ndarray
        R at each wavelength (same shape).
    """
    global _PRISM_SPLINE
    if _PRISM_SPLINE is None:
        from scipy.interpolate import CubicSpline

        _PRISM_SPLINE = CubicSpline(_PRISM_WAVE, np.log(_PRISM_R))
    wl = np.clip(np.asarray(wavelength_um, dtype=float), _PRISM_WAVE[0], _PRISM_WAVE[-1])
    return np.exp(_PRISM_SPLINE(wl))


def _kernel_chunks(wl: np.ndarray, sigma: np.ndarray, edges: np.ndarray, nsig: float = 5.0,
                   max_nnz: int = 2_000_000):
    """Yield (rows, sparse K) blocks of the row-normalised bin-integrated Gaussian kernel."""
    from scipy import sparse
    from scipy.special import ndtr

    n_in = edges.size - 1
    lo = np.clip(np.searchsorted(edges, wl - nsig * sigma, side="right") - 1, 0, n_in - 1)
    hi = np.clip(np.searchsorted(edges, wl + nsig * sigma, side="left"), 1, n_in)
    counts = hi - lo
    start = 0
    while start < wl.size:
        csum = np.cumsum(counts[start:])
        stop = start + max(1, int(np.searchsorted(csum, max_nnz, side="right")))
        rows = np.arange(start, stop)
        cnt = counts[rows]
        r = np.repeat(np.arange(rows.size), cnt)
        offs = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        c = np.arange(cnt.sum()) - np.repeat(offs, cnt) + np.repeat(lo[rows], cnt)
        mu, sg = wl[rows][r], sigma[rows][r]
        w = ndtr((edges[c + 1] - mu) / sg) - ndtr((edges[c] - mu) / sg)
        norm = np.bincount(r, weights=w, minlength=rows.size)
        w = w / np.where(norm > 0, norm, 1.0)[r]
        yield rows, sparse.csr_matrix((w, (r, c)), shape=(rows.size, n_in))
        start = stop


def convolve_to_resolution(wavelength: Any, flux: Any, R: Any, *, input_resolution: Any = None) -> np.ndarray:
    """Convolve a spectrum with a Gaussian line-spread function of FWHM = lambda / R(lambda).

    Each output pixel i is the average of the input, treated as constant within each
    input pixel, weighted by a Gaussian centred on lambda_i with
    sigma_i = lambda_i / (2.3548 R(lambda_i)) (the Gaussian integrated exactly over
    every input pixel, so a line narrower than a pixel keeps its flux).  Rows of the
    kernel are normalised to 1, so a flat spectrum is unchanged, and the integrated flux
    of a line is conserved to second order in the change of sigma across the line.
    Near the ends of the grid the truncated kernel is renormalised.  The kernel is a
    sparse band (+-5 sigma), built in blocks, so grids of any length are fine.

    Parameters
    ----------
    wavelength : array_like (W,)
        Strictly increasing wavelengths (micron).
    flux : array_like (..., W)
        Flux density on ``wavelength`` (any unit; F_nu or F_lambda); leading axes are
        convolved independently.  NaNs propagate to every output pixel whose kernel
        touches them.
    R : "prism", float, callable or array_like (W,)
        Target resolving power: NIRSpec PRISM (:func:`prism_resolution`), a constant,
        a function R(wavelength_um), or values on ``wavelength``.
    input_resolution : float, callable or array_like, optional
        Resolving power the input already has; the kernel width is then
        sqrt(sigma_target^2 - sigma_input^2) (zero where the input is already coarser).

    Returns
    -------
    numpy.ndarray
        The convolved flux, same shape as ``flux``.
    """
    wl = _check_wavelength(wavelength)
    f = np.asarray(flux, dtype=float)
    if f.shape[-1:] != wl.shape:
        raise SchemaError(f"flux: last axis has length {f.shape[-1:]} but wavelength has {wl.size} values")

    def r_on_grid(r, what):
        if isinstance(r, (str, int, float, np.floating, np.integer)) or callable(r):
            return _resolving_power(r)(wl)
        arr = np.asarray(r, dtype=float)
        if arr.shape != wl.shape or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise SchemaError(f"{what}: expected 'prism', a positive number, a callable or {wl.size} positive values")
        return arr

    sigma = wl / (_FWHM_SIGMA * r_on_grid(R, "R"))
    if input_resolution is not None:
        s_in = wl / (_FWHM_SIGMA * r_on_grid(input_resolution, "input_resolution"))
        sigma = np.sqrt(np.clip(sigma ** 2 - s_in ** 2, 0.0, None))
    edges = _edges(wl)
    # a zero-width kernel is the identity: floor sigma at 1e-3 of the local pixel
    sigma = np.maximum(sigma, 1e-3 * np.diff(edges))
    flat = f.reshape(-1, wl.size)
    out = np.empty_like(flat)
    for rows, K in _kernel_chunks(wl, sigma, edges):
        out[:, rows] = (K @ flat.T).T
    return out.reshape(f.shape)


# ---------------------------------------------------------------------------
# lines
# ---------------------------------------------------------------------------
def _line_table(lines: Any) -> dict[str, float]:
    if lines is None:
        return dict(LINES)
    if isinstance(lines, str):
        lines = [lines]
    if isinstance(lines, Mapping):
        out = {}
        for k, v in lines.items():
            out[str(k)] = schema.check_positive(v, f"lines[{k!r}]", what="rest wavelength (Angstrom)")
        if not out:
            raise SchemaError("lines: empty")
        return out
    try:
        names = list(lines)
    except TypeError:
        raise SchemaError(f"lines: expected None, line names or a mapping name -> Angstrom, got {lines!r}") from None
    unknown = [n for n in names if n not in LINES]
    if unknown or not names:
        raise SchemaError(f"lines: unknown line name(s) {unknown}; known: {list(LINES)} "
                          "(or pass a mapping name -> vacuum rest wavelength in Angstrom)")
    return {n: LINES[n] for n in names}


def _binavg_gauss(lo: np.ndarray, hi: np.ndarray, mu: Any, sigma: Any) -> np.ndarray:
    """Unit-area Gaussian averaged over pixels [lo, hi] (1/um); broadcasts mu/sigma on the last axis."""
    from scipy.special import ndtr

    lo, hi = lo[..., :, None], hi[..., :, None]
    return (ndtr((hi - mu) / sigma) - ndtr((lo - mu) / sigma)) / (hi - lo)


class _FitLine:
    """One free amplitude: a line, or lines closer than half a resolution element (fixed ratios)."""

    def __init__(self, names, rest, weight):
        self.names = list(names)
        self.rest = np.asarray(rest, float)
        w = np.asarray(weight, float)
        self.weight = w / w.sum()

    @property
    def rest_eff(self) -> float:
        return float(np.sum(self.rest * self.weight))


def _group(items: list, z: float, rfun, threshold: float, key=lambda it: it) -> list[list]:
    """Chain-group items (sorted by observed wavelength) closer than ``threshold`` FWHM."""
    groups: list[list] = []
    for it in sorted(items, key=lambda it: key(it)):
        lam = key(it) * (1 + z) / 1e4
        if groups:
            prev = key(groups[-1][-1]) * (1 + z) / 1e4
            fwhm = lam / float(rfun(lam))
            if lam - prev < threshold * fwhm:
                groups[-1].append(it)
                continue
        groups.append([it])
    return groups


def _covered(table: dict[str, float], z: float, wl: np.ndarray, good: np.ndarray, rfun) -> dict[str, float]:
    """Lines whose observed centre has >= 2 good pixels within +-1 FWHM."""
    out = {}
    wg = wl[good]
    for name, rest in table.items():
        lam = rest * (1 + z) / 1e4
        if lam < wg[0] or lam > wg[-1]:
            continue
        fwhm = lam / float(rfun(lam))
        if np.count_nonzero(np.abs(wg - lam) <= fwhm) >= 2:
            out[name] = rest
    return out


def _fit_lines_from_table(table: dict[str, float], z: float, rfun) -> list[_FitLine]:
    groups = _group(list(table.items()), z, rfun, 0.5, key=lambda it: it[1])
    return [_FitLine([n for n, _ in g], [r for _, r in g], [_NOMINAL.get(n, 1.0) for n, _ in g]) for g in groups]


class _LineModel:
    """Joint Gaussian fit of lines + one linear continuum per window (variable projection).

    Nonlinear parameters: u = ln((1 + z) / (1 + z0)) (a common shift) and a width scale s
    (FWHM = s lambda / R); linear: line amplitudes (uJy um) and continua.
    """

    def __init__(self, wl, f, e, good, fitlines: list[_FitLine], z0: float, rfun, window_fwhm: float):
        self.z0, self.rfun, self.lines = z0, rfun, fitlines
        edges = _edges(wl)
        centres = np.array([fl.rest_eff * (1 + z0) / 1e4 for fl in fitlines])
        fwhm = centres / rfun(centres)
        spread = np.array([(fl.rest.max() - fl.rest.min()) * (1 + z0) / 1e4 for fl in fitlines])
        half = window_fwhm * fwhm + spread
        order = np.argsort(centres)
        win_of = np.empty(len(fitlines), int)
        bounds: list[list[float]] = []
        for k in order:
            lo, hi = centres[k] - half[k], centres[k] + half[k]
            if bounds and lo <= bounds[-1][1]:
                bounds[-1][1] = max(bounds[-1][1], hi)
            else:
                bounds.append([lo, hi])
            win_of[k] = len(bounds) - 1
        pix_win = np.full(wl.size, -1)
        for w, (lo, hi) in enumerate(bounds):
            pix_win[good & (wl >= lo) & (wl <= hi)] = w
        use = pix_win >= 0
        self.idx = np.flatnonzero(use)
        self.win = pix_win[use]
        self.win_of, self.bounds = win_of, np.array(bounds)
        self.wl, self.lo, self.hi = wl[use], edges[:-1][use], edges[1:][use]
        self.f, self.e = f[use], e[use]
        self.centres, self.fwhm = centres, fwhm
        nwin = len(bounds)
        # continuum: linear in each window; merged (long) windows get a continuous
        # piecewise-linear continuum with a knot every ~2 window_fwhm FWHM
        cols, self.knots, self.cont_start = [], [], []
        start = 0
        for w in range(nwin):
            a, b = self.bounds[w]
            fw = np.median(fwhm[win_of == w])
            nseg = max(1, int(round((b - a) / (2.0 * window_fwhm * fw)))) if np.isfinite(window_fwhm) else 1
            knots = np.linspace(a, b, nseg + 1)
            sel = self.win == w
            for j in range(knots.size):
                col = np.zeros(self.wl.size)
                col[sel] = np.interp(self.wl[sel], knots, np.eye(knots.size)[j])
                cols.append(col)
            self.knots.append(knots)
            self.cont_start.append(start)
            start += knots.size
        self.cont = np.column_stack(cols)
        self.window_fwhm = window_fwhm
        self.n_lines, self.n_win = len(fitlines), nwin
        self.n_lin = self.n_lines + start

    def continuum_at(self, beta: np.ndarray, lam: float, w: int) -> float:
        """The fitted continuum of window ``w`` at ``lam`` (um)."""
        k = self.knots[w]
        c = beta[self.n_lines + self.cont_start[w]: self.n_lines + self.cont_start[w] + k.size]
        return float(np.interp(lam, k, c))

    def design(self, u: float, s: float) -> np.ndarray:
        if not hasattr(self, "_comp_rest"):
            self._comp_rest = np.concatenate([fl.rest for fl in self.lines])
            W = np.zeros((self._comp_rest.size, self.n_lines))
            i = 0
            for k, fl in enumerate(self.lines):
                W[i:i + fl.rest.size, k] = fl.weight
                i += fl.rest.size
            self._comp_weight = W
        mu = self._comp_rest * ((1 + self.z0) * np.exp(u) / 1e4)
        sig = s * mu / (_FWHM_SIGMA * self.rfun(mu))
        return np.column_stack([_binavg_gauss(self.lo, self.hi, mu, sig) @ self._comp_weight, self.cont])

    def solve(self, u: float, s: float):
        A = self.design(u, s) / self.e[:, None]
        b = self.f / self.e
        beta, *_ = np.linalg.lstsq(A, b, rcond=None)
        return beta, b - A @ beta, A

    def fit(self, fit_z: bool, fit_width: bool, u_bound: float, s0: float = 1.0, s_bounds=(0.5, 2.0),
            u0: float | None = None):
        """Least-squares fit; the shift starts from the best of a 25-point scan over +-u_bound
        (or from ``u0``)."""
        from scipy.optimize import least_squares

        free = [fit_z, fit_width]
        theta0 = np.array([0.0, s0])
        if fit_z:
            if u0 is None:
                scan = np.linspace(-u_bound, u_bound, 25)
                cost = [float(np.sum(self.solve(v, s0)[1] ** 2)) for v in scan]
                theta0[0] = scan[int(np.argmin(cost))]
            else:
                theta0[0] = float(np.clip(u0, -u_bound, u_bound))

        def full(t):
            th = theta0.copy()
            th[np.array(free)] = t
            return th

        def resid(t):
            return self.solve(*full(t))[1]

        if any(free):
            lb = np.array([-u_bound, s_bounds[0]])[np.array(free)]
            ub = np.array([u_bound, s_bounds[1]])[np.array(free)]
            x0 = np.clip(theta0[np.array(free)], lb + 1e-9 * (ub - lb), ub - 1e-9 * (ub - lb))
            x_scale = np.array([u_bound, 0.1])[np.array(free)]
            best = least_squares(resid, x0, bounds=(lb, ub), x_scale=x_scale, method="trf")
            theta = full(best.x)
        else:
            theta = theta0
        beta, r, A = self.solve(*theta)
        # covariance of (free nonlinear, linear) parameters from the full Jacobian
        cols = []
        steps = (max(u_bound, 1e-4) * 1e-3, 1e-4)
        for i, isfree in enumerate(free):
            if not isfree:
                continue
            tp, tm = theta.copy(), theta.copy()
            tp[i] += steps[i]
            tm[i] -= steps[i]
            mp = self.design(*tp) @ beta / self.e
            mm = self.design(*tm) @ beta / self.e
            cols.append((mp - mm) / (2 * steps[i]))
        J = np.column_stack(cols + [A]) if cols else A
        cov = np.linalg.pinv(J.T @ J)
        nfree = len(cols)
        chi2 = float(r @ r)
        dof = max(r.size - J.shape[1], 1)
        return {"theta": theta, "beta": beta, "cov_lin": cov[nfree:, nfree:], "cov": cov, "nfree": nfree,
                "free": free, "chi2": chi2, "dof": dof}


def _fit_window_shifts(model: _LineModel, f, e, good, wl, width: float, u_bound: float,
                       u0: float) -> dict[int, tuple]:
    """Per-window redshift (u, u_err) with the width fixed (each window fitted alone)."""
    out = {}
    for w in range(model.n_win):
        members = np.flatnonzero(model.win_of == w)
        sub = _LineModel(wl, f, e, good & (wl >= model.bounds[w, 0]) & (wl <= model.bounds[w, 1]),
                         [model.lines[k] for k in members], model.z0, model.rfun, model.window_fwhm)
        if sub.wl.size < sub.n_lin + 2:
            continue
        res = sub.fit(True, False, u_bound, s0=width, u0=u0)
        out[w] = (float(res["theta"][0]), float(np.sqrt(max(res["cov"][0, 0], 0.0))), res["beta"][: sub.n_lines])
    return out


def line_fluxes(spectrum: xr.Dataset, z: float, lines: Any = None, *, resolution: Any = "prism",
                fit_centre: bool = True, fit_width: bool = True, window_fwhm: float = 4.0,
                blend_fwhm: float = 1.0) -> xr.Dataset:
    """Gaussian emission-line fluxes at the instrument resolution with a local linear continuum.

    Every line covered by the good pixels of ``spectrum`` at redshift ``z`` is modelled
    as a Gaussian of FWHM = s lambda / R(lambda), and every group of overlapping fit
    windows (+-``window_fwhm`` FWHM around each line) gets its own local linear
    continuum (continuous piecewise-linear, one segment per ~2 ``window_fwhm`` FWHM,
    when several windows merge into a long one).
    All lines are fitted jointly (weighted least squares): the amplitudes and
    continua are linear, a common redshift shift (within +-1 FWHM, ``fit_centre``)
    and a common width scale s in [0.5, 2] (``fit_width``; s < 1 when the in-flight
    line-spread function is narrower than nominal) are fitted by non-linear least
    squares.  Uncertainties come from the full Jacobian at the optimum (not rescaled
    by the reduced chi-square, which is returned in the attributes).

    Blends: lines closer than half a FWHM are one profile with nominal ratios
    ([OIII] 1:2.98, [NII] 1:2.94, [OII], [SII] doublets, [NII]6585/Halpha = 0.1);
    lines closer than ``blend_fwhm`` FWHM are fitted with free amplitudes but reported
    only as their sum, a *blend* (``line_blend`` True; at PRISM resolution always
    ``[NII]6550+Halpha+[NII]6585``, and ``[OIII]4960+[OIII]5008`` below R ~ 100),
    whose flux is well measured while its split is not.  The blend thresholds use the
    nominal R.

    Parameters
    ----------
    spectrum : xarray.Dataset
        A 1-D spectrum (:func:`read`, :func:`extract`).
    z : float
        Redshift.
    lines : sequence of str or mapping, optional
        Names from :data:`LINES` (default all) or a mapping name -> vacuum rest
        wavelength (Angstrom).
    resolution : "prism", float or callable
        Resolving power R(lambda_um) of the spectrum.
    fit_centre, fit_width : bool
        Fit the common redshift shift / width scale (else fixed at ``z`` / nominal R).
    window_fwhm : float
        Half-width of each line's fit window in FWHM.
    blend_fwhm : float
        Lines closer than this many FWHM are reported as one blend.

    Returns
    -------
    xarray.Dataset
        Dim ``line`` (entry names; blends joined with ``+``): ``line_flux`` and
        ``line_flux_error`` (erg/s/cm2, F = integral F_nu dlambda x c / lambda^2),
        ``line_flux_ujy_um`` and its error (uJy um), ``line_snr``, ``line_centre``
        and ``line_centre_error`` (um; the centre fitted in the line's window alone),
        ``line_continuum`` (uJy), ``line_ew_rest`` (Angstrom), coordinates
        ``line_rest_wavelength``, ``line_components``, ``line_blend``.  Attributes:
        ``redshift`` (fitted), ``redshift_error``, ``redshift_input``, ``width_scale``,
        ``width_scale_error``, ``chi2_reduced``.

    Raises
    ------
    FitError
        No line of ``lines`` is covered at ``z``.
    SchemaError
        Bad spectrum, redshift or line list.
    """
    wl, f, e, good = _spectrum_arrays(spectrum)
    z = float(z)
    if not np.isfinite(z) or z < 0:
        raise SchemaError(f"z: expected a finite redshift >= 0, got {z!r}")
    rfun = _resolving_power(resolution)
    table = _line_table(lines)
    cov_table = _covered(table, z, wl, good, rfun)
    if not cov_table:
        span = f"{wl[good].min():.3f}-{wl[good].max():.3f} um" if good.any() else "none"
        raise FitError(f"line_fluxes: none of the lines {list(table)} is covered by the good pixels "
                       f"({span}) at z = {z:.4f}")
    fitlines = _fit_lines_from_table(cov_table, z, rfun)
    model = _LineModel(wl, f, e, good, fitlines, z, rfun, window_fwhm)
    npar = model.n_lin + int(fit_centre) + int(fit_width)
    if model.wl.size <= npar:
        raise FitError(f"line_fluxes: {model.wl.size} good pixels in the line windows for {npar} parameters")
    u_bound = float(np.max(1.0 / rfun(model.centres)))
    res = model.fit(fit_centre, fit_width, u_bound)
    u, s = res["theta"]
    cov_full = res["cov"]
    z_fit = (1 + z) * np.exp(u) - 1
    u_err = float(np.sqrt(max(cov_full[0, 0], 0.0))) if fit_centre else 0.0
    s_err = float(np.sqrt(max(cov_full[res["nfree"] - 1, res["nfree"] - 1], 0.0))) if fit_width else 0.0
    beta, cov = res["beta"], res["cov_lin"]
    amps = beta[: model.n_lines]
    # per-window centres
    shifts = _fit_window_shifts(model, f, e, good, wl, s, u_bound, u)

    entries = _group(list(range(model.n_lines)), z_fit, rfun, blend_fwhm, key=lambda k: fitlines[k].rest_eff)
    rows = []
    for members in entries:
        names = [n for k in members for n in fitlines[k].names]
        v = np.zeros(beta.size)
        v[members] = 1.0
        a = float(v @ beta)
        a_err = float(np.sqrt(max(v @ cov @ v, 0.0)))
        # flux-weighted rest wavelength (the fitted amplitudes when positive, else equal weights)
        wts = np.clip(amps[members], 0, None)
        wts = wts if wts.sum() > 0 else np.ones(len(members))
        rest = float(np.sum([fitlines[k].rest_eff * w for k, w in zip(members, wts)]) / wts.sum())
        lam = rest * (1 + z_fit) / 1e4
        w = int(model.win_of[members[0]])
        cont = model.continuum_at(beta, lam, w)
        if w in shifts:
            uw, uwe, _ = shifts[w]
            centre = rest * (1 + z) * np.exp(uw) / 1e4
            centre_err = centre * uwe
        else:
            centre, centre_err = np.nan, np.nan
        conv = _UJY_UM_TO_CGS / lam ** 2
        with np.errstate(divide="ignore", invalid="ignore"):
            ew = a / cont * 1e4 / (1 + z_fit) if cont > 0 else np.nan
        rows.append(("+".join(names), rest, "+".join(names), len(names) > 1, a * conv, a_err * conv, a, a_err,
                     a / a_err if a_err > 0 else np.nan, centre, centre_err, float(cont), ew))
    cols = list(zip(*rows))
    S = schema
    ds = xr.Dataset(
        {S.LINE_FLUX: _var(S.LINE_FLUX, np.array(cols[4])),
         S.LINE_FLUX_ERROR: _var(S.LINE_FLUX_ERROR, np.array(cols[5])),
         S.LINE_FLUX_UJY_UM: _var(S.LINE_FLUX_UJY_UM, np.array(cols[6])),
         S.LINE_FLUX_UJY_UM_ERROR: _var(S.LINE_FLUX_UJY_UM_ERROR, np.array(cols[7])),
         S.LINE_SNR: _var(S.LINE_SNR, np.array(cols[8])),
         S.LINE_CENTRE: _var(S.LINE_CENTRE, np.array(cols[9])),
         S.LINE_CENTRE_ERROR: _var(S.LINE_CENTRE_ERROR, np.array(cols[10])),
         S.LINE_CONTINUUM: _var(S.LINE_CONTINUUM, np.array(cols[11])),
         S.LINE_EW_REST: _var(S.LINE_EW_REST, np.array(cols[12]))},
        coords={S.LINE: (S.LINE, np.array(cols[0], dtype=object), {"long_name": "line or blend", "units": "1"}),
                S.LINE_REST_WAVELENGTH: _var(S.LINE_REST_WAVELENGTH, np.array(cols[1])),
                S.LINE_COMPONENTS: _var(S.LINE_COMPONENTS, np.array(cols[2], dtype=object)),
                S.LINE_BLEND: _var(S.LINE_BLEND, np.array(cols[3], dtype=bool))},
        attrs={S.REDSHIFT: float(z_fit), "redshift_error": float((1 + z_fit) * u_err), "redshift_input": z,
               "width_scale": float(s), "width_scale_error": s_err,
               "chi2_reduced": res["chi2"] / res["dof"], "n_pixels": int(model.wl.size),
               "resolution": resolution if isinstance(resolution, str) else repr(resolution)})
    return ds


# ---------------------------------------------------------------------------
# redshift
# ---------------------------------------------------------------------------
def _running_median(wl: np.ndarray, f: np.ndarray, good: np.ndarray, half_width: np.ndarray,
                    n_iter: int = 2, clip: float = 3.0, e: np.ndarray | None = None) -> np.ndarray:
    """Running median of the good pixels within +-half_width (um), clipping positive outliers."""
    wg, fg = wl[good], f[good].copy()
    eg = e[good] if e is not None else None
    use = np.ones(wg.size, bool)
    lo = np.searchsorted(wg, wg - half_width[good], side="left")
    hi = np.searchsorted(wg, wg + half_width[good], side="right")
    cont = np.empty(wg.size)
    for it in range(n_iter + 1):
        for i in range(wg.size):
            seg = fg[lo[i]:hi[i]][use[lo[i]:hi[i]]]
            cont[i] = np.median(seg) if seg.size else np.median(fg[lo[i]:hi[i]])
        if it == n_iter:
            break
        r = fg - cont
        scale = eg if eg is not None else np.full(wg.size, 1.4826 * np.median(np.abs(r)) or 1.0)
        use = r < clip * scale
    out = np.interp(wl, wg, cont)
    return out


def _zgrid_score(lnz: np.ndarray, rest: np.ndarray, wl, r, e, good, rfun) -> np.ndarray:
    """Delta chi2 of non-negative line amplitudes (one per template line) on a grid of ln(1+z)."""
    from scipy.optimize import nnls

    edges = _edges(wl)
    lo, hi = edges[:-1][good], edges[1:][good]
    wg, b = wl[good], r[good] / e[good]
    out = np.zeros(lnz.size)
    for i, lz in enumerate(lnz):
        mu = rest * np.exp(lz) / 1e4
        ok = (mu > wg[0]) & (mu < wg[-1])
        if not ok.any():
            continue
        mu = mu[ok]
        sig = mu / (_FWHM_SIGMA * rfun(mu))
        near = np.abs(wg[:, None] - mu[None, :]) < 5 * sig[None, :]
        rows = near.any(axis=1)
        if not rows.any():
            continue
        G = _binavg_gauss(lo[rows], hi[rows], mu, sig) / e[good][rows][:, None]
        keep = np.sum(G ** 2, axis=0) > 0
        if not keep.any():
            continue
        bb = b[rows]
        x, rn = nnls(G[:, keep], bb)
        out[i] = float(bb @ bb) - rn ** 2
    return out


def redshift_from_lines(spectrum: xr.Dataset, *, z_range: tuple[float, float] = (0.0, 10.0), lines: Any = None,
                        resolution: Any = "prism", snr_min: float = 5.0, step: float = 1e-3,
                        n_candidates: int = 5) -> tuple[float, dict]:
    """Redshift of an emission-line spectrum.

    1. The continuum is a running median (+-5 FWHM, two passes clipping pixels more
       than 3 sigma above it) and is subtracted.
    2. Grid search: on a grid in ln(1 + z) (``step``, default 0.001, a third of a PRISM
       resolution element at 5 um) over ``z_range``, every template line covered by the
       spectrum is a Gaussian at the instrument resolution with a free non-negative
       amplitude; the score is the chi-square improvement of the joint non-negative
       least-squares fit (weighting every pixel by its error), so lines count by their
       S/N and overlapping lines are not counted twice.  The best peak is refined on a
       grid 50 times finer.
    3. Refinement: :func:`line_fluxes` at that redshift fits all covered lines jointly
       (Gaussians, local linear continua, common redshift and width scale), twice
       (recentred).  The redshift error is the formal error of that fit, inflated by
       sqrt(chi2/dof) of the per-window redshifts about it when they scatter more than
       their errors.

    Parameters
    ----------
    spectrum : xarray.Dataset
        A 1-D spectrum.
    z_range : (float, float)
        Redshifts searched.
    lines : sequence of str or mapping, optional
        Template lines (default :data:`LINES`: Lyalpha, [OII], [NeIII], Hgamma, Hbeta,
        [OIII], [NII], Halpha, [SII], [SIII], HeI, Pabeta, Paalpha).
    resolution : "prism", float or callable
        Resolving power of the spectrum.
    snr_min : float
        S/N above which a line counts as identified.
    step : float
        Grid step in ln(1 + z).
    n_candidates : int
        Number of grid peaks reported.

    Returns
    -------
    z : float
        The redshift.
    details : dict
        ``z_error``; ``lines`` (the :func:`line_fluxes` Dataset of all covered lines,
        with ``identified`` = S/N >= ``snr_min``); ``identified`` (names);
        ``candidates`` (list of (z, delta chi2) of the best grid peaks, best first);
        ``z_grid`` and ``score`` (the grid search); ``window_redshifts`` (list of
        (lines, z, z_err) per fit window with identified lines, each window fitted
        alone); ``width_scale``.

    Raises
    ------
    FitError
        No line with S/N >= ``snr_min`` at the best redshift.
    """
    wl, f, e, good = _spectrum_arrays(spectrum)
    if good.sum() < 10:
        raise FitError("redshift_from_lines: fewer than 10 good pixels")
    rfun = _resolving_power(resolution)
    table = _line_table(lines)
    z0, z1 = (float(v) for v in z_range)
    if not (np.isfinite(z0) and np.isfinite(z1) and 0 <= z0 < z1):
        raise SchemaError(f"z_range: expected 0 <= zmin < zmax, got {z_range!r}")
    fwhm = wl / rfun(wl)
    cont = _running_median(wl, f, good, 5.0 * fwhm, e=e)
    r = f - cont
    rest = np.array(list(table.values()))
    grid = np.arange(np.log1p(z0), np.log1p(z1) + step / 2, step)
    score = _zgrid_score(grid, rest, wl, r, e, good, rfun)
    # peaks separated by >= 0.01 in ln(1+z)
    order = np.argsort(score)[::-1]
    peaks: list[int] = []
    for i in order:
        if score[i] <= 0 or len(peaks) >= n_candidates:
            break
        if all(abs(grid[i] - grid[j]) >= 0.01 for j in peaks):
            peaks.append(int(i))
    if not peaks:
        raise FitError("redshift_from_lines: no emission-line signal found on the redshift grid")
    fine = np.arange(grid[peaks[0]] - 2 * step, grid[peaks[0]] + 2 * step, step / 50)
    fscore = _zgrid_score(fine, rest, wl, r, e, good, rfun)
    zbest = float(np.expm1(fine[np.argmax(fscore)]))
    lf = line_fluxes(spectrum, zbest, lines=table, resolution=resolution)
    lf = line_fluxes(spectrum, lf.attrs[schema.REDSHIFT], lines=table, resolution=resolution)
    z = float(lf.attrs[schema.REDSHIFT])
    z_err = float(lf.attrs["redshift_error"])
    ident = lf[schema.LINE_SNR].values >= snr_min
    lf = lf.assign_coords(identified=(schema.LINE, ident, {"long_name": f"line S/N >= {snr_min}", "units": "1"}))
    if not ident.any():
        raise FitError(f"redshift_from_lines: no line with S/N >= {snr_min} at the best redshift z = {z:.4f} "
                       f"(best S/N {np.nanmax(lf[schema.LINE_SNR].values):.1f})")
    # per-line centres -> scatter check of the window redshifts
    windows: dict[tuple, list] = {}  # one redshift per fit window (its lines share it)
    for name, rest_l, c, ce, ok in zip(lf[schema.LINE].values, lf[schema.LINE_REST_WAVELENGTH].values,
                                       lf[schema.LINE_CENTRE].values, lf[schema.LINE_CENTRE_ERROR].values, ident):
        if ok and np.isfinite(c) and ce > 0:
            zw, zwe = c * 1e4 / rest_l - 1, ce * 1e4 / rest_l
            windows.setdefault((round(zw, 9), round(zwe, 12)), []).append(str(name))
    win_list = [(" ".join(v), float(k[0]), float(k[1])) for k, v in windows.items()]
    if len(win_list) >= 2:
        cz_, cze_ = np.array([w[1] for w in win_list]), np.array([w[2] for w in win_list])
        chi2 = float(np.sum(((cz_ - z) / cze_) ** 2))
        z_err *= max(1.0, np.sqrt(chi2 / (len(win_list) - 1)))
    details = {
        "z_error": z_err,
        "lines": lf,
        "identified": [str(n) for n in lf[schema.LINE].values[ident]],
        "candidates": [(float(np.expm1(grid[i])), float(score[i])) for i in peaks],
        "z_grid": np.expm1(grid),
        "score": score,
        "window_redshifts": win_list,
        "width_scale": float(lf.attrs["width_scale"]),
    }
    return z, details


# ---------------------------------------------------------------------------
# D4000
# ---------------------------------------------------------------------------
def _band_mean(edges: np.ndarray, f: np.ndarray, e: np.ndarray | None, good: np.ndarray, lo: float, hi: float,
               min_cover: float = 0.75) -> tuple[float, float]:
    """Mean of a pixel-binned spectrum over [lo, hi] (fractional pixel overlaps); NaN when not covered."""
    if lo < edges[0] or hi > edges[-1]:
        return np.nan, np.nan
    w = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0.0, None)
    w = np.where(good, w, 0.0)
    if w.sum() < min_cover * (hi - lo):
        return np.nan, np.nan
    sel = w > 0
    mean = float(np.sum(w[sel] * f[sel]) / w[sel].sum())
    err = float(np.sqrt(np.sum((w[sel] * e[sel]) ** 2)) / w[sel].sum()) if e is not None else np.nan
    return mean, err


def _d4000_arrays(wl, f, e, good, z) -> tuple[float, float]:
    edges = _edges(wl)
    red = _band_mean(edges, f, e, good, *(np.array(_D4000_RED) * (1 + z) / 1e4))
    blue = _band_mean(edges, f, e, good, *(np.array(_D4000_BLUE) * (1 + z) / 1e4))
    if not (np.isfinite(red[0]) and np.isfinite(blue[0])) or blue[0] == 0:
        return np.nan, np.nan
    d = red[0] / blue[0]
    err = abs(d) * np.sqrt((red[1] / red[0]) ** 2 + (blue[1] / blue[0]) ** 2) if e is not None else np.nan
    return float(d), float(err)


def d4000(spectrum: xr.Dataset, z: float) -> tuple[float, float]:
    """The narrow 4000 A break D4000 (Balogh et al. 1999) and its 1-sigma error.

    D4000 = <F_nu>(4000-4100 A) / <F_nu>(3850-3950 A) in the rest frame, each mean
    taken over the pixel bins (fractional overlaps at the band ends) of the good
    pixels.  At PRISM resolution (R ~ 30-60 near 1-2.5 um) each band spans only one or
    two resolution elements, so D4000 of a PRISM spectrum is only comparable with
    another spectrum at the same resolution.

    Parameters
    ----------
    spectrum : xarray.Dataset
        A 1-D spectrum (flux in uJy, i.e. F_nu).
    z : float
        Redshift.

    Returns
    -------
    (float, float)
        D4000 and its error from the flux errors; NaN when either band is not covered
        by at least 75% good pixels.
    """
    wl, f, e, good = _spectrum_arrays(spectrum)
    return _d4000_arrays(wl, f, e, good, float(z))


# ---------------------------------------------------------------------------
# model spectra and the comparison
# ---------------------------------------------------------------------------
def predict(params: Any, wavelength: Any = None, *, quantiles: Sequence[float] = (0.16, 0.5, 0.84)) -> xr.Dataset:
    """A bagpipes model spectrum (:func:`pegleg.sed.sps.spectrum`) as a Dataset for :func:`compare`.

    Parameters
    ----------
    params : array_like (P,) or (N, P)
        Parameters in :data:`pegleg.sed.sps.PARAM_NAMES` order (e.g. posterior draws).
    wavelength : array_like, optional
        Observed wavelengths (um); default a log grid over 0.5-5.6 um sampled at
        lambda / dlambda = 1000 (bagpipes' own resolution).
    quantiles : sequence of float
        With N > 1 draws: the flux quantiles returned along a ``quantile`` dim.

    Returns
    -------
    xarray.Dataset
        ``flux`` (uJy) with dims (wavelength,) for one vector or (quantile, wavelength)
        for several; attrs ``redshift`` (the median redshift parameter),
        ``resolution = 1000`` (bagpipes' sampling).
    """
    from .sed import sps

    arr = np.asarray(params, dtype=float)
    wl = (np.exp(np.arange(np.log(0.5), np.log(5.6), 1e-3)) if wavelength is None
          else _check_wavelength(wavelength))
    spec = sps.spectrum(arr, wl)
    iz = sps.PARAM_NAMES.index("redshift")
    attrs = {schema.REDSHIFT: float(np.median(np.atleast_2d(arr)[:, iz])), "resolution": 1000.0}
    if arr.ndim == 1:
        return xr.Dataset({schema.FLUX: _var(schema.FLUX, spec)}, coords={schema.WAVELENGTH: _wave_coord(wl)},
                          attrs=attrs)
    q = np.asarray(quantiles, float)
    flux = np.quantile(spec, q, axis=0)
    dims, units, long_name = schema.SPECTRUM_VARIABLES[schema.FLUX]
    return xr.Dataset({schema.FLUX: ((schema.QUANTILE,) + dims, flux, {"units": units, "long_name": long_name})},
                      coords={schema.WAVELENGTH: _wave_coord(wl), schema.QUANTILE: q}, attrs=attrs)


PREDICTED_LINES = ("Halpha", "Hbeta", "[OIII]5008", "[OII]3727", "[OII]3730", "[NII]6585", "Paalpha")


#: Variable of :func:`predict_spectrum` holding every posterior draw's spectrum (draw, wavelength);
#: :func:`compare` measures the model's lines on each draw when it is present.
FLUX_DRAWS, DRAW = "flux_draws", "draw"


def predict_spectrum(ds: xr.Dataset, region: Any = None, *, n_draws: int | None = None, wavelength: Any = None,
                     quantiles: Sequence[float] = (0.16, 0.5, 0.84), progress: bool | None = None,
                     line_fluxes_of: Sequence[str] | None = PREDICTED_LINES, method: str = "pixels",
                     seed: int = 0, coupling: str | Sequence[str] | None = None) -> xr.Dataset:
    """The spectrum the resolved SED fit predicts for a region, with its uncertainty.

    ``method="pixels"`` (default): ``ds`` is a ``sedfit`` result made with
    ``keep_samples=K`` (variable ``posterior_samples``).  For each posterior draw ``k``
    the exact bagpipes spectrum (:func:`pegleg.sed.sps.spectrum`) of every fitted pixel
    of ``region`` (a boolean (y, x) map; default every fitted pixel) is computed and the
    pixels are summed; the quantiles over the draws are returned in the format of
    :func:`predict` (``flux`` in uJy over ``wavelength`` in micron, dims (quantile,
    wavelength)), ready for :func:`compare`.  Pixel draws are combined independently
    (draw ``k`` of every pixel), so the spread is that of a sum of independent pixel
    errors: it shrinks as 1/sqrt(pixels).  When the pixels' errors are shared -- every
    pixel's photometry leaves the same parameters (ionisation, metallicity) to the
    prior, so every posterior is pulled the same way -- that spread is too small.
    ``coupling`` (a parameter name or several, e.g. ``("log_u", "log_metallicity")``)
    treats those parameters' errors as shared instead: every pixel's draws are sorted by
    the mean rank of these parameters, so draw ``k`` combines every pixel's ``k``-th
    ranked draw and the pixels move together in them (a comonotone coupling).  Each
    pixel's posterior is unchanged; only how pixels are combined changes.

    Line predictions are only as good as the photometry's grip on the lines: fit with
    ``sedfit(emulator="accurate")`` (exact bagpipes lines; the default emulator's
    photometry barely responds to log U -- 0.01 mag in F162M at z = 2.3 where bagpipes
    moves 0.45 mag) with enough proposal draws (e.g. ``n_draws=8192, max_rounds=6``), in
    bands that put a medium band on the lines.  Measured on a synthetic galaxy at z = 2.3
    (docs, "Lines in medium bands"): with ``coupling="log_u"`` the 9 pixels' H-alpha,
    H-beta, [OIII] and [OII] are within 2.5 half 16-84% widths of the truth's.

    ``method="integrated"``: the region's summed photometry (``image`` and quadrature
    ``error`` of the fitted bands over the fitted pixels of ``region``) is fitted once,
    with the settings of the Dataset's last ``sedfit`` (bands, error floor, emulator
    sigma, mass range, redshift), and ``n_draws`` (default 200) draws of that one
    posterior give the spectra: the uncertainty of one population seen through the
    region's photometry.  Needs no ``posterior_samples``.

    Flux is linear in the formed mass, so each model is computed at log M = 10 and
    scaled.  Cost: pixels x draws (integrated: draws) bagpipes spectra (~300 per second
    per core).  With ``line_fluxes_of`` (names of :data:`pegleg.sed.sps.LINE_IDS`;
    default H-alpha, H-beta, [OIII]5008, [OII]3727 and 3730, [NII]6585, Pa-alpha) the
    model's own line fluxes (bagpipes' Cloudy lines after dust, summed like the spectra)
    of the lines whose observed wavelength the grid covers are added as ``line_flux``
    (quantile, line): observed fluxes in erg/s/cm2, before any instrument (in bagpipes'
    spectrum the lines are unresolved spikes).  Every draw's spectrum is
    kept as ``flux_draws`` (draw, wavelength): :func:`compare` measures the model's line
    fluxes and ratios on each draw, so their uncertainties follow the posterior (ratios
    from the 16th/84th-percentile spectra would move both lines together).
    """
    from . import _parallel
    from .sed import sps

    if method not in ("pixels", "integrated"):
        raise SchemaError(f"method must be 'pixels' or 'integrated', got {method!r}")
    if coupling is not None and method != "pixels":
        raise SchemaError("coupling combines pixels: it applies to method='pixels' only")
    wl = (np.exp(np.arange(np.log(0.5), np.log(5.6), 1e-3)) if wavelength is None
          else _check_wavelength(wavelength))
    im = sps.PARAM_NAMES.index("log_mass_formed")
    iz = sps.PARAM_NAMES.index("redshift")
    line_names = [] if line_fluxes_of is None else sps.check_lines(line_fluxes_of, error=SchemaError,
                                                                  what="line_fluxes_of")
    if method == "integrated":
        theta, attrs = _integrated_draws(ds, region, 200 if n_draws is None else int(n_draws), seed)
        n = theta.shape[0]
        unit = theta.copy()
        unit[:, im] = 10.0
        scale = 10.0 ** (theta[:, im] - 10.0)
        spec, lf = sps.spectrum(unit, wl, lines=line_names)
        total, total_lines = scale[:, None] * spec, scale[:, None] * lf
        z = float(np.median(theta[:, iz]))
        attrs.update(n_draws=n, method="integrated")
        note = "spectrum of the region's integrated fit"
    else:
        if schema.POSTERIOR_SAMPLES not in ds:
            raise SchemaError("predict_spectrum needs 'posterior_samples': run ds.pegleg.sedfit(keep_samples=50) "
                              "first (or use method='integrated')")
        smp = ds[schema.POSTERIOR_SAMPLES]
        names = [str(p) for p in smp[schema.PARAM].values]
        if names != list(sps.PARAM_NAMES):
            raise SchemaError(f"posterior_samples has parameters {names}; pegleg.sed.sps needs {list(sps.PARAM_NAMES)}")
        reg, _ = schema.fit_region(ds, region)
        vals = smp.transpose(schema.Y, schema.X, schema.SAMPLE, schema.PARAM).values
        fitted = reg & np.all(np.isfinite(vals), axis=(2, 3))
        if not fitted.any():
            raise SchemaError("predict_spectrum: no fitted pixel with posterior samples in the region")
        k_all = vals.shape[2]
        n = k_all if n_draws is None else int(n_draws)
        if not 1 <= n <= k_all:
            raise SchemaError(f"n_draws must be 1..{k_all} (the stored posterior samples), got {n_draws!r}")
        pix = vals[fitted][:, :n, :]                             # (npix, n, P)
        if coupling is not None:
            shared = [coupling] if isinstance(coupling, str) else list(coupling)
            bad = [c for c in shared if c not in names]
            if bad or not shared:
                raise SchemaError(f"coupling: unknown parameter(s) {bad or shared}; parameters: {names}")
            idx = [names.index(c) for c in shared]
            ranks = np.argsort(np.argsort(pix[:, :, idx], axis=1), axis=1).mean(axis=2)   # (npix, n)
            pix = np.take_along_axis(pix, np.argsort(ranks, axis=1, kind="stable")[:, :, None], axis=1)
        scale = 10.0 ** (pix[..., im] - 10.0)
        unit = pix.copy()
        unit[..., im] = 10.0
        total = np.zeros((n, wl.size))
        total_lines = np.zeros((n, len(line_names)))
        for k in _parallel.progress_iter(range(n), n, progress, "predict_spectrum"):
            spec, lf = sps.spectrum(unit[:, k, :], wl, lines=line_names)
            total[k], total_lines[k] = scale[:, k] @ spec, scale[:, k] @ lf
        z = float(np.median(pix[..., iz]))
        attrs = {"n_pixels": int(fitted.sum()), "n_draws": n, "method": "pixels"}
        if coupling is not None:
            attrs["coupling"] = ",".join(shared)
        note = "sum over the region's pixels"
    q = np.asarray(quantiles, float)
    dims, units, long_name = schema.SPECTRUM_VARIABLES[schema.FLUX]
    out = xr.Dataset({schema.FLUX: ((schema.QUANTILE,) + dims, np.quantile(total, q, axis=0),
                                    {"units": units, "long_name": f"{long_name} ({note})"}),
                      FLUX_DRAWS: ((DRAW,) + dims, total,
                                   {"units": units, "long_name": f"{long_name}, one posterior draw each ({note})"})},
                     coords={schema.WAVELENGTH: _wave_coord(wl), schema.QUANTILE: q},
                     attrs={schema.REDSHIFT: z, "resolution": 1000.0, **attrs})
    # the lines whose observed wavelength the grid covers
    cover = [j for j, nm in enumerate(line_names) if wl[0] <= LINES[nm] * (1 + z) / 1e4 <= wl[-1]]
    if cover:
        out = out.assign_coords(line=("line", np.array([line_names[j] for j in cover], dtype=object)))
        out[schema.LINE_FLUX] = ((schema.QUANTILE, "line"), np.quantile(total_lines[:, cover], q, axis=0),
                                 {"units": "erg/s/cm2",
                                  "long_name": f"model emission-line flux, posterior quantiles ({note})"})
    return out


def _integrated_draws(ds: xr.Dataset, region: Any, n_draws: int, seed) -> tuple[np.ndarray, dict]:
    """(n_draws, P) posterior draws of the fit of ``region``'s summed photometry, and attributes."""
    from .sed.fit import fit_photometry
    from .sed.step import region_photometry

    if n_draws < 1:
        raise SchemaError(f"n_draws must be >= 1, got {n_draws}")
    step = schema.last_step(ds, "sedfit")
    if step is None:
        raise SchemaError("predict_spectrum(method='integrated') needs a sedfit result (its settings and fitted "
                          "pixels): run ds.pegleg.sedfit() first")
    last = step.get("parameters", {})
    bands = [str(b) for b in last.get("bands", ds[schema.BAND].values)]
    reg, _ = schema.fit_region(ds, region)
    fitted = reg.copy()
    if schema.SEDFIT_FLAG in ds:
        fitted &= (ds[schema.SEDFIT_FLAG].values & 5) == 0
    if not fitted.any():
        raise SchemaError("predict_spectrum: no fitted pixel in the region")
    flux, error, valid = region_photometry(ds, bands, fitted)
    z = float(last.get("redshift", ds.attrs.get(schema.REDSHIFT, np.nan)))
    lo, hi = last.get("mass_range", [0.0, 13.0])
    res = fit_photometry(flux[None], error[None], bands, z, valid=valid[None],
                         redshift_sigma=last.get("redshift_sigma"), error_floor=float(last.get("error_floor", 0.05)),
                         emulator_sigma=bool(last.get("emulator_sigma", True)), mass_range=(lo, hi + 3),
                         n_draws=1024, max_rounds=12, n_samples=n_draws, seed=seed, n_workers=1, progress=False)
    theta = np.asarray(res["samples"][0], float)
    return theta, {"n_pixels": int(fitted.sum()), "integrated_ess": float(res["ess"][0]),
                   "integrated_chi2": float(res["chi2"][0]), "integrated_n_bands": int(valid.sum())}


def _draw_line_fluxes(predicted, pw, rfun, wl, valid, P, obs_ds, z, res_kw, common, max_draws: int = 100):
    """(draws, lines) model line fluxes of ``common`` measured on each of ``predicted``'s
    ``flux_draws`` (convolved to ``rfun``, interpolated onto ``wl``, times calibration
    ``P``); None without draws or when a draw's lines cannot be measured."""
    if FLUX_DRAWS not in predicted or max_draws < 2:
        return None
    import astropy.units as u

    da = predicted[FLUX_DRAWS]
    scale = float(_parse_unit(da.attrs.get("units", "uJy"), "predicted: flux_draws units").to(u.uJy))
    draws = np.asarray(da.transpose(DRAW, schema.WAVELENGTH).values, float) * scale
    if draws.shape[0] < 2:
        return None
    take = np.unique(np.linspace(0, draws.shape[0] - 1, min(int(max_draws), draws.shape[0])).astype(int))
    draws = draws[take]
    if rfun is not None:
        draws = convolve_to_resolution(pw, draws, rfun)
    out = []
    for d in draws:
        m = np.interp(wl, pw, d, left=np.nan, right=np.nan)
        one = obs_ds.assign({schema.FLUX: ((schema.WAVELENGTH,), np.where(valid & np.isfinite(m), P * m, 0.0))})
        try:
            lf = line_fluxes(one, z, **res_kw)
        except FitError:
            return None
        if not set(common) <= set(lf[schema.LINE].values):
            return None
        out.append(lf[schema.LINE_FLUX].sel({schema.LINE: common}).values)
    return np.array(out)


def _predicted_arrays(predicted: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(wavelength, median, q16, q84) of a predicted-spectrum Dataset (flux in uJy)."""
    import astropy.units as u

    if not isinstance(predicted, xr.Dataset) or schema.FLUX not in predicted or \
            schema.WAVELENGTH not in predicted[schema.FLUX].dims:
        raise SchemaError("predicted: expected a Dataset with variable 'flux' along dim 'wavelength' (um)")
    da = predicted[schema.FLUX]
    extra = set(da.dims) - {schema.WAVELENGTH}
    if extra - {schema.QUANTILE}:
        raise SchemaError(f"predicted: flux dims must be (wavelength,) or (quantile, wavelength), got {da.dims}")
    wl = _check_wavelength(predicted[schema.WAVELENGTH].values, "predicted: coordinate 'wavelength'")
    unit = _parse_unit(da.attrs.get("units", "uJy"), "predicted: flux units")
    if not unit.is_equivalent(u.Jy):
        raise SchemaError(f"predicted: flux units {unit.to_string()!r} are not a flux density F_nu")
    scale = float(unit.to(u.uJy))
    if schema.QUANTILE not in da.dims:
        return wl, da.values.astype(float) * scale, None, None
    qs = np.asarray(predicted[schema.QUANTILE].values, float)
    out = []
    for q in (0.5, 0.16, 0.84):
        hit = np.flatnonzero(np.isclose(qs, q, atol=1e-6, rtol=0))
        if hit.size == 0:
            raise SchemaError(f"predicted: quantile {q} not in the quantile coordinate {qs.tolist()}")
        out.append(da.isel({schema.QUANTILE: int(hit[0])}).transpose(schema.WAVELENGTH).values.astype(float) * scale)
    return wl, out[0], out[1], out[2]


def _line_pixels(wl: np.ndarray, z: float, rfun, table: dict[str, float], n_fwhm: float = 2.0) -> np.ndarray:
    near = np.zeros(wl.size, bool)
    for rest in table.values():
        lam = rest * (1 + z) / 1e4
        near |= np.abs(wl - lam) < n_fwhm * lam / float(rfun(lam))
    return near


def compare(predicted: xr.Dataset, observed: xr.Dataset, *, resolution: Any = "prism", poly_order: int = 2,
            z: float | None = None, lines: Any = None, n_windows: int = 5, mask_lines: bool = True,
            line_draws: int = 100) -> xr.Dataset:
    """Compare a predicted spectrum with an observed one.

    1. The prediction (its median and, with a ``quantile`` dim, its 16th and 84th
       percentiles) is convolved to the instrument resolution
       (:func:`convolve_to_resolution`) and interpolated linearly onto the observed
       wavelengths.  The model uncertainty is (q84 - q16) / 2.
    2. A multiplicative calibration polynomial P(lambda) = sum_k c_k (lambda/um)^k of
       order ``poly_order`` (slit losses, flux calibration) is fitted by weighted linear
       least squares, the weights being the combined error
       sqrt(error^2 + (P model_error)^2) (iterated three times).  With a redshift and
       ``mask_lines`` the pixels within 2 FWHM of the template lines are left out of
       this fit, so mismatched line strengths do not drive the continuum calibration.
    3. chi-square of all valid pixels before (P = 1) and after calibration; the median
       fractional continuum residual in ``n_windows`` log-spaced windows (lines
       excluded); D4000 (narrow) of the observed and the calibrated model spectrum; and
       :func:`line_fluxes` of both (same method, same errors, free centre and width),
       with ratios to the line of highest observed S/N.  When ``predicted`` holds
       ``flux_draws`` (:func:`predict_spectrum`), the model's line fluxes and ratios are
       measured on up to ``line_draws`` draws (each convolved and calibrated the same
       way) and reported as their median and half the 16-84 percentile range, so a
       ratio's uncertainty is that of the ratio; otherwise from the median spectrum with
       errors from the 16th/84th-percentile spectra (attribute ``model_line_errors``).

    Parameters
    ----------
    predicted : xarray.Dataset
        ``flux`` (uJy, or another F_nu unit in its ``units`` attribute) along dim
        ``wavelength`` (observed frame, um), optionally with a ``quantile`` dim holding
        0.16, 0.5 and 0.84 (see :func:`predict`).  It should cover the observed range
        at a resolution well above the instrument's.
    observed : xarray.Dataset
        A 1-D spectrum (:func:`read`).
    resolution : "prism", float, callable or None
        Instrument resolving power R(lambda_um); None if ``predicted`` is already at the
        instrument resolution (line fits and line masks then assume PRISM).
    poly_order : int
        Order of the calibration polynomial (0 = a scale factor).
    z : float, optional
        Redshift for D4000, lines and line masking; default ``predicted.attrs
        ["redshift"]``, else ``observed.attrs["redshift"]``; without one these are NaN
        / empty.
    lines : sequence of str or mapping, optional
        Lines to measure (default :data:`LINES`).
    n_windows : int
        Number of continuum windows.
    mask_lines : bool
        Leave line pixels out of the calibration fit (needs a redshift).

    Returns
    -------
    xarray.Dataset
        Dims ``wavelength`` (the observed grid), ``degree``, ``window``, ``line``:
        ``flux``, ``error``, ``mask`` (observed), ``model_flux``, ``model_flux_error``,
        ``calibration`` and its error, ``model_calibrated``, ``spectrum_residual``
        (sigma), ``fit_pixel``, ``calibration_coefficients`` and errors, scalars
        ``chi2_before``, ``chi2_after``, ``chi2_reduced_before``,
        ``chi2_reduced_after``, ``n_pixels_fit``, ``d4000_observed`` (+error),
        ``d4000_model`` (+error), per window ``continuum_residual`` (+error) and
        ``continuum_residual_before``, per line ``line_flux_observed`` (+error),
        ``line_flux_model`` (+error), ``line_ratio_observed`` (+error),
        ``line_ratio_model`` (+error).  Attributes: ``redshift``, ``poly_order``,
        ``resolution``, ``reference_line``, ``source``, ``line_width_scale``.
        Plot it with :func:`pegleg.plot.spectrum_comparison`.

    Raises
    ------
    SchemaError
        Bad inputs.
    FitError
        Fewer valid pixels than calibration coefficients + 1.
    """
    S = schema
    wl, f, e, good = _spectrum_arrays(observed, "observed")
    pw, pm, plo, phi = _predicted_arrays(predicted)
    poly_order = int(poly_order)
    if poly_order < 0:
        raise SchemaError(f"poly_order: expected an integer >= 0, got {poly_order}")
    if z is None:
        z = predicted.attrs.get(S.REDSHIFT, observed.attrs.get(S.REDSHIFT))
    z = None if z is None else float(z)
    if z is not None and (not np.isfinite(z) or z < 0):
        raise SchemaError(f"z: expected a finite redshift >= 0, got {z!r}")
    rfun = None if resolution is None else _resolving_power(resolution)
    stack = np.stack([a for a in (pm, plo, phi) if a is not None])
    if rfun is not None:
        stack = convolve_to_resolution(pw, stack, rfun)
    interp = np.array([np.interp(wl, pw, s, left=np.nan, right=np.nan) for s in stack])
    m = interp[0]
    m_err = 0.5 * np.abs(interp[2] - interp[1]) if interp.shape[0] == 3 else np.zeros(wl.size)
    valid = good & np.isfinite(m) & np.isfinite(m_err)
    table = _line_table(lines)
    rl = rfun if rfun is not None else prism_resolution
    near_line = _line_pixels(wl, z, rl, table) if z is not None else np.zeros(wl.size, bool)
    fitpix = valid & ~near_line if mask_lines else valid.copy()
    ncoef = poly_order + 1
    if fitpix.sum() < ncoef + 1:
        if valid.sum() >= ncoef + 1:
            fitpix = valid.copy()
        else:
            raise FitError(f"compare: {int(valid.sum())} valid pixels for {ncoef} calibration coefficients")
    X = m[:, None] * wl[:, None] ** np.arange(ncoef)[None, :]
    coef = np.zeros(ncoef)
    coef[0] = 1.0
    for _ in range(3):
        P = (wl[:, None] ** np.arange(ncoef)) @ coef
        sig = np.sqrt(e ** 2 + (P * m_err) ** 2)
        A = X[fitpix] / sig[fitpix, None]
        b = f[fitpix] / sig[fitpix]
        coef, *_ = np.linalg.lstsq(A, b, rcond=None)
    ccov = np.linalg.pinv(A.T @ A)
    V = wl[:, None] ** np.arange(ncoef)
    P = V @ coef
    P_err = np.sqrt(np.clip(np.einsum("ik,kl,il->i", V, ccov, V), 0.0, None))
    mc = P * m
    sig_after = np.sqrt(e ** 2 + (P * m_err) ** 2)
    sig_before = np.sqrt(e ** 2 + m_err ** 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        res_after = np.where(valid, (f - mc) / sig_after, np.nan)
        res_before = np.where(valid, (f - m) / sig_before, np.nan)
    n = int(valid.sum())
    chi2_b = float(np.nansum(res_before[valid] ** 2))
    chi2_a = float(np.nansum(res_after[valid] ** 2))

    # continuum windows
    cont_pix = valid & ~near_line
    wv = wl[cont_pix]
    nw = max(int(n_windows), 1)
    if wv.size:
        wedges = np.exp(np.linspace(np.log(wv[0]), np.log(wv[-1]), nw + 1))
    else:
        wedges = np.full(nw + 1, np.nan)
    cres, cerr, cbef = (np.full(nw, np.nan) for _ in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_a = (f - mc) / mc
        frac_b = (f - m) / m
    for k in range(nw):
        sel = cont_pix & (wl >= wedges[k]) & (wl <= wedges[k + 1]) & np.isfinite(frac_a) & (mc > 0)
        if sel.sum() >= 3:
            cres[k] = float(np.median(frac_a[sel]))
            mad = 1.4826 * float(np.median(np.abs(frac_a[sel] - cres[k])))
            cerr[k] = 1.2533 * mad / np.sqrt(sel.sum())
            cbef[k] = float(np.median(frac_b[sel]))

    # D4000
    d_obs = d_mod = d_mod_err = d_obs_err = np.nan
    if z is not None:
        d_obs, d_obs_err = _d4000_arrays(wl, f, e, good, z)
        d_mod, _ = _d4000_arrays(wl, mc, None, valid, z)
        if interp.shape[0] == 3:
            d_lo, _ = _d4000_arrays(wl, P * interp[1], None, valid, z)
            d_hi, _ = _d4000_arrays(wl, P * interp[2], None, valid, z)
            d_mod_err = 0.5 * abs(d_hi - d_lo)
        else:
            d_mod_err = 0.0

    # lines
    line_vars: dict[str, tuple] = {}
    line_coords: dict[str, tuple] = {}
    attrs_extra: dict[str, Any] = {}
    if z is not None:
        res_kw = dict(lines=table, resolution=rl)
        obs_ds = observed[[S.FLUX, S.ERROR]].assign({S.MASK: ((S.WAVELENGTH,), ~valid)})
        try:
            lo_ = line_fluxes(obs_ds, z, **res_kw)
            model_ds = obs_ds.assign({S.FLUX: ((S.WAVELENGTH,), np.where(valid, mc, 0.0))})
            lm = line_fluxes(model_ds, z, **res_kw)
            lq = []
            if interp.shape[0] == 3:
                for s in (interp[1], interp[2]):
                    lq.append(line_fluxes(obs_ds.assign({S.FLUX: ((S.WAVELENGTH,), np.where(valid, P * s, 0.0))}),
                                          z, **res_kw))
        except FitError:
            lo_ = None
        if lo_ is not None:
            common = [nm for nm in lo_[S.LINE].values if nm in set(lm[S.LINE].values)]
            lo_, lm = lo_.sel({S.LINE: common}), lm.sel({S.LINE: common})
            fo, fe = lo_[S.LINE_FLUX].values, lo_[S.LINE_FLUX_ERROR].values
            fm = lm[S.LINE_FLUX].values
            per_draw = _draw_line_fluxes(predicted, pw, rfun, wl, valid, P, obs_ds, z, res_kw, common,
                                         max_draws=line_draws) if common else None
            if per_draw is not None:
                fm = np.median(per_draw, axis=0)
                fme = 0.5 * np.abs(np.percentile(per_draw, 84, axis=0) - np.percentile(per_draw, 16, axis=0))
                rq = None
            elif lq and all(set(common) <= set(q[S.LINE].values) for q in lq):
                fme = 0.5 * np.abs(lq[1][S.LINE_FLUX].sel({S.LINE: common}).values
                                   - lq[0][S.LINE_FLUX].sel({S.LINE: common}).values)
                rq = [q[S.LINE_FLUX].sel({S.LINE: common}).values for q in lq]
            else:
                fme, rq = np.zeros(len(common)), None
            if common:
                iref = int(np.nanargmax(lo_[S.LINE_SNR].values))
                with np.errstate(invalid="ignore", divide="ignore"):
                    ro = fo / fo[iref]
                    roe = np.abs(ro) * np.sqrt((fe / fo) ** 2 + (fe[iref] / fo[iref]) ** 2)
                    roe[iref] = 0.0
                    if per_draw is not None:            # the ratio's own posterior, draw by draw
                        rd = per_draw / per_draw[:, [iref]]
                        rm = np.median(rd, axis=0)
                        rme = 0.5 * np.abs(np.percentile(rd, 84, axis=0) - np.percentile(rd, 16, axis=0))
                    else:
                        rm = fm / fm[iref]
                        rme = (0.5 * np.abs(rq[1] / rq[1][iref] - rq[0] / rq[0][iref]) if rq is not None
                               else np.zeros(len(common)))
                attrs_extra["reference_line"] = str(common[iref])
                attrs_extra["model_line_errors"] = ("posterior draws" if per_draw is not None else
                                                    "16th/84th-percentile spectra")
            else:
                ro = roe = rm = rme = np.zeros(0)
            attrs_extra["line_width_scale"] = float(lo_.attrs["width_scale"])
            line_coords = {S.LINE: (S.LINE, np.array(common, dtype=object),
                                    {"long_name": "line or blend", "units": "1"}),
                           S.LINE_REST_WAVELENGTH: _var(S.LINE_REST_WAVELENGTH,
                                                        lo_[S.LINE_REST_WAVELENGTH].values),
                           S.LINE_BLEND: _var(S.LINE_BLEND, lo_[S.LINE_BLEND].values)}
            line_vars = {S.LINE_FLUX_OBSERVED: _var(S.LINE_FLUX_OBSERVED, fo),
                         S.LINE_FLUX_OBSERVED_ERROR: _var(S.LINE_FLUX_OBSERVED_ERROR, fe),
                         S.LINE_FLUX_MODEL: _var(S.LINE_FLUX_MODEL, fm),
                         S.LINE_FLUX_MODEL_ERROR: _var(S.LINE_FLUX_MODEL_ERROR, fme),
                         S.LINE_RATIO_OBSERVED: _var(S.LINE_RATIO_OBSERVED, ro),
                         S.LINE_RATIO_OBSERVED_ERROR: _var(S.LINE_RATIO_OBSERVED_ERROR, roe),
                         S.LINE_RATIO_MODEL: _var(S.LINE_RATIO_MODEL, rm),
                         S.LINE_RATIO_MODEL_ERROR: _var(S.LINE_RATIO_MODEL_ERROR, rme)}

    data = {
        S.FLUX: _var(S.FLUX, f), S.ERROR: _var(S.ERROR, e), S.MASK: _var(S.MASK, ~good),
        S.MODEL_FLUX: _var(S.MODEL_FLUX, m), S.MODEL_FLUX_ERROR: _var(S.MODEL_FLUX_ERROR, m_err),
        S.CALIBRATION: _var(S.CALIBRATION, P), S.CALIBRATION_ERROR: _var(S.CALIBRATION_ERROR, P_err),
        S.MODEL_CALIBRATED: _var(S.MODEL_CALIBRATED, mc),
        S.SPECTRUM_RESIDUAL: _var(S.SPECTRUM_RESIDUAL, res_after),
        S.FIT_PIXEL: _var(S.FIT_PIXEL, fitpix),
        S.CALIBRATION_COEFFICIENTS: _var(S.CALIBRATION_COEFFICIENTS, coef),
        S.CALIBRATION_COEFFICIENTS_ERROR: _var(S.CALIBRATION_COEFFICIENTS_ERROR, np.sqrt(np.diag(ccov))),
        S.CHI2_BEFORE: _var(S.CHI2_BEFORE, chi2_b), S.CHI2_AFTER: _var(S.CHI2_AFTER, chi2_a),
        S.CHI2_REDUCED_BEFORE: _var(S.CHI2_REDUCED_BEFORE, chi2_b / max(n, 1)),
        S.CHI2_REDUCED_AFTER: _var(S.CHI2_REDUCED_AFTER, chi2_a / max(n - ncoef, 1)),
        S.N_PIXELS_FIT: _var(S.N_PIXELS_FIT, n),
        S.CONTINUUM_RESIDUAL: _var(S.CONTINUUM_RESIDUAL, cres),
        S.CONTINUUM_RESIDUAL_ERROR: _var(S.CONTINUUM_RESIDUAL_ERROR, cerr),
        S.CONTINUUM_RESIDUAL_BEFORE: _var(S.CONTINUUM_RESIDUAL_BEFORE, cbef),
        S.D4000_OBSERVED: _var(S.D4000_OBSERVED, d_obs),
        S.D4000_OBSERVED_ERROR: _var(S.D4000_OBSERVED_ERROR, d_obs_err),
        S.D4000_MODEL: _var(S.D4000_MODEL, d_mod), S.D4000_MODEL_ERROR: _var(S.D4000_MODEL_ERROR, d_mod_err),
        **line_vars,
    }
    coords = {S.WAVELENGTH: _wave_coord(wl), S.DEGREE: (S.DEGREE, np.arange(ncoef), {"units": "1",
                                                                                     "long_name": "polynomial degree"}),
              S.WINDOW_START: _var(S.WINDOW_START, wedges[:-1]), S.WINDOW_END: _var(S.WINDOW_END, wedges[1:]),
              **line_coords}
    if not line_coords:
        coords[S.LINE] = (S.LINE, np.array([], dtype=object), {"long_name": "line or blend", "units": "1"})
    attrs = {S.SPECTRUM_KIND: "comparison", S.SPECTRUM_SOURCE: observed.attrs.get(S.SPECTRUM_SOURCE, ""),
             "poly_order": poly_order, "resolution": resolution if isinstance(resolution, str) or resolution is None
             else repr(resolution), "mask_lines": int(bool(mask_lines)), **attrs_extra}
    if z is not None:
        attrs[S.REDSHIFT] = z
    attrs = {k: ("none" if v is None else v) for k, v in attrs.items()}
    return xr.Dataset(data, coords=coords, attrs=attrs)
