"""Reading and writing pegleg Datasets (FITS stamps and mosaics, NetCDF)."""

from .fits import open_stamps
from .netcdf import open_dataset, to_netcdf

__all__ = ["open_stamps", "open_dataset", "to_netcdf"]
