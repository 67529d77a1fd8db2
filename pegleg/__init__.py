"""pegleg: PSF-corrected, spatially resolved SED fitting of galaxies in JWST/HST imaging.

``import pegleg`` registers the ``Dataset.pegleg`` accessor.  Top-level functions:

- :func:`from_arrays`, :func:`validate` -- build and check a stamp Dataset;
- :func:`open_stamps` -- read FITS cutouts or mosaics;
- :func:`open_dataset` -- read a Dataset saved with ``ds.pegleg.to_netcdf``.
"""

from ._version import __version__
from .exceptions import (
    EmulatorError,
    FileFormatError,
    FitError,
    PeglegError,
    PeglegWarning,
    PSFError,
    SchemaError,
)
from .schema import from_arrays, validate
from .io import open_dataset, open_stamps, to_netcdf
from . import accessor as _accessor  # noqa: F401  (registers Dataset.pegleg)
from . import deconvolve, match, profiles, psf, register, resolution, synth

__all__ = [
    "__version__",
    "deconvolve",
    "match",
    "profiles",
    "register",
    "resolution",
    "psf",
    "synth",
    "from_arrays",
    "validate",
    "open_stamps",
    "open_dataset",
    "to_netcdf",
    "PeglegError",
    "SchemaError",
    "PSFError",
    "FileFormatError",
    "EmulatorError",
    "FitError",
    "PeglegWarning",
]
