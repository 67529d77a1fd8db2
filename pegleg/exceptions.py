"""Exception and warning classes raised by pegleg.

Every error that pegleg raises on purpose derives from :class:`PeglegError`, so
catalogue runs can catch ``PeglegError`` and record the message while letting
genuine bugs (``TypeError`` from a typo, ...) propagate.

The tree mirrors rioxarray's: one base class, and one subclass per kind of
problem.  Subclasses that describe bad *values* also derive from ``ValueError``
so that code written against plain Python conventions keeps working.
"""

from __future__ import annotations

__all__ = [
    "PeglegError",
    "SchemaError",
    "PSFError",
    "FileFormatError",
    "EmulatorError",
    "FitError",
    "PeglegWarning",
]


class PeglegError(Exception):
    """Base class of every error pegleg raises on purpose."""


class SchemaError(PeglegError, ValueError):
    """A Dataset or an input array does not follow pegleg's data model.

    The message names the variable (or argument) and what was expected.
    """


class PSFError(PeglegError, ValueError):
    """A point-spread function is not usable (NaN, zero sum, even size, off-centre, ...)."""


class FileFormatError(PeglegError, OSError):
    """A file is missing, unreadable, corrupt or not in the expected format.

    The message names the file.
    """


class EmulatorError(PeglegError, ValueError):
    """An SED emulator file or emulator call is invalid."""


class FitError(PeglegError, RuntimeError):
    """A fit could not be carried out."""


class PeglegWarning(UserWarning):
    """Warnings about data that pegleg repaired (for example NaN pixels it masked)."""
