"""Filter transmission curves for the SED engine, from astro-sedpy.

pegleg resolves a filter name (see :mod:`pegleg.filters`: ``"F444W"`` is NIRCam,
``"F814W"`` is HST/ACS-WFC, ``"WFC3_F814W"`` WFC3/UVIS, ``"F160W"`` WFC3/IR, ``"F770W"``
MIRI) to one astro-sedpy curve (``jwst_f444w``, ``acs_wfc_f814w``, ``wfc3_uvis_f814w``,
``wfc3_ir_f160w``, ``jwst_f770w``).  This is the only filter route of the SED engine:
the exact reference (:mod:`pegleg.sed.sps`) and the emulator training set both use it.

Curves are sedpy's as shipped (photon-counting system throughputs).  bagpipes reads
filters from two-column text files (wavelength in Angstrom, transmission), so
:func:`filter_files` writes them once into ``$PEGLEG_CACHE/filters`` (default
``~/.cache/pegleg/filters``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from .. import filters as _pf
from ..exceptions import EmulatorError
from ..io.atomic import atomic_write

__all__ = ["sedpy_name", "available_filters", "transmission", "pivot_wavelength",
           "filter_files", "cache_dir", "canonical_name"]


def cache_dir() -> Path:
    """pegleg's cache directory: ``$PEGLEG_CACHE`` or ``~/.cache/pegleg``."""
    root = os.environ.get("PEGLEG_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "pegleg"


@functools.lru_cache(maxsize=1)
def _sedpy_names() -> frozenset[str]:
    try:
        from sedpy import observate
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise EmulatorError(
            "the SED engine needs astro-sedpy for its filter curves: "
            "pip install astro-sedpy (the registry name 'sedpy' is another package)"
        ) from exc
    return frozenset(observate.list_available_filters())


def _candidate(name: str) -> str | None:
    """The sedpy curve name a pegleg filter name would map to (not checked)."""
    try:
        key = _pf._key(name)
    except Exception:
        return None
    inst = _pf._INSTRUMENT.get(key)
    if inst is None:
        return None
    bare = key.split("_", 1)[1] if "_" in key else key
    low = bare.lower()
    if inst in ("NIRCAM", "MIRI"):
        return f"jwst_{low}"
    if inst == "ACS":
        return f"acs_wfc_{low}"
    if inst == "WFC3":
        return f"wfc3_ir_{low}" if bare in _pf._WFC3_IR else f"wfc3_uvis_{low}"
    return None  # pragma: no cover


def sedpy_name(name: str) -> str:
    """The astro-sedpy curve name of pegleg filter ``name``.

    Raises
    ------
    EmulatorError
        If pegleg does not know the filter or sedpy has no curve for it (the message
        lists the available names).
    """
    cand = _candidate(name)
    if cand is None or cand not in _sedpy_names():
        raise EmulatorError(
            f"no transmission curve for filter {name!r}: the SED engine knows "
            f"{', '.join(available_filters())} (qualified names such as 'ACS_F814W', "
            "'WFC3_F814W', 'NIRCAM_F444W', 'MIRI_F770W' are accepted too)"
        )
    return cand


def canonical_name(name: str) -> str:
    """The preferred pegleg name of the sedpy curve that ``name`` maps to.

    The unqualified name when it resolves to that curve (``"ACS_F814W"`` -> ``"F814W"``),
    otherwise the qualified one (``"wfc3_f814w"`` -> ``"WFC3_F814W"``).
    """
    target = sedpy_name(name)
    key = _pf._key(name)
    bare = key.split("_", 1)[1] if "_" in key else key
    if _candidate(bare) == target:
        return bare
    return f"{_pf._INSTRUMENT[key]}_{bare}"


@functools.lru_cache(maxsize=1)
def _available() -> tuple[str, ...]:
    names = set()
    for n in _pf.PIVOT_WAVELENGTH:
        cand = _candidate(n)
        if cand is not None and cand in _sedpy_names():
            names.add(canonical_name(n))
    return tuple(sorted(names, key=lambda n: (_pf.PIVOT_WAVELENGTH[n], n)))


def available_filters() -> tuple[str, ...]:
    """Canonical pegleg names of every filter with a sedpy curve, by pivot wavelength.

    One name per curve (HST/ACS-WFC filters unqualified, the WFC3/UVIS ones that
    ACS shares as ``"WFC3_F814W"``).
    """
    return _available()


@functools.lru_cache(maxsize=None)
def _curve(sname: str) -> tuple[np.ndarray, np.ndarray]:
    from sedpy import observate

    f = observate.Filter(sname)
    wave = np.asarray(f.wavelength, dtype=float).copy()
    trans = np.clip(np.asarray(f.transmission, dtype=float), 0.0, None).copy()
    wave.setflags(write=False)
    trans.setflags(write=False)
    return wave, trans


def transmission(name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(wavelength_um, T)`` of filter ``name`` (sedpy's curve, read-only arrays)."""
    wave, trans = _curve(sedpy_name(name))
    um = wave * 1e-4
    um.setflags(write=False)
    return um, trans


def pivot_wavelength(name: str) -> float:
    """Pivot wavelength (micron) of the sedpy curve of ``name``:
    ``sqrt(int T lambda dlambda / int T / lambda dlambda)``."""
    wave, trans = _curve(sedpy_name(name))
    num = np.trapezoid(trans * wave, wave)
    den = np.trapezoid(trans / wave, wave)
    return float(np.sqrt(num / den)) * 1e-4


def filter_files(names) -> list[str]:
    """Paths of two-column (Angstrom, transmission) files for bagpipes' ``filt_list``.

    Written once (atomically) into ``cache_dir()/filters``; rewritten if missing.
    """
    if isinstance(names, str):
        names = [names]
    out = []
    folder = cache_dir() / "filters"
    for name in names:
        sname = sedpy_name(name)
        path = folder / f"{sname}.dat"
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            wave, trans = _curve(sname)
            def write(tmp, _sname=sname, _wave=wave, _trans=trans):
                with open(tmp, "w") as fh:
                    fh.write(f"# astro-sedpy curve {_sname}: wavelength [Angstrom], transmission\n")
                    np.savetxt(fh, np.column_stack([_wave, _trans]), fmt="%.10g")

            atomic_write(path, write)
        out.append(str(path))
    return out
