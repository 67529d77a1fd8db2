"""SED engine of pegleg.

``pegleg.sed.sedfit`` (``ds.pegleg.sedfit``) fits every pixel of a stamp and
``pegleg.sed.fit_photometry`` any set of photometric measurements (:mod:`pegleg.sed.fit`);
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
from .fit import fit_photometry
from .npe import PosteriorNetwork, load_posterior_network, save_posterior_network
from .photoz import photo_z
from .sfh_emulator import SFHBinEmulator
from .simulate import simulate_photometry
from .step import sedfit

__all__ = ["sps", "filters", "load_emulator", "save_emulator", "BaseEmulator", "MLPEmulator", "SFHBinEmulator",
           "fit_photometry", "photo_z", "sedfit", "simulate_photometry", "PosteriorNetwork",
           "load_posterior_network", "save_posterior_network"]


def __getattr__(name):
    if name in ("sps", "filters"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
