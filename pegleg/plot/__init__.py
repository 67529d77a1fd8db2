"""Figures of pegleg Datasets.

Every function takes a Dataset first, returns a :class:`matplotlib.figure.Figure` and
accepts ``fig=`` to draw into an existing figure.  Figures are created without
``pyplot`` (no global state), so they work in worker processes and scripts; in a
notebook they display as usual.  ``ds.pegleg.plot.<name>(...)`` calls the same
functions.
"""

from __future__ import annotations

from .deconvolution import deconvolution
from .profiles import ml_colour, profiles
from .resolution import resolution_test
from .sed import maps, sed
from .spectrum import spectrum_comparison
from .stamps import stamps

__all__ = ["stamps", "deconvolution", "resolution_test", "maps", "sed", "spectrum_comparison", "profiles", "ml_colour",
           "PlotMethods"]


class PlotMethods:
    """``ds.pegleg.plot``: the figure functions of :mod:`pegleg.plot` bound to a Dataset."""

    def __init__(self, ds):
        self._ds = ds

    def stamps(self, *args, **kwargs):
        """Grid of band images (:func:`pegleg.plot.stamps`)."""
        return stamps(self._ds, *args, **kwargs)

    def resolution_test(self, *args, **kwargs):
        """Figure of a resolution-test result (:func:`pegleg.plot.resolution_test`); call it on
        the Dataset returned by ``ds.pegleg.resolution_test()``."""
        return resolution_test(self._ds, *args, **kwargs)

    def deconvolution(self, *args, **kwargs):
        """Data, model, residual and PSF-corrected image per band (:func:`pegleg.plot.deconvolution`)."""
        return deconvolution(self._ds, *args, **kwargs)

    def maps(self, *args, **kwargs):
        """Maps of SED-fit quantities with colour bars (:func:`pegleg.plot.maps`)."""
        return maps(self._ds, *args, **kwargs)

    def sed(self, *args, **kwargs):
        """SED, model and residuals of one pixel (:func:`pegleg.plot.sed`)."""
        return sed(self._ds, *args, **kwargs)

    def spectrum_comparison(self, *args, **kwargs):
        """Observed spectrum, calibrated model and residuals (:func:`pegleg.plot.spectrum_comparison`); call it
        on the Dataset returned by :func:`pegleg.spectrum.compare`."""
        return spectrum_comparison(self._ds, *args, **kwargs)

    def profiles(self, *args, **kwargs):
        """Stacked mass, light, colour and SED-quantity profiles (:func:`pegleg.plot.profiles`); call it on the
        Dataset returned by :func:`pegleg.mass_profile.profiles` or :func:`pegleg.mass_profile.mass_profile`."""
        return profiles(self._ds, *args, **kwargs)

    def ml_colour(self, *args, **kwargs):
        """log M/L against colour with running median and linear fit (:func:`pegleg.plot.ml_colour`); call it on
        the Dataset returned by :func:`pegleg.mass_profile.ml_colour`."""
        return ml_colour(self._ds, *args, **kwargs)
