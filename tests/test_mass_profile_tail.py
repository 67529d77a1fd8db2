"""mass_profile's light tail on a hand-made fitted Dataset with a known exponential profile.

The "fit" is exact inside a radius (constant M/L, tiny posterior widths) and missing
beyond; the image is an exponential disk with Gaussian noise, so the annulus S/N falls
with radius; the intrinsic ``model`` is deliberately a Gaussian that matches the disk's
core but falls off too fast outside (the way a multi-Gaussian model truncates where the
data stop constraining it).  The true mass profile is M/L x the exponential everywhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import pegleg  # noqa: F401  (registers the accessor)
from pegleg import SchemaError
from pegleg import schema as S
from pegleg.cosmology import pixel_area_kpc2
from pegleg.mass_profile import mass_profile

N, PS, Z, H = 81, 0.03, 2.0, 3.0          # pixels, arcsec/px, redshift, scale length (px)
ML = 2.0e9                                 # Msun per image unit (uJy)
I0 = 2.0                                   # central surface brightness, uJy/px


def _fitted(seed=0, r_fit=12.0, noise=0.004):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:N, :N] - (N - 1) / 2
    r = np.hypot(yy, xx)
    disk = I0 * np.exp(-r / H)
    img = disk + rng.normal(0, noise, disk.shape)
    model = I0 * np.exp(-0.5 * (r / (1.6 * H)) ** 2)        # right core, wrong tail
    area = pixel_area_kpc2(PS, Z)
    fitted = r <= r_fit
    smd = np.where(fitted, ML * disk / area, np.nan)
    q = np.array([0.16, 0.5, 0.84])
    bands = ["F150W", "F444W"]
    cube = lambda a: np.stack([a, a])                              # noqa: E731  (same in both bands)
    ds = xr.Dataset(
        {S.IMAGE: ((S.BAND, S.Y, S.X), cube(img), {"units": "uJy"}),
         S.ERROR: ((S.BAND, S.Y, S.X), np.full((2, N, N), noise), {"units": "uJy"}),
         S.MASK: ((S.BAND, S.Y, S.X), np.zeros((2, N, N), bool)),
         S.MODEL: ((S.BAND, S.Y, S.X), cube(model), {"units": "uJy"}),
         S.STELLAR_MASS_DENSITY: ((S.QUANTILE, S.Y, S.X), np.stack([0.99 * smd, smd, 1.01 * smd]),
                                  {"units": "Msun/kpc2"}),
         S.LOG_STELLAR_MASS: ((S.QUANTILE, S.Y, S.X), np.log10(np.stack([smd, smd, smd]) * area), {"units": "dex"}),
         S.SEDFIT_FLAG: ((S.Y, S.X), np.where(fitted, 0, 4).astype(np.int32)),
         S.SNR: ((S.Y, S.X), np.where(fitted, 50.0, 0.5))},
        coords={S.BAND: bands, S.QUANTILE: q},
        attrs={S.PIXEL_SCALE: PS, S.REDSHIFT: Z})
    true = ML * I0 * np.exp(-r / H) / area
    return ds, true


def _truth_profile(mp, true_map):
    """The true mass surface density averaged over the profile's annuli."""
    t = xr.Dataset({"t": ((S.Y, S.X), true_map, {"units": "Msun/kpc2"})}, attrs={S.PIXEL_SCALE: PS})
    geo = dict(center=(mp.attrs["centre_y"], mp.attrs["centre_x"]), ellipticity=1 - mp.attrs["axis_ratio"],
               position_angle=mp.attrs["position_angle"])
    return t.pegleg.radial_profile("t", **geo)["profile"].values


def test_exponential_tail_follows_the_disk():
    ds, true = _fitted()
    mp = mass_profile(ds, "F444W")                                   # light_tail="exponential"
    tp = _truth_profile(mp, true)
    r_px = mp["radius"].values / PS
    out = (r_px > 12) & (r_px <= 27)                                 # extrapolated, to 9 scale lengths
    d = np.log10(mp["mass_density"].values[out] / tp[out])
    assert mp.attrs["light_tail"] == "exponential"
    assert 12 < mp.attrs["r_tail"] / PS < 27                          # where the annulus S/N falls below 10
    # measured: the exponential's scale length within 2%, the profile within 0.03 dex out to 27 px
    assert abs(mp.attrs["tail_sersic_r_e"] / (1.678 * H * PS) - 1) < 0.05
    assert np.all(np.abs(d) < 0.06), d
    err = mp["mass_density_error"].values[out] / mp["mass_density"].values[out] / np.log(10)
    assert np.all(np.abs(d) < 3 * err + 0.01)
    # the Gaussian "model" all the way out is far too low there: the test can fail
    mm = mass_profile(ds, "F444W", light_tail="model")
    assert mm.attrs["light_tail"] == "model" and np.isnan(mm.attrs["r_tail"])
    dm = np.log10(mm["mass_density"].values[out] / tp[out])
    assert dm.min() < -1.0
    # total mass: the exponential's (inside the stamp) within 2%
    tot = np.sum(true) * pixel_area_kpc2(PS, Z)
    assert abs(10 ** mp.attrs["log_mass_total"][1] / tot - 1) < 0.02


def test_sersic_tail_fits_n():
    ds, true = _fitted(seed=1)
    mp = mass_profile(ds, "F444W", light_tail="sersic")
    assert mp.attrs["light_tail"] == "sersic"
    assert 0.8 < mp.attrs["tail_sersic_n"] < 1.25                     # an exponential is n = 1
    tp = _truth_profile(mp, true)
    r_px = mp["radius"].values / PS
    out = (r_px > 12) & (r_px <= 20)
    assert np.all(np.abs(np.log10(mp["mass_density"].values[out] / tp[out])) < 0.1)


def test_tail_falls_back_to_the_model_without_a_fit_range():
    # S/N >= 10 in fewer than 4 annuli of the outer half: no tail is fitted
    ds, _ = _fitted(noise=0.3)
    mp = mass_profile(ds, "F444W", tail_snr=1e4)
    assert mp.attrs["light_tail"] == "model" and np.isnan(mp.attrs["r_tail"])


def test_tail_bad_arguments():
    ds, _ = _fitted()
    with pytest.raises(SchemaError, match="light_tail"):
        mass_profile(ds, light_tail="power-law")
    with pytest.raises(SchemaError, match="tail_snr"):
        mass_profile(ds, tail_snr=-1)
