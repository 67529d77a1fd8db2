"""SED engine of pegleg.

``pegleg.sed.sps`` is the exact reference (bagpipes stellar + nebular models with a
Prospector-style parametrisation); ``pegleg.sed.filters`` maps pegleg filter names to
astro-sedpy transmission curves (the one filter route used everywhere).  Both need the
optional dependencies ``bagpipes`` and ``astro-sedpy`` (``pip install pegleg[sed]``)
and are imported lazily: ``import pegleg.sed`` does not import bagpipes.
"""

from __future__ import annotations

import importlib

__all__ = ["sps", "filters"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
