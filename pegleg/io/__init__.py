"""Reading and writing pegleg Datasets (FITS stamps and mosaics, NetCDF)."""

from .netcdf import open_dataset, to_netcdf

__all__ = ["open_dataset", "to_netcdf"]
