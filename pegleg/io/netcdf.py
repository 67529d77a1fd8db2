"""Lossless, atomic NetCDF storage of pegleg Datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from ..exceptions import FileFormatError, SchemaError

__all__ = ["to_netcdf", "open_dataset"]

_ENGINE = "netcdf4"


def _encoding(ds: xr.Dataset, compress: bool) -> dict:
    enc = {}
    for name, da in ds.variables.items():
        e = {}
        if compress and da.ndim >= 2 and da.dtype.kind in "fiub":
            e.update(zlib=True, complevel=4, shuffle=True)
        if da.dtype.kind == "f":
            # keep NaN as NaN; no _FillValue substitution games
            e["_FillValue"] = None
        enc[name] = e
    return enc


def to_netcdf(ds: xr.Dataset, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``ds`` to ``path`` atomically (temporary file in the same folder, then rename).

    If anything fails (including an exception while writing) no file is left under
    ``path`` and an existing file there is untouched.

    Parameters
    ----------
    ds : xarray.Dataset
        Any pegleg Dataset.
    path : str or path-like
        Destination ``.nc`` file.
    compress : bool
        zlib-compress arrays (lossless; default True).

    Returns
    -------
    pathlib.Path
        The written path.
    """
    path = Path(path)
    if not path.parent.exists():
        raise FileFormatError(f"{path}: folder {path.parent} does not exist")
    bad = [k for k, v in ds.attrs.items() if v is None or isinstance(v, (dict, list, tuple, bool))]
    if bad:
        raise SchemaError(f"attribute(s) {bad} cannot be stored in NetCDF (None, bool or nested values); "
                          "store them as JSON text or numbers")
    from .atomic import atomic_write

    try:
        return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine=_ENGINE, encoding=_encoding(ds, compress)))
    except UnicodeEncodeError as exc:  # lone surrogates in names, attributes or string variables
        raise SchemaError(f"{path}: text that is not valid Unicode cannot be stored in NetCDF ({exc})") from None


def open_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Read a Dataset written by :func:`to_netcdf` fully into memory (the file is closed).

    ``xarray.testing.assert_identical(open_dataset(p), ds)`` holds for what
    ``to_netcdf(ds, p)`` wrote: bool masks, string bands, JSON history, WCS text and
    units come back unchanged.

    Raises
    ------
    FileFormatError
        If the file is missing, truncated or not NetCDF (the message names the file).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise FileFormatError(f"open_dataset: expected a file path, got {type(path).__name__} {path!r}")
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"{path}: no such file")
    try:
        with xr.open_dataset(path, engine=_ENGINE) as f:
            ds = f.load()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise FileFormatError(f"{path}: not a readable NetCDF file ({exc})") from None
    for var in ds.variables.values():
        var.encoding.pop("source", None)
    # string coordinates come back as object arrays of str, which is what pegleg writes
    for name in list(ds.coords):
        if ds[name].dtype.kind == "U":
            ds = ds.assign_coords({name: ds[name].astype(object)})
    return ds
