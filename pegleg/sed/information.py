"""How much do pixels learn beyond the prior?  Information gain as a function of S/N.

:func:`information_curve` simulates pixels drawn from the prior at a grid of
reference-band signal-to-noise ratios (pegleg's noise model, :mod:`pegleg.sed.simulate`),
fits them with the same machinery as real pixels and returns the distribution of the
Kullback-Leibler divergence of posterior from prior (nats) for the formed mass, the
mass-weighted age and A_V.  :func:`snr_threshold` interpolates the S/N at which the
median divergence reaches a level (default 0.5 nat: the posterior is clearly narrower
than, or displaced from, the prior); pixels below it carry little information about that
quantity and are better binned (``ds.pegleg.bin``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from ..exceptions import FitError
from .fit import INFO_QUANTITIES, JOF_FILTERS, fit_photometry
from .simulate import simulate_photometry

__all__ = ["information_curve", "snr_threshold", "DEFAULT_SNR_GRID", "KL_LEVEL"]

DEFAULT_SNR_GRID = (1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 100.0)
KL_LEVEL = 0.5


def information_curve(snr: Sequence[float] = DEFAULT_SNR_GRID, *, filters: Sequence[str] = JOF_FILTERS,
                      redshift: float = 2.0, n: int = 200, emulator=None, network=None,
                      method: str = "importance", error_floor: float = 0.05, depth_scatter: float = 0.2,
                      reference_band: str | None = None, seed: int = 0) -> xr.Dataset:
    """Information gain vs reference-band S/N for pixels drawn from the prior.

    Returns a Dataset with dimensions ``snr`` and ``info_quantity`` holding
    ``information_gain`` percentiles (``p16``, ``median``, ``p84``; nats) and the
    attribute ``snr_threshold_<quantity>`` (the S/N where the median reaches
    :data:`KL_LEVEL`, NaN if never).
    """
    from .emulator import load_emulator

    emu = load_emulator("default") if emulator is None else emulator
    snr = np.asarray(snr, dtype=float)
    if snr.ndim != 1 or snr.size < 2 or np.any(snr <= 0):
        raise FitError(f"snr must be >= 2 positive values, got {snr!r}")
    rng = np.random.default_rng(seed)
    flux, error, level = [], [], []
    for s in snr:
        sim = simulate_photometry(emu, filters, n, redshift=redshift, snr=s, depth_scatter=depth_scatter,
                                  error_floor=error_floor, reference_band=reference_band,
                                  seed=int(rng.integers(2**31)))
        flux.append(sim["flux"])
        error.append(sim["error"])
        level.append(np.full(n, s))
    res = fit_photometry(np.concatenate(flux), np.concatenate(error), filters, redshift, method=method,
                         emulator=emu, network=network, error_floor=error_floor, seed=seed, progress=False)
    ig = res["information_gain"].reshape(snr.size, n, len(INFO_QUANTITIES))
    pct = np.nanpercentile(ig, [16, 50, 84], axis=1)       # (3, snr, q)
    ds = xr.Dataset(
        {"p16": (("snr", "info_quantity"), pct[0], {"units": "nat", "long_name": "16th percentile of the information gain"}),
         "median": (("snr", "info_quantity"), pct[1], {"units": "nat", "long_name": "median information gain"}),
         "p84": (("snr", "info_quantity"), pct[2], {"units": "nat", "long_name": "84th percentile of the information gain"})},
        coords={"snr": ("snr", snr, {"units": "1", "long_name": "signal-to-noise ratio in the reference band"}),
                "info_quantity": ("info_quantity", np.array(INFO_QUANTITIES), {"units": "1", "long_name": "quantity"})},
        attrs={"redshift": float(redshift), "n_per_snr": int(n), "method": method, "error_floor": float(error_floor),
               "filters": ",".join(filters), "kl_level": KL_LEVEL},
    )
    for q in INFO_QUANTITIES:
        ds.attrs[f"snr_threshold_{q}"] = snr_threshold(ds, q)
    return ds


def snr_threshold(curve: xr.Dataset, quantity: str, level: float = KL_LEVEL) -> float:
    """S/N where the median information gain of ``quantity`` first reaches ``level``
    (log-linear interpolation on the grid; NaN if it never does, the lowest S/N if
    it already does there)."""
    med = curve["median"].sel(info_quantity=quantity).values
    snr = curve["snr"].values
    above = np.flatnonzero(med >= level)
    if not above.size:
        return float("nan")
    i = int(above[0])
    if i == 0:
        return float(snr[0])
    x0, x1 = np.log(snr[i - 1]), np.log(snr[i])
    t = (level - med[i - 1]) / (med[i] - med[i - 1])
    return float(np.exp(x0 + t * (x1 - x0)))
