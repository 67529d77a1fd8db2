"""Catalogue runs: the whole pegleg chain for many galaxies, one dask task per galaxy.

:func:`run_catalog` reads a catalogue (``id, ra, dec, redshift[, size]``), cuts every
galaxy out of per-band mosaics (or reads its own stamp folder), runs the recommended
chain

    ``open_stamps`` -> [``register(apply=True)``] -> ``psf_match(match_to)`` -> ``deconvolve``
    -> ``calibrate_errors`` -> [``photo_z`` when the catalogue gives no redshift]
    -> ``sedfit(redshift=<catalogue or photo-z peak>)``

and writes ``<output_dir>/<id>.nc`` (atomically) plus a one-row-per-galaxy
``summary.csv`` (and ``summary.parquet`` when pyarrow is installed).  The command line
equivalent is ``pegleg run CATALOG --config CONFIG.toml --out DIR``.

Execution
    Each galaxy is one task on ``dask.distributed``: by default a
    ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` with the
    workers' statistical profiler off (:func:`local_cluster`), or an existing
    scheduler (``scheduler="tcp://host:8786"``).  Inside a task every step runs serially
    with one BLAS/OpenMP thread (parallelism comes from the workers).  At most a few
    tasks per worker are in flight, results are gathered as they complete and every
    task has the same task prefix, so neither the driver's (scheduler's) nor the
    workers' memory grows with the catalogue (Datasets never leave the workers; only
    the summary rows do, ~4 KiB each).
Failures
    Any exception of one galaxy (a position outside the mosaics, a band without PSF, a
    worker killed by the operating system, ...) becomes ``status="error"`` with the
    message in the summary; the run goes on.  Nothing is written for a failed galaxy.
Resuming
    With ``resume=True`` (default) a galaxy whose NetCDF file already exists, opens and
    records the ``sedfit`` step is not fitted again: its summary row is recomputed from
    the file (``skipped=True``), with the values stored there, so it is identical to the
    row of the run that wrote it.  Failed galaxies are retried.  Changing the
    configuration does not invalidate finished files (the summary's ``config_digest``
    column shows which configuration made each file); use ``resume=False`` /
    ``--no-resume`` to recompute everything.  ``summary.csv`` is rewritten atomically
    every few seconds while galaxies finish and once at the end (also after an
    exception or Ctrl-C), galaxies not yet finished listed with ``status="pending"``, so
    a killed run leaves a usable summary of what was finished.
Summary columns (:data:`SUMMARY_COLUMNS`)
    ``id``, ``status`` (``ok``/``error``; ``pending`` only in a summary written while
    running or after an interruption), ``error`` (``"<Type>: message"``), ``skipped``
    (read from an existing file), ``seconds`` (the task's time when the file was made;
    a worker's first task includes its imports), ``file``, ``ra``, ``dec``,
    ``redshift``, ``stamp_size``, ``n_bands``, ``reference_band`` (``match_to``, else
    F444W, else the reddest band); ``log_mass_*`` and ``log_sfr100_*`` (16/50/84
    percentiles, ``integrated`` = one fit of the summed photometry, ``pixel_sum`` = sum
    over the fitted pixels, from the ``sedfit`` attributes), ``mass_difference_dex``
    and ``sfr_difference_dex`` (pixel sum - integrated, medians); ``r50_arcsec`` (the
    deconvolved half-light semi-major axis in the reference band);
    ``half_mass_radius_arcsec`` and ``half_mass_method`` (``r50_mass`` of
    :func:`pegleg.mass_profile.mass_profile`, or, when that is unavailable or fails,
    the r50 of the radial profile of the fitted ``stellar_mass_density``; the method
    says which and why); QA: ``deconvolve_ok_all``, ``n_bands_deconvolve_ok``,
    ``sky_ok_fraction`` and ``qa_ok_fraction`` (fractions of bands passing
    :func:`pegleg.deconvolve.qa`), ``median_reduced_chi2`` (SED fit),
    ``n_fitted_pixels``; ``warnings`` (pegleg/astropy warnings of the run) and
    ``config_digest``.
Configuration (TOML, ``version = 1``)
    See :class:`Config`; an example::

        version = 1
        data_dir = "data"          # relative to the TOML file's folder
        output_dir = "results"
        psf = "psf"                # folder of <BAND>.fits PSFs, inside data_dir
        stamp_size = 65            # pixels; a catalogue 'size' column gives 4 x size
        match_to = "F444W"         # false: no PSF matching
        register = false           # true: align the bands to the reference band first
        calibrate_errors = true
        bands = ["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]   # optional

        [mosaics.F444W]            # one table per band: sci, err[, seg] files
        sci = "mosaics/F444W_sci.fits"
        err = "mosaics/F444W_err.fits"
        seg = "mosaics/seg.fits"
        # or:  mosaics.F444W = "mosaics/F444W.fits"  (extensions SCI, ERR[, SEG])
        # or, instead of mosaics:  stamps = "stamps"  (stamps/<id>/<BAND>.fits)

        [deconvolve]               # keyword arguments of ds.pegleg.deconvolve
        sky_model = "flat"

        [sedfit]                   # keyword arguments of ds.pegleg.sedfit (not redshift)
        method = "importance"
        n_draws = 128

        [photo_z]                  # ds.pegleg.photo_z, for catalogue rows with no redshift
        n_draws = 2048

    Tables ``open_stamps`` and ``psf_match`` pass further keyword arguments to those
    functions (e.g. ``open_stamps.units = "MJy/sr"``).
Path safety
    ``data_dir`` and ``output_dir`` are the two roots.  Given relative in a TOML file
    they are relative to the file's folder and may not leave it (``..``); absolute roots
    are accepted as they are.  Every input path of the configuration (mosaics, PSFs,
    stamp folders) is relative to ``data_dir`` and must resolve (symbolic links
    followed) inside it; every output is written inside ``output_dir`` under a name
    derived from the galaxy id, sanitised to ``[A-Za-z0-9._-]`` (other characters become
    ``_``); ids containing a path separator or ``..``, or that are empty, are rejected
    with :class:`~pegleg.SchemaError`, as are two ids that sanitise to the same name.
    Model files (``sedfit.network``, ``sedfit.emulator``) are either bundled names
    (``"default"``: no path separator, no ``.npz``) or paths: relative ones inside
    ``data_dir``, absolute ones anywhere, but they must exist and end with ``.npz``
    (pegleg's pickle-free format).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .exceptions import FileFormatError, PeglegError, SchemaError
from .schema import last_step

__all__ = ["Config", "read_catalog", "process_galaxy", "run_catalog", "local_cluster", "summarize", "safe_id",
           "write_summary", "counts_line", "CONFIG_VERSION", "SUMMARY_COLUMNS", "WORKER_CONFIG"]

#: The configuration format version this module reads.
CONFIG_VERSION = 1
#: Output file of the summary table (inside ``output_dir``).
SUMMARY_NAME = "summary"
#: Least seconds between rewrites of ``summary.csv`` while a run is going (at least 10x
#: the time the last rewrite took, so large catalogues do not spend their time rewriting it).
SUMMARY_INTERVAL = 1.0
#: Smallest stamp side derived from a catalogue ``size`` (pixels).
MIN_STAMP = 15
_MAX_STAMP = 4097
_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_PIPELINE_STEP = "pipeline"
_TASK_PREFIX = "pegleg-galaxy"

_Q = ("p16", "p50", "p84")
#: Columns of the summary table, in order.
SUMMARY_COLUMNS = (
    ["id", "status", "error", "skipped", "seconds", "file", "ra", "dec", "redshift", "stamp_size", "n_bands",
     "reference_band"]
    + [f"log_mass_integrated_{q}" for q in _Q] + [f"log_mass_pixel_sum_{q}" for q in _Q]
    + [f"log_sfr100_integrated_{q}" for q in _Q] + [f"log_sfr100_pixel_sum_{q}" for q in _Q]
    + ["mass_difference_dex", "sfr_difference_dex", "r50_arcsec", "half_mass_radius_arcsec", "half_mass_method",
       "deconvolve_ok_all", "n_bands_deconvolve_ok", "sky_ok_fraction", "qa_ok_fraction",
       "median_reduced_chi2", "n_fitted_pixels", "warnings", "config_digest",
       "redshift_source", "photo_z_p16", "photo_z_p84"]
)


# ---------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------
def safe_id(value: Any) -> str:
    """File-name stem of a galaxy id: characters outside ``[A-Za-z0-9._-]`` become ``_``.

    Raises :class:`~pegleg.SchemaError` for an empty id, an id with a path separator
    (``/`` or ``\\``) or a ``..`` component, and an id that would be a hidden file name.
    """
    text = str(value).strip()
    if not text or text.lower() == "nan":
        raise SchemaError(f"catalogue id {value!r}: empty")
    if "/" in text or "\\" in text or ".." in text or "\x00" in text:
        raise SchemaError(f"catalogue id {value!r}: contains a path separator or '..'; ids name output files "
                          "inside output_dir and may not point elsewhere")
    name = _ID_CHARS.sub("_", text)
    if name.startswith("."):
        raise SchemaError(f"catalogue id {value!r}: may not start with '.'")
    return name


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _confined(value: Any, root: Path, what: str) -> Path:
    """``value`` (relative to ``root``, or absolute) resolved; it must lie inside ``root``."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise SchemaError(f"{what}: expected a path (text), got {value!r}")
    p = Path(os.fspath(value)).expanduser()
    full = (p if p.is_absolute() else root / p).resolve()
    if not _inside(full, root):
        raise SchemaError(f"{what}: path {str(value)!r} resolves to {full}, outside {root}; "
                          "paths must stay inside their root (no '..' escapes, no absolute paths elsewhere)")
    return full


