"""Simulated pixel photometry with pegleg's noise model (tests, benchmarks, training).

:func:`simulate_photometry` draws parameters from an emulator's prior, computes model
fluxes with the emulator and adds Gaussian noise.  The noise model is the one the
fitter's likelihood assumes (:func:`pegleg.sed.fit.effective_error`)::

    error_i = sigma_ref * depth_i            # background-limited data errors (uJy)
    sigma_i**2 = error_i**2 + (floor**2 + emu_frac_i**2) * flux_true_i**2
    flux_obs_i = flux_true_i + sigma_i * N(0, 1)

``sigma_ref`` makes the signal-to-noise of the reference band equal to ``snr``;
``depth_i`` = 10**N(0, ``depth_scatter``) varies the depth from band to band.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..exceptions import EmulatorError

__all__ = ["simulate_photometry", "emulator_fraction"]

_MAG_TO_FRAC = 0.4 * np.log(10.0)


def emulator_fraction(emulator, filters) -> np.ndarray:
    """The emulator's own uncertainty per filter as a fraction of the flux."""
    return _MAG_TO_FRAC * np.asarray(emulator.sigma, dtype=np.float64)[emulator.filter_index(filters)]


def simulate_photometry(emulator, filters: Sequence[str], n: int, *, redshift=1.0, snr=20.0,
                        reference_band: str | None = None, error_floor: float = 0.0,
                        emulator_sigma: bool = False, depth_scatter: float = 0.0,
                        log_mass: float | tuple = 9.0, seed=None, params=None) -> dict:
    """``n`` simulated pixels.

    Parameters
    ----------
    emulator : a pegleg emulator.
    filters : band names.
    redshift : scalar, (n,) array, a (low, high) tuple drawn uniformly, or None (keep the
        prior draw / ``params`` column).
    snr : S/N of ``reference_band`` (default: the last filter); scalar, (n,) array, or a
        (low, high) tuple drawn log-uniformly.
    error_floor, emulator_sigma : extra Gaussian scatter, fraction of the true flux
        (``emulator_sigma`` adds the emulator's own ``sigma`` per filter).
    depth_scatter : dex scatter of the per-band depth.
    log_mass : log10 formed mass (scalar, (low, high) uniform range, or None to keep).
    params : optional (n, P) parameters to use instead of prior draws; their mass and
        redshift columns are replaced unless ``log_mass``/``redshift`` is None.

    Returns
    -------
    dict with ``params`` (n, P), ``flux_true``, ``flux``, ``error`` (n, F) in uJy
    (``error`` is the data error only, as an error map would hold), ``derived`` (dict of
    (n,)), ``snr`` (n,).
    """
    rng = np.random.default_rng(seed)
    filters = list(filters)
    emulator.filter_index(filters)  # error naming unknown filters
    ref = filters[-1] if reference_band is None else reference_band
    if ref not in filters:
        raise EmulatorError(f"reference_band {ref!r} is not one of the filters {filters}")
    iref = filters.index(ref)
    n = int(n)
    theta = emulator.sample_prior(n, seed=rng) if params is None else np.array(params, dtype=np.float64)
    im, iz = emulator.param_names.index("log_mass_formed"), emulator.param_names.index("redshift")

    def _draw(spec, log=False):
        if isinstance(spec, tuple):
            lo, hi = spec
            if log:
                return 10 ** rng.uniform(np.log10(lo), np.log10(hi), n)
            return rng.uniform(lo, hi, n)
        return np.broadcast_to(np.asarray(spec, dtype=np.float64), (n,)).copy()

    if redshift is not None:
        theta[:, iz] = _draw(redshift)
    if log_mass is not None:
        theta[:, im] = _draw(log_mass)
    snr_v = _draw(snr, log=True)
    flux_true, derived = emulator.evaluate(theta, filters)
    depth = 10 ** (depth_scatter * rng.standard_normal((n, len(filters))))
    depth[:, iref] = 1.0
    sigma_ref = flux_true[:, iref] / snr_v
    error = sigma_ref[:, None] * depth
    frac2 = error_floor ** 2 + (emulator_fraction(emulator, filters) ** 2 if emulator_sigma else 0.0)
    sigma = np.sqrt(error ** 2 + frac2 * flux_true ** 2)
    flux = flux_true + sigma * rng.standard_normal(flux_true.shape)
    return {"params": theta, "flux_true": flux_true, "flux": flux, "error": error,
            "derived": derived, "snr": snr_v, "filters": filters}
