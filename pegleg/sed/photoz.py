"""Photometric redshifts from the marginal likelihood of the SED model on a redshift grid.

:func:`photo_z` fits photometry (integrated fluxes of a galaxy, or any N objects) at
every redshift of a grid with the same likelihood, priors and importance sampler as
:func:`pegleg.sed.fit_photometry`, and keeps, at each redshift, the importance-sampling
estimate of the evidence

    Z(z) = integral L(data | theta, z) prior(theta) dtheta
         ~ mean over draws of  L prior / q        (q: the posterior network's proposal),

the mass integrated analytically as in the fitter.  With a prior on z (flat over the grid
by default) ``p(z | data)`` is proportional to ``Z(z) prior(z)``.  This is the redshift
marginal of the full posterior -- not the best-fit chi2 per redshift (which favours
redshifts where the model has more freedom) -- and it is estimated at fixed redshifts,
where the proposal is efficient (the redshift-marginalised fit of ``fit_photometry(...,
redshift_sigma=...)`` spreads its draws over all redshifts and reached an ESS of 26
from 262,144 draws on NGDEEP-645's six bands; the grid is a few seconds).

Returned: an ``xarray.Dataset`` over ``(object, redshift)`` with ``log_evidence``
(natural log, up to a constant common to all redshifts of one object),
``log_evidence_error`` (from the importance weights' effective sample size), ``pdf``
(per unit redshift, normalised on the grid), ``chi2_min`` (best chi2 among the draws)
and ``ess``; per object ``z_peak`` (grid maximum of the pdf), ``z_median``, ``z_p16``,
``z_p84`` and ``z_mean`` (NaN for an object no model draw at any redshift can
describe, e.g. fluxes the emulator cannot produce).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy import special

from ..exceptions import FitError

__all__ = ["photo_z", "photo_z_dataset", "DEFAULT_Z_STEP"]

#: Default grid step in redshift (the grid spans the posterior network's range).
DEFAULT_Z_STEP = 0.05


def photo_z(flux, error, filters: Sequence[str], *, z_grid=None, z_prior=None, emulator=None, network=None,
            n_draws: int = 2048, error_floor: float = 0.05, emulator_sigma: bool = True,
            mass_range=(0.0, 13.0), valid=None, seed=0) -> xr.Dataset:
    """Redshift posterior of N photometric measurements (see the module docstring).

    Parameters
    ----------
    flux, error : (N, F) or (F,) in uJy.
    filters : the F band names.
    z_grid : increasing redshifts (default: the posterior network's range in steps of
        :data:`DEFAULT_Z_STEP`); must lie inside the emulator's and the network's ranges.
    z_prior : prior density on ``z_grid`` (default flat).
    n_draws : proposal draws per object and redshift.
    error_floor, emulator_sigma, mass_range, valid : as in :func:`fit_photometry`.
    seed : random seed (the result is deterministic for a seed).
    """
    from .emulator import load_emulator
    from .fit import _check_network, _importance_round, _Problem
    from .npe import load_posterior_network

    emu = load_emulator("default") if emulator is None else (
        load_emulator(emulator) if isinstance(emulator, str) else emulator)
    emu.filter_index(filters)
    net = load_posterior_network("default") if network is None else (
        load_posterior_network(network) if isinstance(network, str) else network)
    zlo_net, zhi_net = (float(v) for v in net.metadata.get("redshift_range", emu.bounds[emu.param_names.index("redshift")]))
    if z_grid is None:
        z_grid = np.round(np.arange(zlo_net, zhi_net + 1e-9, DEFAULT_Z_STEP), 6)
    z_grid = np.asarray(z_grid, dtype=float).ravel()
    if z_grid.size < 2 or not np.all(np.isfinite(z_grid)) or np.any(np.diff(z_grid) <= 0):
        raise FitError(f"z_grid must hold at least two finite, increasing redshifts, got {z_grid!r}")
    if z_grid[0] < zlo_net - 1e-9 or z_grid[-1] > zhi_net + 1e-9:
        raise FitError(f"z_grid [{z_grid[0]}, {z_grid[-1]}] leaves the posterior network's redshift range "
                       f"[{zlo_net}, {zhi_net}]")
    prior = np.ones_like(z_grid) if z_prior is None else np.asarray(z_prior, dtype=float).ravel()
    if prior.shape != z_grid.shape or np.any(~np.isfinite(prior)) or np.any(prior < 0) or not prior.sum() > 0:
        raise FitError(f"z_prior must be {z_grid.size} finite non-negative values (one per z_grid point)")
    n_draws = int(n_draws)
    if n_draws < 16:
        raise FitError(f"n_draws must be >= 16, got {n_draws}")
    flux2 = np.atleast_2d(np.asarray(flux, dtype=float))
    n = flux2.shape[0]
    rng = np.random.default_rng(seed)
    logz = np.full((n, z_grid.size), -np.inf)
    logz_err = np.full((n, z_grid.size), np.inf)
    chi2 = np.full((n, z_grid.size), np.nan)
    ess = np.zeros((n, z_grid.size))
    rows = np.arange(n)
    prob = None
    for k, z in enumerate(z_grid):
        prob = _Problem(flux, error, filters, z, valid, emu, error_floor, emulator_sigma, mass_range, None)
        if k == 0:
            if np.any(prob.n_bands == 0):
                raise FitError(f"photo_z: object(s) {np.flatnonzero(prob.n_bands == 0).tolist()} have no valid band")
            idx = _check_network(net, prob)
        rd = _importance_round(prob, net, idx, rows, n_draws, rng)
        lw = rd["log_w"]
        logz[:, k] = special.logsumexp(lw, axis=1) - np.log(n_draws)
        with np.errstate(invalid="ignore", over="ignore"):
            m = np.max(lw, axis=1, keepdims=True)
            w = np.exp(lw - np.where(np.isfinite(m), m, 0.0))
            e = w.sum(1) ** 2 / np.maximum((w ** 2).sum(1), 1e-300)
        ess[:, k] = np.where(np.isfinite(m[:, 0]), e, 0.0)
        # relative error of the mean weight: sqrt(1/ESS - 1/N)
        logz_err[:, k] = np.sqrt(np.maximum(1.0 / np.maximum(ess[:, k], 1e-12) - 1.0 / n_draws, 0.0))
        chi2[:, k] = np.min(np.where(np.isfinite(lw), rd["chi2"], np.inf), axis=1)
    logp = logz + np.log(np.where(prior > 0, prior, 1e-300))[None, :]
    top = np.max(logp, axis=1, keepdims=True)
    ok = np.isfinite(top[:, 0])             # objects with no valid model at any redshift: NaN
    p = np.full_like(logp, np.nan)
    p[ok] = np.exp(logp[ok] - top[ok])
    p[ok] /= np.trapezoid(p[ok], z_grid, axis=1)[:, None]
    cdf = np.concatenate([np.zeros((n, 1)), np.cumsum(0.5 * (p[:, 1:] + p[:, :-1]) * np.diff(z_grid), axis=1)], axis=1)
    q = {name: np.array([np.interp(v, cdf[i] / cdf[i, -1], z_grid) if ok[i] else np.nan for i in range(n)])
         for name, v in (("z_p16", 0.16), ("z_median", 0.5), ("z_p84", 0.84))}
    out = xr.Dataset(
        {"log_evidence": (("object", "redshift"), logz, {"units": "1", "long_name": "log marginal likelihood "
                                                         "(natural log, up to a per-object constant)"}),
         "log_evidence_error": (("object", "redshift"), logz_err,
                                {"units": "1", "long_name": "1-sigma error of log_evidence (importance sampling)"}),
         "pdf": (("object", "redshift"), p, {"units": "1", "long_name": "redshift posterior density per unit z"}),
         "chi2_min": (("object", "redshift"), chi2, {"units": "1", "long_name": "smallest chi2 among the draws"}),
         "ess": (("object", "redshift"), ess, {"units": "1", "long_name": "importance-sampling effective sample size"}),
         "z_peak": ("object", np.where(ok, z_grid[np.argmax(np.nan_to_num(p, nan=-1.0), axis=1)], np.nan),
                    {"units": "1", "long_name": "redshift of the pdf's maximum"}),
         **{k: ("object", v, {"units": "1", "long_name": f"redshift posterior {k[2:]}"}) for k, v in q.items()},
         "z_mean": ("object", np.where(ok, np.trapezoid(np.nan_to_num(p) * z_grid, z_grid, axis=1), np.nan),
                    {"units": "1", "long_name": "posterior mean redshift"})},
        coords={"redshift": ("redshift", z_grid, {"units": "1", "long_name": "redshift"}),
                "object": ("object", np.arange(n))},
        attrs={"filters": ",".join(map(str, filters)), "n_draws": n_draws, "error_floor": float(error_floor),
               "prior": "flat" if z_prior is None else "user"})
    return out


def photo_z_dataset(ds: xr.Dataset, *, region=None, bands=None, z_grid=None, z_prior=None, emulator=None,
                    network=None, n_draws: int = 2048, error_floor: float = 0.05, emulator_sigma: bool = True,
                    mass_range=(0.0, 13.0), seed=0) -> xr.Dataset:
    """:func:`photo_z` of a stamp's integrated photometry (``ds.pegleg.photo_z``).

    The flux of every band is the sum of ``image`` over ``region`` (default: the source's
    segment when the Dataset has a segmentation map, else every pixel) and its error the
    quadrature sum of ``error`` there; masked or non-finite pixels are left out of both
    (a band with none left is dropped).  After PSF matching neighbouring pixels are
    correlated, so this error is a lower limit: the likelihood's ``error_floor`` (5% by
    default) usually dominates for bright galaxies.  ``bands``: the bands to use (default
    every band the emulator knows).  The other keywords are those of :func:`photo_z`.
    Returns the Dataset of :func:`photo_z` with one object.
    """
    from .. import schema as S
    from .emulator import load_emulator
    from .step import region_photometry

    emu = load_emulator("default") if emulator is None else (
        load_emulator(emulator) if isinstance(emulator, str) else emulator)
    kwargs = dict(z_grid=z_grid, z_prior=z_prior, emulator=emu, network=network, n_draws=n_draws,
                  error_floor=error_floor, emulator_sigma=emulator_sigma, mass_range=mass_range, seed=seed)
    all_bands = [str(b) for b in ds[S.BAND].values]
    if bands is None:
        bands = []
        for b in all_bands:
            try:
                emu.filter_index([b])
                bands.append(b)
            except Exception:
                continue
    else:
        bands = [bands] if isinstance(bands, str) else [str(b) for b in bands]
        missing = [b for b in bands if b not in all_bands]
        if missing:
            raise FitError(f"bands {missing} are not in the Dataset (bands: {all_bands})")
    if not bands:
        raise FitError(f"photo_z: none of the Dataset's bands {all_bands} is emulated")
    reg, _ = S.fit_region(ds, region)
    flux, error, valid = region_photometry(ds, bands, reg)
    out = photo_z(np.where(valid, flux, np.nan), np.where(valid, error, np.nan), bands, **kwargs)
    out.attrs.update(filters=",".join(b for b, v in zip(bands, valid) if v), n_pixels=int(reg.sum()))
    out["flux"] = ("band", flux, {"units": "uJy", "long_name": "integrated flux in the region"})
    out["flux_error"] = ("band", error, {"units": "uJy", "long_name": "quadrature sum of the pixel errors"})
    out = out.assign_coords(band=("band", bands))
    return out