def _root(value: Any, base: Path, what: str) -> Path:
    """A root folder: absolute as given, or relative to ``base`` and not escaping it."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise SchemaError(f"{what}: expected a folder path (text), got {value!r}")
    p = Path(os.fspath(value)).expanduser()
    if p.is_absolute():
        return p.resolve()
    full = (base / p).resolve()
    if not _inside(full, base.resolve()):
        raise SchemaError(f"{what}: relative path {str(value)!r} escapes its base folder {base} (resolves to "
                          f"{full}); use a path inside it or an absolute path")
    return full


def _model_file(value: Any, data_dir: Path, what: str) -> str:
    """A bundled model name, or an existing ``.npz`` file (relative: inside data_dir)."""
    if not isinstance(value, str) or not value.strip():
        raise SchemaError(f"{what}: expected a bundled model name or a path to a .npz file, got {value!r}")
    if "/" not in value and os.sep not in value and not value.endswith(".npz"):
        return value  # bundled name, e.g. "default"
    p = Path(value).expanduser()
    full = _confined(p, data_dir, what) if not p.is_absolute() else p.resolve()
    if full.suffix != ".npz":
        raise SchemaError(f"{what}: {value!r} is not a .npz model file (pegleg's pickle-free format)")
    if not full.is_file():
        raise FileFormatError(f"{what}: model file {full} does not exist")
    return str(full)


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------
def _signature_defaults(func) -> dict[str, Any]:
    return {name: par.default for name, par in inspect.signature(func).parameters.items()
            if par.kind not in (par.VAR_KEYWORD, par.VAR_POSITIONAL)}


def _step_functions() -> dict[str, tuple[Any, tuple[str, ...]]]:
    """step table -> (function, parameters the pipeline sets itself)."""
    from .deconvolve.step import deconvolve
    from .io.fits import open_stamps
    from .match import psf_match
    from .sed.photoz import photo_z_dataset
    from .sed.step import sedfit

    return {
        "open_stamps": (open_stamps, ("source", "bands", "psf", "center", "size", "redshift", "source_id")),
        "psf_match": (psf_match, ("ds", "target")),
        "deconvolve": (deconvolve, ("ds", "bands")),
        "sedfit": (sedfit, ("ds", "redshift")),
        "photo_z": (photo_z_dataset, ("ds",)),
    }


_SET_BY = {"source": "mosaics/stamps", "bands": "bands", "psf": "psf", "center": "the catalogue (ra, dec)",
           "size": "stamp_size / the catalogue 'size'", "redshift": "the catalogue", "source_id": "the catalogue id",
           "target": "match_to", "ds": "the pipeline"}


def _check_value_type(value: Any, default: Any, what: str) -> None:
    """Light type check of an option against its function default."""
    if default is inspect.Parameter.empty or default is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
        expected = "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        expected = "a number"
    elif isinstance(default, str):
        ok = isinstance(value, str)
        expected = "text"
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (list, tuple))
        expected = "a list"
    else:
        return
    if not ok:
        raise SchemaError(f"{what}: expected {expected}, got {type(value).__name__} {value!r}")


#: Options whose default's type is not the only accepted one (no type check here).
_MULTI_TYPED = {("open_stamps", "segmentation"), ("open_stamps", "units")}


def _check_options(table: str, options: Any, data_dir: Path) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise SchemaError(f"{table}: expected a table of keyword arguments, got {type(options).__name__}")
    func, fixed = _step_functions()[table]
    known = _signature_defaults(func)
    out = {}
    for key, value in options.items():
        what = f"{table}.{key}"
        if key in fixed:
            raise SchemaError(f"{what}: set by {_SET_BY.get(key, 'the pipeline')}, not in [{table}]")
        if key not in known:
            allowed = sorted(k for k in known if k not in fixed)
            raise SchemaError(f"{what}: unknown option; {table} accepts {allowed}")
        if (table, key) not in _MULTI_TYPED:
            _check_value_type(value, known[key], what)
        if table in ("sedfit", "photo_z") and key in ("network", "emulator"):
            value = _model_file(value, data_dir, what)
        elif isinstance(value, (dict, Mapping)) or (table == "deconvolve" and key == "psf" and not isinstance(value, str)):
            raise SchemaError(f"{what}: expected a plain value, got {type(value).__name__}")
        elif table in ("sedfit", "photo_z") and key == "region" and not isinstance(value, str):
            raise SchemaError(f"{what}: expected 'segment' or 'all' (maps cannot be given in a configuration)")
        out[key] = tuple(value) if isinstance(value, list) and key in ("mass_range",) else value
    if table == "photo_z" and ("z_grid" in out or "z_prior" in out):
        raise SchemaError(f"{table}: z_grid and z_prior are not configurable here (default grid, flat prior)")
    return out


_TOP_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "version": ((int,), "an integer"),
    "data_dir": ((str, os.PathLike), "a folder path (text)"),
    "output_dir": ((str, os.PathLike), "a folder path (text)"),
    "mosaics": ((Mapping,), "a table band -> file(s)"),
    "stamps": ((str, os.PathLike), "a folder path (text)"),
    "psf": ((str, os.PathLike, Mapping), "a folder/file path or a table band -> file"),
    "stamp_size": ((int,), "an integer number of pixels"),
    "match_to": ((str, bool, type(None)), "a band name or false"),
    "calibrate_errors": ((bool,), "true or false"),
    "register": ((bool,), "true or false"),
    "bands": ((list, tuple, type(None)), "a list of band names"),
    "open_stamps": ((Mapping,), "a table"),
    "psf_match": ((Mapping,), "a table"),
    "deconvolve": ((Mapping,), "a table"),
    "sedfit": ((Mapping,), "a table"),
    "photo_z": ((Mapping,), "a table"),
}


@dataclasses.dataclass
class Config:
    """Settings of a catalogue run; the defaults are the recommended chain.

    Parameters
    ----------
    mosaics : mapping band -> file(s), optional
        Per-band mosaics: a FITS file with ``SCI``/``ERR`` (and optional ``SEG``)
        extensions, ``[sci, err(, seg)]`` files, or ``{sci=..., err=..., seg=...}``.
        Paths relative to ``data_dir``.  Exactly one of ``mosaics`` and ``stamps``.
    stamps : folder, optional
        A folder of per-galaxy stamp folders ``<stamps>/<id>/<BAND>.fits`` (the id
        sanitised as by :func:`safe_id`), read with :func:`pegleg.open_stamps` and
        used whole (``stamp_size`` and ``size`` do not apply).
    psf : folder, file or mapping band -> file
        PSFs (:func:`pegleg.open_stamps` ``psf=``), relative to ``data_dir``.
    stamp_size : int
        Cutout side in pixels (default 65) for galaxies without a catalogue ``size``;
        with a ``size`` (pixels) the side is ``4 x size`` rounded up to an odd number,
        at least :data:`MIN_STAMP`.
    match_to : str or None
        PSF-match every band to this band before deconvolving (default ``"F444W"``; the
        deconvolution then uses that band's PSF: match-then-deconvolve).  None (TOML:
        ``false`` or ``"none"``) deconvolves every band with its own PSF.  Skipped when
        the stamps are already matched (``open_stamps.matched_to``).
    open_stamps, psf_match, deconvolve, sedfit, photo_z : dict
        Extra keyword arguments of these steps (checked against their signatures).
        ``photo_z`` (:func:`pegleg.sed.photoz.photo_z_dataset`) runs only for catalogue
        rows with an empty redshift: their stamp's integrated photometry (after
        deconvolving and calibrating the errors) gives the redshift posterior, and the
        pixels are fitted at its peak (summary columns ``redshift_source`` = "photo-z",
        ``photo_z_p16``, ``photo_z_p84``).
        Inside a task ``n_workers=1`` and ``progress=False`` unless given.
        ``sedfit.network``/``sedfit.emulator``: see "Path safety" in the module docstring.
    calibrate_errors : bool
        Rescale the errors to the measured sky rms after deconvolving (default True).
    register : bool
        Measure and apply the sub-pixel shifts of the bands relative to the reference
        band (:func:`pegleg.register.register` with ``apply=True``) before matching and
        deconvolving (default False: mosaics on one astrometric grid are used as they
        are).  Residual misalignments show up as dipole residuals in the pixel SED fits:
        on the JOF stamps ~1 px offsets of F162M, F335M and F356W raised JOF-778's median
        reduced chi2 to 4.65 (1.78 registered).  Shifts measure the light, so bands whose
        morphology genuinely differs are moved too (see :mod:`pegleg.register`).
    bands : list of str, optional
        Bands to use (default: every band of ``mosaics`` / of each stamp folder).
    data_dir, output_dir : folder
        Roots of all inputs and of all outputs (module docstring, "Path safety").
        Relative values are resolved against the current folder here, against the TOML
        file's folder in :meth:`from_toml`.
    version : int
        Configuration format version; must be :data:`CONFIG_VERSION`.

    Raises
    ------
    SchemaError
        Unknown keys (named), wrong types, paths escaping their root, unknown step options.
    FileFormatError
        Missing ``data_dir``, mosaic, PSF or model files.
    """

    mosaics: dict[str, Any] | None = None
    stamps: str | None = None
    psf: Any = None
    stamp_size: int = 65
    match_to: str | None = "F444W"
    open_stamps: dict[str, Any] = dataclasses.field(default_factory=dict)
    psf_match: dict[str, Any] = dataclasses.field(default_factory=dict)
    deconvolve: dict[str, Any] = dataclasses.field(default_factory=dict)
    calibrate_errors: bool = True
    register: bool = False
    sedfit: dict[str, Any] = dataclasses.field(default_factory=dict)
    photo_z: dict[str, Any] = dataclasses.field(default_factory=dict)
    bands: list[str] | None = None
    data_dir: Any = "."
    output_dir: Any = "pegleg_run"
    version: int = CONFIG_VERSION
    _base: Any = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self):
        base = Path(self._base) if self._base is not None else Path.cwd()
        for name, (types, expected) in _TOP_TYPES.items():
            value = getattr(self, name)
            if value is None and name in ("mosaics", "stamps", "psf", "bands", "match_to"):
                continue
            if name in ("open_stamps", "psf_match", "deconvolve", "sedfit", "photo_z") and value is None:
                setattr(self, name, {})
                continue
            bad_bool = isinstance(value, bool) and bool not in types
            if bad_bool or not isinstance(value, types):
                raise SchemaError(f"config key {name!r}: expected {expected}, got {type(value).__name__} {value!r}")
        if self.version != CONFIG_VERSION:
            raise SchemaError(f"config key 'version': this pegleg reads version {CONFIG_VERSION}, got {self.version!r}")
        self.data_dir = _root(self.data_dir, base, "data_dir")
        if not self.data_dir.is_dir():
            raise FileFormatError(f"data_dir: folder {self.data_dir} does not exist")
        self.output_dir = _root(self.output_dir, base, "output_dir")
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise FileFormatError(f"output_dir: {self.output_dir} exists and is not a folder")
        # bands / match_to
        if self.bands is not None:
            if not self.bands or not all(isinstance(b, str) and b.strip() for b in self.bands):
                raise SchemaError(f"config key 'bands': expected a non-empty list of band names, got {self.bands!r}")
            self.bands = [b.strip() for b in self.bands]
        if isinstance(self.match_to, bool):
            if self.match_to:
                raise SchemaError("config key 'match_to': expected a band name or false, got true")
            self.match_to = None
        elif isinstance(self.match_to, str):
            self.match_to = self.match_to.strip() or None
            if self.match_to is not None and self.match_to.lower() == "none":
                self.match_to = None
        if not 9 <= self.stamp_size <= _MAX_STAMP:
            raise SchemaError(f"config key 'stamp_size': expected 9..{_MAX_STAMP} pixels, got {self.stamp_size!r}")
        # inputs
        if (self.mosaics is None) == (self.stamps is None):
            raise SchemaError("config: give exactly one of 'mosaics' (per-band mosaic files) and 'stamps' "
                              "(a folder of per-galaxy stamp folders)")
        if self.mosaics is not None:
            self.mosaics = self._resolve_mosaics(self.mosaics)
        else:
            self.stamps = _confined(self.stamps, self.data_dir, "stamps")
            if not self.stamps.is_dir():
                raise FileFormatError(f"stamps: folder {self.stamps} does not exist")
        if self.psf is not None:
            if isinstance(self.psf, Mapping):
                self.psf = {str(b).strip(): self._input_file(p, f"psf.{b}") for b, p in self.psf.items()}
            else:
                self.psf = _confined(self.psf, self.data_dir, "psf")
                if not self.psf.exists():
                    raise FileFormatError(f"psf: {self.psf} does not exist")
        if self.match_to is not None:
            known = self.bands if self.bands is not None else (list(self.mosaics) if self.mosaics else None)
            if known is not None and self.match_to.upper() not in {b.upper() for b in known}:
                raise SchemaError(f"config key 'match_to': band {self.match_to!r} is not among the bands {known}")
        for table in ("open_stamps", "psf_match", "deconvolve", "sedfit", "photo_z"):
            setattr(self, table, _check_options(table, getattr(self, table), self.data_dir))

    def _input_file(self, value: Any, what: str) -> Path:
        p = _confined(value, self.data_dir, what)
        if not p.is_file():
            raise FileFormatError(f"{what}: file {p} does not exist")
        return p

    def _resolve_mosaics(self, mosaics: Mapping) -> dict[str, Any]:
        if not mosaics:
            raise SchemaError("config key 'mosaics': empty; expected one entry per band")
        out: dict[str, Any] = {}
        for band, value in mosaics.items():
            band = str(band).strip()
            what = f"mosaics.{band}"
            if isinstance(value, Mapping):
                low = {str(k).lower(): v for k, v in value.items()}
                unknown = sorted(set(low) - {"sci", "err", "seg"})
                if unknown:
                    raise SchemaError(f"{what}: unknown key(s) {unknown}; expected sci, err and optionally seg")
                if "sci" not in low or "err" not in low:
                    raise SchemaError(f"{what}: needs both 'sci' and 'err' files")
                out[band] = {k: self._input_file(v, f"{what}.{k}") for k, v in low.items()}
            elif isinstance(value, (list, tuple)):
                if len(value) not in (2, 3):
                    raise SchemaError(f"{what}: expected [sci, err] or [sci, err, seg] files, got {len(value)} entries")
                out[band] = dict(zip(("sci", "err", "seg"),
                                     (self._input_file(v, f"{what}[{i}]") for i, v in enumerate(value))))
            elif isinstance(value, (str, os.PathLike)):
                out[band] = self._input_file(value, what)
            else:
                raise SchemaError(f"{what}: expected a FITS file, [sci, err(, seg)] or a table sci/err/seg, "
                                  f"got {type(value).__name__}")
        return out

    # -- construction --------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, base: str | os.PathLike | None = None) -> "Config":
        """A Config from a mapping (e.g. parsed TOML); unknown keys raise SchemaError naming them.

        Relative ``data_dir``/``output_dir`` are taken relative to ``base`` (default: the
        current folder).  ``version`` is required.
        """
        if not isinstance(data, Mapping):
            raise SchemaError(f"config: expected a table, got {type(data).__name__}")
        fields = [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
        unknown = [k for k in data if k not in fields]
        if unknown:
            raise SchemaError(f"config: unknown key(s) {unknown}; known keys: {fields}")
        if "version" not in data:
            raise SchemaError(f"config: missing key 'version' (expected version = {CONFIG_VERSION})")
        return cls(**dict(data), _base=Path(base).resolve() if base is not None else None)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "Config":
        """Read a TOML configuration (:mod:`tomllib`); relative roots are relative to its folder."""
        import tomllib

        path = Path(path).expanduser()
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise FileFormatError(f"{path}: configuration file not found") from None
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SchemaError(f"{path}: not a valid TOML file ({exc})") from None
        try:
            return cls.from_dict(data, base=path.resolve().parent)
        except PeglegError as exc:
            raise type(exc)(f"{path}: {exc}") from None

    def with_output_dir(self, output_dir: str | os.PathLike) -> "Config":
        """A copy writing to ``output_dir`` (absolute, or relative to the current folder).

        This is the command line's ``--out``: the user's explicit choice, so it is not
        confined to the current folder (unlike a relative ``output_dir`` in a TOML file).
        """
        if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir).strip():
            raise SchemaError(f"output_dir: expected a folder path, got {output_dir!r}")
        target = Path(os.fspath(output_dir)).expanduser().resolve()
        return dataclasses.replace(self, output_dir=str(target), _base=None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible settings (resolved paths)."""
        def conv(v):
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, Mapping):
                return {str(k): conv(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            return v

        return {f.name: conv(getattr(self, f.name)) for f in dataclasses.fields(self) if not f.name.startswith("_")}

    def digest(self) -> str:
        """Short hash of the settings that affect the results (not ``output_dir``)."""
        d = self.to_dict()
        d.pop("output_dir", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def output_path(self, galaxy_id: Any) -> Path:
        """``<output_dir>/<safe id>.nc`` (checked to lie inside output_dir)."""
        p = (self.output_dir / f"{safe_id(galaxy_id)}.nc").resolve()
        if not _inside(p, self.output_dir):  # pragma: no cover - safe_id prevents it
            raise SchemaError(f"output file {p} would lie outside output_dir {self.output_dir}")
        return p


def _as_config(config: Any) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, (str, os.PathLike)):
        return Config.from_toml(config)
    if isinstance(config, Mapping):
        return Config.from_dict(config)
    raise SchemaError(f"config: expected a Config, a TOML path or a mapping, got {type(config).__name__}")


# ---------------------------------------------------------------------------
# catalogue
# ---------------------------------------------------------------------------
_REQUIRED = ("id", "ra", "dec", "redshift")


def read_catalog(path: Any):
    """Read a catalogue: CSV, or FITS table (``.fits``, ``.fit``, ``.fits.gz``), or a DataFrame.

    Columns (case-insensitive): ``id``, ``ra``, ``dec`` (degrees), ``redshift`` and
    optionally ``size`` (pixels; the stamp side is 4 x size).  Other columns are kept.

    Returns
    -------
    pandas.DataFrame
        Columns ``id`` (str), ``ra``, ``dec``, ``redshift``, ``size`` (float, NaN when
        absent), then the other columns, in file order.

    Raises
    ------
    FileFormatError
        Missing or unreadable file.
    SchemaError
        Missing columns, non-numeric or non-finite values (the message names column,
        row and id), invalid or duplicate ids (also after sanitising), no rows.
    """
    import pandas as pd

    if isinstance(path, pd.DataFrame):
        df, where = path.copy(), "catalogue"
    else:
        p = Path(os.fspath(path)).expanduser()
        where = str(p)
        if not p.is_file():
            raise FileFormatError(f"{p}: catalogue file not found")
        low = p.name.lower()
        try:
            if low.endswith((".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")):
                from astropy.table import Table

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t = Table.read(p)
                names = [n for n in t.colnames if t[n].ndim <= 1]
                df = t[names].to_pandas()
                for c in df.columns:
                    if df[c].dtype == object:
                        df[c] = df[c].map(lambda v: v.decode() if isinstance(v, bytes) else v)
            else:
                df = pd.read_csv(p, dtype=str, keep_default_na=False, skipinitialspace=True, comment="#")
        except Exception as exc:  # parser errors of any kind
            raise FileFormatError(f"{p}: not a readable CSV or FITS table ({type(exc).__name__}: {exc})") from None
    cols = {}
    for c in df.columns:
        key = str(c).strip().lower()
        if key in cols:
            raise SchemaError(f"{where}: column {key!r} appears twice (column names are case-insensitive)")
        cols[key] = c
    missing = [c for c in _REQUIRED if c not in cols]
    if missing:
        raise SchemaError(f"{where}: missing column(s) {missing}; found {list(map(str, df.columns))} "
                          "(needs id, ra, dec, redshift; optional size)")
    if len(df) == 0:
        raise SchemaError(f"{where}: no rows")
    out = pd.DataFrame({"id": [str(v).strip() for v in df[cols["id"]]]})
    for c in ("ra", "dec", "redshift", "size"):
        if c not in cols:
            out[c] = np.nan
            continue
        vals = []
        for i, v in enumerate(df[cols[c]]):
            text = v.strip() if isinstance(v, str) else v
            if c in ("size", "redshift") and (text == "" or text is None or
                                              (isinstance(text, str) and text.lower() in ("nan", "none", "null")) or
                                              (isinstance(text, float) and math.isnan(text))):
                vals.append(np.nan)        # size: from the config; redshift: photometric (photo_z)
                continue
            try:
                x = float(text)
            except (TypeError, ValueError):
                x = None
            if x is None or not math.isfinite(x):
                raise SchemaError(f"{where}: column {c!r}, row {i + 1} (id {out['id'][i]!r}): {v!r} is not a "
                                  "finite number")
            vals.append(x)
        out[c] = np.asarray(vals, dtype=float)
    bad = out.index[(out["dec"] < -90) | (out["dec"] > 90)]
    if len(bad):
        i = bad[0]
        raise SchemaError(f"{where}: column 'dec', row {i + 1} (id {out['id'][i]!r}): {out['dec'][i]} is outside "
                          "-90..90 degrees")
    bad = out.index[out["redshift"] < 0]
    if len(bad):
        i = bad[0]
        raise SchemaError(f"{where}: column 'redshift', row {i + 1} (id {out['id'][i]!r}): negative redshift")
    seen: dict[str, str] = {}
    for i, gid in enumerate(out["id"]):
        try:
            name = safe_id(gid)
        except SchemaError as exc:
            raise SchemaError(f"{where}: row {i + 1}: {exc}") from None
        if name in seen:
            raise SchemaError(f"{where}: ids {seen[name]!r} and {gid!r} (row {i + 1}) both give the output name "
                              f"{name!r}; ids must be unique")
        seen[name] = gid
    for c in df.columns:
        key = str(c).strip().lower()
        if key not in ("id", "ra", "dec", "redshift", "size") and key not in out.columns:
            out[key] = df[c].values
    return out


# ---------------------------------------------------------------------------
# one galaxy
# ---------------------------------------------------------------------------
def _stamp_size(row: Mapping, config: Config) -> int:
    size = row.get("size")
    try:
        size = float(size)
    except (TypeError, ValueError):
        size = float("nan")
    if not math.isfinite(size) or size <= 0:
        return int(config.stamp_size)
    n = max(MIN_STAMP, int(math.ceil(4.0 * size)))
    n += 1 - n % 2
    return min(n, _MAX_STAMP)


def _reference_band(bands: list[str], config: Config, ds) -> str:
    if config.match_to is not None:
        for b in bands:
            if b.upper() == config.match_to.upper():
                return b
    if "F444W" in bands:
        return "F444W"
    return max(bands, key=lambda b: float(ds["wavelength"].sel(band=b)))


def _q(values: Any) -> list[float]:
    a = np.asarray(values, dtype=float).ravel() if values is not None else np.array([])
    return [float(x) for x in a[:3]] if a.size >= 3 else [float("nan")] * 3


def _half_mass_radius(ds, band: str) -> tuple[float, str]:
    """(semi-major axis in arcsec enclosing half of the stellar mass, how it was measured).

    Preferably ``r50_mass`` (median) of :func:`pegleg.mass_profile.mass_profile` in the
    reference band (resolved fit where reliable, M/L x light beyond).  When that module
    is absent or fails on this galaxy: the ``r50`` of the radial profile
    (:func:`pegleg.profiles.radial_profile`) of ``stellar_mass_density`` (posterior
    median) with unfitted pixels counted as zero mass; the method column says which
    (and why the first one was not used).
    """
    note = ""
    try:
        from .mass_profile import mass_profile
    except ImportError as exc:
        mass_profile = None
        note = f" (mass_profile unavailable: {type(exc).__name__})"
    if mass_profile is not None:
        try:
            prof = mass_profile(ds, band)
            r50 = float(np.asarray(prof.attrs["r50_mass"], dtype=float).ravel()[1])
            if math.isfinite(r50):
                return r50, "mass_profile"
            note = " (mass_profile gave no finite r50_mass)"
        except Exception as exc:  # a failing profile must not fail the galaxy
            note = " ".join(f" (mass_profile failed: {type(exc).__name__}: {exc})".split())[:300]
    return _half_mass_radius_pixels(ds), "radial_profile" + note


def _half_mass_radius_pixels(ds) -> float:
    """``r50`` of the radial profile of the fitted stellar-mass surface density (arcsec)."""
    from . import schema as S
    from .profiles import radial_profile

    if S.STELLAR_MASS_DENSITY not in ds:
        return float("nan")
    dens = ds[S.STELLAR_MASS_DENSITY]
    if S.QUANTILE in dens.dims:
        dens = dens.sel({S.QUANTILE: 0.5}, method="nearest", drop=True)
    fitted = (ds[S.SEDFIT_FLAG].values != 4) if S.SEDFIT_FLAG in ds else np.isfinite(dens.values)
    sub = ds[[v for v in (S.MASK,) if v in ds]].copy()
    sub[S.STELLAR_MASS_DENSITY] = dens.copy(data=np.where(fitted, dens.values, 0.0))
    for name in ("centre_y", "centre_x", "axis_ratio", "position_angle", "wavelength"):
        if name in ds:
            sub[name] = ds[name]
    try:
        prof = radial_profile(sub, S.STELLAR_MASS_DENSITY)
    except PeglegError:
        return float("nan")
    return float(prof["r50"])


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def summarize(ds, *, skipped: bool = False, file: str | None = None) -> dict[str, Any]:
    """The summary row of a finished pipeline Dataset (as written by :func:`process_galaxy`).

    Everything is read from ``ds`` (the ``pipeline`` history step holds the catalogue
    row, the seconds and the warnings), so a row recomputed from a file is identical
    to the row of the run that wrote it.
    """
    from . import schema as S

    step = last_step(ds, _PIPELINE_STEP) or {}
    par = step.get("parameters", {})
    bands = [str(b) for b in ds[S.BAND].values]
    row: dict[str, Any] = {c: float("nan") for c in SUMMARY_COLUMNS}
    row.update(id=str(par.get("id", ds.attrs.get(S.SOURCE_ID, ""))), status="ok", error="", skipped=bool(skipped),
               seconds=_num(par.get("seconds")), file=file or "", ra=_num(par.get("ra")), dec=_num(par.get("dec")),
               redshift=_num(par.get("redshift")), stamp_size=int(par.get("stamp_size", ds.sizes[S.Y])),
               n_bands=len(bands), warnings=str(par.get("warnings", "")),
               config_digest=str(par.get("config_digest", "")))
    ref = par.get("reference_band") or ("F444W" if "F444W" in bands else bands[-1])
    row["reference_band"] = ref
    row["redshift_source"] = str(par.get("redshift_source", "catalogue"))
    pzq = ds.attrs.get("photo_z_quantiles")
    if pzq is not None and np.size(pzq) == 3:
        row["photo_z_p16"], row["photo_z_p84"] = float(np.ravel(pzq)[0]), float(np.ravel(pzq)[2])
    for name, key in (("log_mass_integrated", "sedfit_log_mass_integrated"),
                      ("log_mass_pixel_sum", "sedfit_log_mass_pixel_sum"),
                      ("log_sfr100_integrated", "sedfit_log_sfr100_integrated"),
                      ("log_sfr100_pixel_sum", "sedfit_log_sfr100_pixel_sum")):
        for q, v in zip(_Q, _q(ds.attrs.get(key))):
            row[f"{name}_{q}"] = v
    row["mass_difference_dex"] = _num(ds.attrs.get("sedfit_mass_difference_dex"))
    row["sfr_difference_dex"] = _num(ds.attrs.get("sedfit_sfr_difference_dex"))
    row["median_reduced_chi2"] = _num(ds.attrs.get("sedfit_median_reduced_chi2"))
    row["n_fitted_pixels"] = int(ds.attrs.get("sedfit_n_fitted", 0))
    if S.R50 in ds and ref in bands:
        row["r50_arcsec"] = float(ds[S.R50].sel({S.BAND: ref}))
    if "half_mass_method" in par:  # measured once when the file was written (a mass profile costs ~0.2-1 s)
        row["half_mass_radius_arcsec"], row["half_mass_method"] = (_num(par.get("half_mass_radius_arcsec")),
                                                                   str(par["half_mass_method"]))
    else:
        row["half_mass_radius_arcsec"], row["half_mass_method"] = (
            _half_mass_radius(ds, ref) if ref in bands else (float("nan"), ""))
    if S.FIT_OK in ds:
        ok = np.asarray(ds[S.FIT_OK].values, dtype=bool)
        row["deconvolve_ok_all"] = bool(ok.all())
        row["n_bands_deconvolve_ok"] = int(ok.sum())
    if S.MODEL in ds:
        from .deconvolve.step import qa

        table = qa(ds)
        row["sky_ok_fraction"] = float(table["sky_ok"].mean())
        row["qa_ok_fraction"] = float(table["ok"].mean())
    return row


def _error_row(row: Mapping, config: Config | None, exc: BaseException | str, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {c: float("nan") for c in SUMMARY_COLUMNS}
    if isinstance(exc, BaseException):
        msg = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, PeglegError):
            tb = traceback.extract_tb(exc.__traceback__)
            where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
            msg = f"{msg} (unexpected error{where})"
    else:
        msg = str(exc)
    msg = " ".join(msg.split())  # one line (SkyCoord reprs span lines)
    out.update(id=str(row.get("id", "")), status="error", error=msg, skipped=False, seconds=float(seconds),
               file="", ra=_num(row.get("ra")), dec=_num(row.get("dec")), redshift=_num(row.get("redshift")),
               stamp_size=_stamp_size(row, config) if config is not None else float("nan"), n_bands=0,
               reference_band="", half_mass_method="", warnings="", config_digest=config.digest() if config is not None else "",
               redshift_source="",
               deconvolve_ok_all=False, n_bands_deconvolve_ok=0, n_fitted_pixels=0)
    return out


def _complete(path: Path, galaxy_id: str):
    """The finished Dataset at ``path``, or None (missing, unreadable, no sedfit step, other id)."""
    from .io.netcdf import open_dataset

    if not path.is_file():
        return None
    try:
        ds = open_dataset(path)
        if last_step(ds, "sedfit") is None:
            return None
        step = last_step(ds, _PIPELINE_STEP)
        if step is not None and str(step.get("parameters", {}).get("id")) != str(galaxy_id):
            return None
        return ds
    except (PeglegError, ValueError, KeyError):
        return None


def _open(row: Mapping, config: Config, size: int):
    from astropy.coordinates import SkyCoord
    import astropy.units as u

    from .io.fits import open_stamps

    gid = str(row["id"])
    kw = dict(config.open_stamps)
    z = float(row["redshift"])
    kw.update(bands=config.bands, psf=config.psf, redshift=z if math.isfinite(z) else None, source_id=gid)
    if config.mosaics is not None:
        centre = SkyCoord(float(row["ra"]) * u.deg, float(row["dec"]) * u.deg, frame="icrs")
        return open_stamps(config.mosaics, center=centre, size=size, **kw)
    folder = _confined(safe_id(gid), config.stamps, f"stamp folder of {gid!r}")
    if not _inside(folder, config.data_dir):  # pragma: no cover - stamps is inside data_dir
        raise SchemaError(f"stamp folder {folder} lies outside data_dir")
    return open_stamps(folder, **kw)


def _chain(row: Mapping, config: Config) -> tuple[Any, str, int]:
    size = _stamp_size(row, config)
    ds = _open(row, config, size)
    if config.mosaics is None:  # stamp folders are used as they are
        size = int(ds.sizes["y"])
    bands = [str(b) for b in ds["band"].values]
    ref = _reference_band(bands, config, ds)
    if config.register:
        ds = ds.pegleg.register(ref, apply=True)
    if config.match_to is not None and not str(ds.attrs.get("resolution", "")).startswith("matched:"):
        ds = ds.pegleg.psf_match(ref, **{"progress": False, **config.psf_match})
    ds = ds.pegleg.deconvolve(**{"n_workers": 1, "progress": False, **config.deconvolve})
    if config.calibrate_errors:
        ds = ds.pegleg.calibrate_errors()
    z = float(row["redshift"])
    if not math.isfinite(z):          # no catalogue redshift: the peak of the photo-z posterior
        pz = ds.pegleg.photo_z(**config.photo_z)
        z = float(pz["z_peak"][0])
        ds = ds.assign_attrs(redshift=z, redshift_source="photo-z",
                             photo_z_quantiles=np.array([float(pz[k][0]) for k in ("z_p16", "z_median", "z_p84")]))
    ds = ds.pegleg.sedfit(redshift=z, **{"n_workers": 1, "progress": False, **config.sedfit})
    return ds, ref, size


def _remove_stale_temporaries(out: Path) -> None:
    """Delete ``.<name>.*.tmp`` files a killed earlier attempt at ``out`` left behind.

    :func:`~pegleg.io.atomic.atomic_write` removes its temporary file on any exception,
    but not when the process dies (a worker killed by the operating system while
    writing); each galaxy is written by one task at a time, so its leftovers are stale.
    """
    from .io.atomic import temporaries

    for tmp in temporaries(out):
        try:
            tmp.unlink()
        except OSError:  # pragma: no cover - gone already, or not ours to delete
            pass


def process_galaxy(row: Mapping, config: Any, *, resume: bool = False) -> dict[str, Any]:
    """Run the chain for one catalogue row and write ``<output_dir>/<id>.nc`` atomically.

    Parameters
    ----------
    row : mapping
        ``id``, ``ra``, ``dec`` (deg), ``redshift`` and optional ``size`` (pixels).
    config : Config, TOML path or mapping
    resume : bool
        Return the row of an existing complete file instead of recomputing it.

    Returns
    -------
    dict
        The summary row (:data:`SUMMARY_COLUMNS`): ``status`` ``"ok"`` or ``"error"``
        (with ``error`` = ``"<ExceptionType>: message"``); errors never propagate.
        Runs with one BLAS/OpenMP thread.
    """
    from threadpoolctl import threadpool_limits

    from . import schema as S
    from .io.netcdf import to_netcdf

    t0 = time.perf_counter()
    try:
        config = _as_config(config)
        gid = str(row["id"])
        out = config.output_path(gid)
    except Exception as exc:
        return _error_row(row, config if isinstance(config, Config) else None, exc, time.perf_counter() - t0)
    try:
        _remove_stale_temporaries(out)
        with threadpool_limits(1):
            if resume:
                done = _complete(out, gid)
                if done is not None:
                    return summarize(done, skipped=True, file=out.name)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds, ref, size = _chain(row, config)
                r50_mass, r50_method = _half_mass_radius(ds, ref)
            msgs = []
            for w in caught:
                text = " ".join(f"{w.category.__name__}: {w.message}".split())
                if text not in msgs:
                    msgs.append(text)
            seconds = time.perf_counter() - t0
            ds = S.append_history(ds, _PIPELINE_STEP, {
                "id": gid, "ra": float(row["ra"]), "dec": float(row["dec"]),
                "redshift": float(ds.attrs.get("redshift", row["redshift"])),
                "redshift_source": str(ds.attrs.get("redshift_source", "catalogue")),
                "stamp_size": int(size), "reference_band": ref, "seconds": round(seconds, 3),
                "warnings": "; ".join(msgs)[:2000], "half_mass_radius_arcsec": r50_mass,
                "half_mass_method": r50_method, "config_digest": config.digest(),
                "config": config.to_dict()})
            out.parent.mkdir(parents=True, exist_ok=True)
            to_netcdf(ds, out)
            return summarize(ds, file=out.name)
    except Exception as exc:
        return _error_row(row, config, exc, time.perf_counter() - t0)


# ---------------------------------------------------------------------------
# the catalogue run
# ---------------------------------------------------------------------------
def _summary_frame(rows: list[dict]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return df


def _with_pending(results: list[dict | None], rows: list[dict]) -> list[dict]:
    out = []
    for res, row in zip(results, rows):
        if res is None:
            res = {c: float("nan") for c in SUMMARY_COLUMNS}
            res.update(id=str(row["id"]), status="pending", error="not finished", skipped=False, file="",
                       ra=row["ra"], dec=row["dec"], redshift=row["redshift"], reference_band="",
                       half_mass_method="", warnings="", config_digest="", redshift_source="")
        out.append(res)
    return out


def write_summary(df, output_dir: str | os.PathLike) -> Path:
    """Write ``summary.csv`` (and ``summary.parquet`` if pyarrow is importable) atomically."""
    from .io.atomic import atomic_write

    output_dir = Path(output_dir)
    csv = output_dir / f"{SUMMARY_NAME}.csv"
    atomic_write(csv, lambda tmp: df.to_csv(tmp, index=False))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return csv
    atomic_write(output_dir / f"{SUMMARY_NAME}.parquet", lambda tmp: df.to_parquet(tmp, index=False))
    return csv


#: dask settings of the workers of :func:`local_cluster`: no statistical profiler.
WORKER_CONFIG = {"distributed.worker.profile.enabled": False}


def _distributed():
    """The ``distributed`` module, or a clear error naming the extra that installs it."""
    try:
        import distributed
    except ImportError:
        raise PeglegError("run_catalog needs dask.distributed: pip install 'pegleg[pipeline]'") from None
    return distributed


def local_cluster(n_workers: int = 2, *, profile: bool = False, **kwargs: Any):
    """The ``distributed.LocalCluster`` that :func:`run_catalog` starts by default.

    ``n_workers`` worker processes (``processes=True``) with one thread and one
    BLAS/OpenMP thread each (parallelism comes from the workers), the dashboard on a
    free port, and the workers' statistical profiler off (:data:`WORKER_CONFIG`)
    unless ``profile=True``.  Why off: a dask worker keeps the call-tree profile of
    every one-second cycle for the last 1,000 cycles
    (``distributed.admin.low-level-log-length``), which for the deep call stacks of
    the pegleg chain is ~0.3-0.4 MiB per second of work per worker, so a worker's
    memory grew with the number of galaxies processed (peak RSS 330 MiB after 20 and
    382 MiB after 100 galaxies, ``benchmarks/bench_catalog.py --profiler``; 291 and
    293 MiB without it) and would level off only after ~17 minutes, 300-400 MiB
    higher.  ``profile=True`` keeps it (the dashboard's "Profile" page needs it).
    Other keyword arguments go to ``LocalCluster`` and override these defaults.
    Close the cluster when done (or use it as a context manager).
    """
    import dask

    LocalCluster = _distributed().LocalCluster
    opts = {"n_workers": int(n_workers), "threads_per_worker": 1, "processes": True, "dashboard_address": ":0",
            "env": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}
    opts.update(kwargs)
    # the nannies hand the configuration of this moment to the worker processes
    with dask.config.set({} if profile else WORKER_CONFIG):
        return LocalCluster(**opts)


def _client(scheduler: Any, n_workers: int | None):
    """(client, things to close)."""
    Client = _distributed().Client
    if isinstance(scheduler, Client):
        return scheduler, []
    if scheduler is None:
        cluster = local_cluster(int(n_workers or 2))
        client = Client(cluster)
        return client, [client, cluster]
    try:
        client = Client(scheduler, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise PeglegError(f"cannot connect to the dask scheduler {scheduler!r}: {exc}") from None
    return client, [client]


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, flush=True)


def run_catalog(catalog: Any, config: Any, *, scheduler: Any = None, n_workers: int | None = None,
                resume: bool = True, progress: bool | None = None, max_in_flight: int | None = None):
    """Run :func:`process_galaxy` for every catalogue row on dask.distributed; see the module docstring.

    Parameters
    ----------
    catalog : path or pandas.DataFrame
        Read with :func:`read_catalog`.
    config : Config, TOML path or mapping
    scheduler : str, distributed.Client or LocalCluster, optional
        Address of a running scheduler (``"tcp://host:8786"``) or a client/cluster to
        use (left open).  Default: a new :func:`local_cluster` ``(n_workers or 2)``,
        closed at the end.  Workers of your own cluster run dask's statistical
        profiler unless started with :data:`WORKER_CONFIG` (e.g. environment variable
        ``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False``); with it their memory
        grows by ~0.3-0.4 MiB per second of work for the first ~17 minutes
        (:func:`local_cluster`).
    n_workers : int, optional
        Workers of the default LocalCluster.
    resume : bool
        Skip galaxies with a complete output file (their row is read from it).
    progress : bool, optional
        Print the dashboard link and one line per finished galaxy (default: when
        stdout is a terminal).
    max_in_flight : int, optional
        Tasks submitted at a time (default 2 per worker, at least 4).

    Returns
    -------
    pandas.DataFrame
        The summary (catalogue order, :data:`SUMMARY_COLUMNS`), also written to
        ``<output_dir>/summary.csv``.
    """
    as_completed = _distributed().as_completed

    config = _as_config(config)
    cat = read_catalog(catalog)
    if progress is None:
        progress = sys.stdout.isatty()
    config.output_dir.mkdir(parents=True, exist_ok=True)
    rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in cat[["id", "ra", "dec", "redshift", "size"]].to_dict("records")]
    results: list[dict | None] = [None] * len(rows)
    client, to_close = _client(scheduler, n_workers)
    t0 = time.perf_counter()
    last_write, write_cost = t0, 0.0
    try:
        nw = max(1, len(client.scheduler_info().get("workers", {})) or int(n_workers or 1))
        link = client.dashboard_link
        try:
            import bokeh  # noqa: F401
        except ImportError:
            link += " (install bokeh to serve it)"
        _say(progress, f"pegleg run: {len(rows)} galaxies on {nw} worker(s); dashboard: {link}")
        window = max_in_flight or max(4, 2 * nw)
        pending = iter(range(len(rows)))
        index_of = {}

        def submit(i):
            # one task prefix for all galaxies (a tuple key's prefix is its first element): with
            # f"pegleg-{id}-..." keys, alphabetic ids each made a new prefix, kept by the scheduler
            # for ever (~7 KiB each)
            fut = client.submit(process_galaxy, rows[i], config, resume=resume, pure=False,
                                key=(_TASK_PREFIX, f"{safe_id(rows[i]['id'])}-{os.urandom(4).hex()}"))
            index_of[fut.key] = i
            return fut

        first = [submit(i) for i in itertools.islice(pending, window)]  # (zip would swallow one index)
        ac = as_completed(first)
        n_done = 0
        for fut in ac:
            i = index_of.pop(fut.key)
            try:
                res = fut.result()
            except Exception as exc:  # worker died (KilledWorker), unpicklable result, cancelled, ...
                res = _error_row(rows[i], config, exc, float("nan"))
            fut.release()
            del fut
            results[i] = res
            n_done += 1
            nxt = next(pending, None)
            if nxt is not None:
                ac.add(submit(nxt))
            tag = "skipped" if res.get("skipped") else res["status"]
            detail = (f"log M* = {res['log_mass_integrated_p50']:.2f} (int) {res['log_mass_pixel_sum_p50']:.2f} "
                      f"(pix)" if res["status"] == "ok" else res["error"])
            _say(progress, f"[{n_done}/{len(rows)}] {res['id']}: {tag} ({res['seconds']:.1f} s) {detail}")
            now = time.perf_counter()
            if now - last_write > max(SUMMARY_INTERVAL, 10 * write_cost) and n_done < len(rows):
                write_summary(_summary_frame(_with_pending(results, rows)), config.output_dir)
                last_write = time.perf_counter()
                write_cost = last_write - now
    finally:
        # complete, or (interrupted) what is done plus 'pending' rows for the rest
        write_summary(_summary_frame(_with_pending(results, rows)), config.output_dir)
        for obj in to_close:
            try:
                obj.close()
            except Exception:  # pragma: no cover - best effort
                pass
    df = _summary_frame(_with_pending(results, rows))
    _say(progress, f"{counts_line(df, config.output_dir)} in {time.perf_counter() - t0:.1f} s")
    return df


def counts_line(df, output_dir: str | os.PathLike) -> str:
    """One-line report of a summary table: galaxies ok (of which skipped) and failed."""
    n_ok = int((df["status"] == "ok").sum())
    n_skip = int(df["skipped"].astype(bool).sum())
    return (f"pegleg run: {len(df)} galaxies: {n_ok} ok ({n_skip} skipped, already done), {len(df) - n_ok} failed; "
            f"summary: {Path(output_dir) / (SUMMARY_NAME + '.csv')}")
