"""The ``Dataset.pegleg`` accessor: a thin facade over pegleg's public functions.

Every step method returns a **new** Dataset (inputs are never modified) that records
itself in ``attrs['pegleg_history']``.  Registered when ``import pegleg`` runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from . import schema

__all__ = ["PeglegAccessor"]


class _PlotDescriptor:
    """``ds.pegleg.plot``: figure functions bound to the Dataset (the class on the class)."""

    def __get__(self, obj, cls=None):
        from .plot import PlotMethods

        return PlotMethods if obj is None else PlotMethods(obj._ds)


@xr.register_dataset_accessor("pegleg")
class PeglegAccessor:
    """pegleg methods on an :class:`xarray.Dataset` (``ds.pegleg.<method>``)."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    # -- information -------------------------------------------------------
    @property
    def bands(self) -> list[str]:
        """Band names in order."""
        return [str(b) for b in self._ds[schema.BAND].values]

    @property
    def pixel_scale(self) -> float:
        """Pixel scale in arcsec/pixel."""
        return float(self._ds.attrs[schema.PIXEL_SCALE])

    @property
    def history(self) -> list[dict]:
        """The processing history: a list of ``{"step", "parameters", "pegleg_version", "time"}``."""
        return schema.read_history(self._ds)

    @property
    def wcs(self):
        """The celestial WCS (``astropy.wcs.WCS``) of the pixel grid, or None if there is none."""
        text = self._ds.attrs.get(schema.WCS_ATTR)
        return None if text is None else schema.wcs_from_text(text)

    # -- checks and I/O ----------------------------------------------------
    def validate(self) -> xr.Dataset:
        """Check the Dataset against pegleg's data model (:func:`pegleg.validate`)."""
        return schema.validate(self._ds)

    def to_netcdf(self, path: str | os.PathLike, *, compress: bool = True) -> Path:
        """Write atomically to NetCDF (:func:`pegleg.io.to_netcdf`); read back with :func:`pegleg.open_dataset`."""
        from .io.netcdf import to_netcdf

        return to_netcdf(self._ds, path, compress=compress)

    # -- steps -------------------------------------------------------------
    def deconvolve(self, bands=None, psf=None, **kwargs) -> xr.Dataset:
        """PSF-correct every band: intrinsic multi-Gaussian model + residuals (:func:`pegleg.deconvolve.deconvolve`)."""
        from .deconvolve import deconvolve

        return deconvolve(self._ds, bands, psf, **kwargs)

    def psf_match(self, target="F444W", **kwargs) -> xr.Dataset:
        """Convolve every band to a common PSF (:func:`pegleg.match.psf_match`)."""
        from .match import psf_match

        return psf_match(self._ds, target, **kwargs)

    def register(self, reference: str = "F444W", **kwargs) -> xr.Dataset:
        """Sub-pixel shifts of every band relative to ``reference``; ``apply=True`` shifts the images
        (:func:`pegleg.register.register`)."""
        from .register import register

        return register(self._ds, reference, **kwargs)

    def radial_profile(self, var: str = "image", **kwargs) -> xr.Dataset:
        """Elliptical-annulus radial profile of ``var`` (:func:`pegleg.profiles.radial_profile`)."""
        from .profiles import radial_profile

        return radial_profile(self._ds, var, **kwargs)

    def resolution_test(self, short: str = "F150W", long: str = "F444W", **kwargs) -> xr.Dataset:
        """Separate deconvolution vs match-then-deconvolve for two bands (:func:`pegleg.resolution.resolution_test`)."""
        from .resolution import resolution_test

        return resolution_test(self._ds, short, long, **kwargs)

    def calibrate_errors(self, **kwargs) -> xr.Dataset:
        """Rescale ``error`` to the measured sky rms per band (:func:`pegleg.noise.calibrate_errors`)."""
        from .noise import calibrate_errors

        return calibrate_errors(self._ds, **kwargs)

    def bin(self, target_snr=None, band: str = "F444W", method: str = "voronoi", **kwargs) -> xr.Dataset:
        """Group pixels into bins of a target S/N; adds ``bin_id`` (:func:`pegleg.binning.bin`)."""
        from .binning import bin as bin_pixels

        return bin_pixels(self._ds, target_snr, band, method, **kwargs)

    def binned(self, **kwargs) -> xr.Dataset:
        """Per-bin photometry table (bin, band) from ``bin_id`` (:func:`pegleg.binning.binned`)."""
        from .binning import binned

        return binned(self._ds, **kwargs)

    def sedfit(self, *, redshift=None, emulator=None, **kwargs) -> xr.Dataset:
        """Per-pixel (or per-bin) SED posteriors and physical maps (:func:`pegleg.sed.sedfit`)."""
        from .sed.step import sedfit

        return sedfit(self._ds, redshift=redshift, emulator=emulator, **kwargs)

    def photo_z(self, **kwargs) -> xr.Dataset:
        """Redshift posterior of the integrated photometry (:func:`pegleg.sed.photoz.photo_z_dataset`)."""
        from .sed.photoz import photo_z_dataset

        return photo_z_dataset(self._ds, **kwargs)

    def mass_profile(self, band: str = "F444W", **kwargs) -> xr.Dataset:
        """Continuous stellar-mass profile with M/L extrapolation (:func:`pegleg.mass_profile.mass_profile`)."""
        from .mass_profile import mass_profile

        return mass_profile(self._ds, band, **kwargs)

    def ml_colour(self, band: str = "F444W", colour=None, **kwargs) -> xr.Dataset:
        """M/L vs colour per fitted pixel with running median and fit (:func:`pegleg.mass_profile.ml_colour`)."""
        from .mass_profile import ml_colour

        return ml_colour(self._ds, band, colour, **kwargs)

    def profiles(self, quantities=None, **kwargs) -> xr.Dataset:
        """Profiles of mass, SFR, A_V, age, light and colours on one radius grid (:func:`pegleg.mass_profile.profiles`)."""
        from .mass_profile import profiles

        return profiles(self._ds, quantities, **kwargs)

    def predict_spectrum(self, region=None, **kwargs) -> xr.Dataset:
        """Spectrum predicted by the resolved fit for a region (:func:`pegleg.spectrum.predict_spectrum`)."""
        from .spectrum import predict_spectrum

        return predict_spectrum(self._ds, region, **kwargs)

    def qa(self):
        """Per-band quality table of a deconvolved Dataset (:func:`pegleg.deconvolve.qa`)."""
        from .deconvolve import qa

        return qa(self._ds)

    # -- figures -----------------------------------------------------------
    plot = _PlotDescriptor()
