"""SED engine of pegleg.

``pegleg.sed.load_emulator`` loads an emulator (pegleg's own pickle-free format, or a
Parrot weight file with ``trust=True``); ``pegleg.sed.sps`` is the exact reference (bagpipes stellar + nebular models with a
Prospector-style parametrisation); ``pegleg.sed.filters`` maps pegleg filter names to
astro-sedpy transmission curves (the one filter route used everywhere).  Both need the
optional dependencies ``bagpipes`` and ``astro-sedpy`` (``pip install pegleg[sed]``)
and are imported lazily: ``import pegleg.sed`` does not import bagpipes.
"""

from __future__ import annotations

import importlib

from .emulator import BaseEmulator, MLPEmulator, load_emulator, save_emulator

__all__ = ["sps", "filters", "load_emulator", "save_emulator", "BaseEmulator", "MLPEmulator"]


def __getattr__(name):
    if name in ("sps", "filters"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
