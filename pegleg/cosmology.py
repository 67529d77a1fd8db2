"""The one cosmology of pegleg: flat LCDM with H0 = 70 km/s/Mpc and Om0 = 0.3.

It is bagpipes' cosmology, so luminosity distances of the SED models, pixel areas of
surface densities (``sedfit``, the synthetic truth) and physical radii of profiles agree.
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["H0", "OM0", "cosmology", "kpc_per_arcsec", "pixel_area_kpc2", "NAME"]

H0 = 70.0
OM0 = 0.3
NAME = f"FlatLambdaCDM(H0={H0:g}, Om0={OM0:g})"


@lru_cache(maxsize=1)
def cosmology():
    """The astropy cosmology object."""
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=H0, Om0=OM0)


@lru_cache(maxsize=256)
def kpc_per_arcsec(z: float) -> float:
    """Proper kpc per arcsec at redshift ``z``."""
    return float(cosmology().kpc_proper_per_arcmin(float(z)).value) / 60.0


def pixel_area_kpc2(pixel_scale: float, z: float) -> float:
    """Proper area (kpc^2) of a pixel of ``pixel_scale`` arcsec at redshift ``z``."""
    return float((pixel_scale * kpc_per_arcsec(z)) ** 2)
