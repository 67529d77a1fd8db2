"""Lossless, atomic NetCDF storage of pegleg Datasets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..exceptions import FileFormatError, SchemaError

__all__ = ["to_netcdf", "open_dataset", "BlockWriter"]

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


#: HDF5 chunk cache per variable of lazily opened files (bytes).  netCDF-C's default (64 MB
#: per variable) keeps up to 64 MB of every variable a block-by-block pass has touched, so a
#: streamed fit's memory grew with the input file; blocks are read once, a small cache suffices.
LAZY_CHUNK_CACHE = 4 * 1024 ** 2


def _open_lazy(path: Path, chunks: Any) -> xr.Dataset:
    import netCDF4

    old = netCDF4.get_chunk_cache()
    netCDF4.set_chunk_cache(LAZY_CHUNK_CACHE, old[1], old[2])
    try:   # the file is opened here, its variables get the small cache
        return xr.open_dataset(path, engine=_ENGINE, chunks=chunks)
    finally:
        netCDF4.set_chunk_cache(*old)


def open_dataset(path: str | os.PathLike, *, chunks: Any = None) -> xr.Dataset:
    """Read a Dataset written by :func:`to_netcdf` (or :class:`BlockWriter`).

    By default the whole file is read into memory and closed.  With ``chunks`` (as
    in :func:`xarray.open_dataset`, e.g. ``{}`` for the file's own chunks or
    ``{"y": 256}``) the variables are lazy dask arrays read on demand, so a mosaic or
    a million-pixel map can be processed block by block (``sedfit(..., out=...)``).

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
        if chunks is None:
            with xr.open_dataset(path, engine=_ENGINE) as f:
                ds = f.load()
        else:
            ds = _open_lazy(path, chunks)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise FileFormatError(f"{path}: not a readable NetCDF file ({exc})") from None
    for var in ds.variables.values():
        var.encoding.pop("source", None)
    # string coordinates come back as object arrays of str, which is what pegleg writes
    for name in list(ds.coords):
        if ds[name].dtype.kind == "U":
            ds = ds.assign_coords({name: ds[name].astype(object)})
    return ds


class BlockWriter:
    """Write a Dataset to NetCDF one block of ``dim`` at a time (bounded memory).

    The first :meth:`append` creates a temporary file next to ``path`` with ``dim``
    unlimited; every later block is encoded exactly as xarray encodes it and appended
    along ``dim``; variables without ``dim`` are taken from the first block.  Global
    attributes are (re)written by :meth:`close` from ``attrs``, then the file is moved
    to ``path`` in one rename.  Used as a context manager, an exception (or
    ``KeyboardInterrupt``) removes the temporary file and leaves ``path`` untouched.

    ``open_dataset(path)`` then equals ``xarray.concat(blocks, dim)`` with the final
    attributes, byte for byte in every value.

    Examples
    --------
    >>> with BlockWriter("big.nc", dim="y") as w:        # doctest: +SKIP
    ...     for block in blocks:
    ...         w.append(block)
    ...     w.attrs = final_attrs
    """

    def __init__(self, path: str | os.PathLike, dim: str, *, compress: bool = True):
        path = Path(path)
        if not path.parent.exists():
            raise FileFormatError(f"{path}: folder {path.parent} does not exist")
        self.path, self.dim, self.compress = path, dim, compress
        self.attrs: dict = {}
        self._tmp: str | None = None
        self._n = 0
        self._names: list[str] = []

    def __enter__(self) -> BlockWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def append(self, block: xr.Dataset) -> None:
        """Append ``block`` (a Dataset with the same variables as the first) along ``dim``."""
        if self.dim not in block.dims:
            raise SchemaError(f"BlockWriter: block has no dimension {self.dim!r} (dims {dict(block.sizes)})")
        if self._tmp is None:
            self._create(block)
        else:
            self._append(block)
        self._n += block.sizes[self.dim]

    def _create(self, block: xr.Dataset) -> None:
        from .atomic import temporary_path

        self._tmp = temporary_path(self.path)
        enc = _encoding(block, self.compress)
        for name, v in block.variables.items():
            if self.dim in v.dims:
                enc[name]["chunksizes"] = tuple(max(1, n) for n in v.shape)
        try:
            block.to_netcdf(self._tmp, engine=_ENGINE, encoding=enc, unlimited_dims=[self.dim])
        except BaseException:
            self.abort()
            raise
        self._names = [n for n, v in block.variables.items() if self.dim in v.dims]

    def _append(self, block: xr.Dataset) -> None:
        import netCDF4

        names = [n for n, v in block.variables.items() if self.dim in v.dims]
        if sorted(names) != sorted(self._names):
            self.abort()
            raise SchemaError(f"BlockWriter: block variables along {self.dim!r} {sorted(names)} differ from "
                              f"the first block's {sorted(self._names)}")
        try:
            with netCDF4.Dataset(self._tmp, "a") as nc:
                for name in names:
                    var = xr.conventions.encode_cf_variable(block.variables[name], name=name)
                    target = nc.variables[name]
                    if tuple(target.dimensions) != var.dims:
                        raise SchemaError(f"BlockWriter: variable {name!r} has dims {var.dims}, "
                                          f"the file has {tuple(target.dimensions)}")
                    axis = var.dims.index(self.dim)
                    index = [slice(None)] * var.ndim
                    index[axis] = slice(self._n, self._n + var.shape[axis])
                    target.set_auto_maskandscale(False)
                    target[tuple(index)] = np.asarray(var.values)
        except BaseException:
            self.abort()
            raise

    def close(self) -> Path:
        """Write the global attributes and move the file to ``path``."""
        if self._tmp is None:
            raise SchemaError(f"BlockWriter: nothing was written to {self.path}")
        import netCDF4

        bad = [k for k, v in self.attrs.items() if v is None or isinstance(v, (dict, list, tuple, bool))]
        if bad:
            self.abort()
            raise SchemaError(f"attribute(s) {bad} cannot be stored in NetCDF (None, bool or nested values)")
        try:
            with netCDF4.Dataset(self._tmp, "a") as nc:
                for key in nc.ncattrs():
                    nc.delncattr(key)
                for key, value in self.attrs.items():
                    nc.setncattr(key, value)
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        return self.path

    def abort(self) -> None:
        """Remove the temporary file (nothing appears under ``path``)."""
        if self._tmp is not None:
            from .atomic import discard

            discard(self._tmp)
            self._tmp = None
