"""Posterior uncertainties of the multi-Gaussian fluxes and sizes.

Like imcascade's "express" mode, the shape (centre, axis ratio, angle) is fixed at the
least-squares optimum and the component fluxes (and sky terms) are sampled.  At fixed
shape the model is linear with Gaussian noise, so with flat priors (fluxes >= 0, sky
free; the sky prior of the fit is part of the likelihood) the posterior is a
*truncated multivariate Gaussian*.  pegleg samples it exactly with a Gibbs sampler:
many chains advanced together, each coordinate drawn from its one-dimensional truncated
normal conditional, all vectorised over chains.

Why not nested sampling: dynesty (static, ``rwalk``, 150 live points) on this posterior
-- 13 strongly correlated flux parameters under a uniform box prior -- used its whole
budget of 2,000,000 likelihood calls in 61 s on one band without converging and
returned a flux 2.4x the truth.  The Gibbs sampler needs no tuning and takes ~0.1 s.
"""

from __future__ import annotations

import numpy as np
from scipy.special import ndtr, ndtri

from ..exceptions import FitError
from .fit import MultiGaussFit, enclosed_radius

__all__ = ["sample_fluxes", "QUANTILES"]

#: Posterior quantiles reported (16th, 50th, 84th percentiles).
QUANTILES = (0.16, 0.5, 0.84)


def _std_normal_above(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Standard normal draws conditioned on ``z >= a`` (``a`` may be -inf), vectorised.

    Inverse CDF where ``a < 3``; Marsaglia's tail method (proposal ``sqrt(a^2 - 2 ln U)``,
    accepted with probability ``a / z``) in the far tail, where the CDF loses precision.
    """
    a = np.asarray(a, float)
    z = np.empty_like(a)
    body = a < 3
    if body.any():
        pa = ndtr(a[body])
        u = rng.random(int(body.sum()))
        z[body] = ndtri(np.clip(pa + u * (1 - pa), 0, 1 - 1e-16))
    tail = np.flatnonzero(~body)
    while tail.size:
        at = a[tail]
        cand = np.sqrt(at**2 - 2 * np.log(rng.random(tail.size)))
        ok = rng.random(tail.size) * cand <= at
        z[tail[ok]] = cand[ok]
        tail = tail[~ok]
    return z


def sample_fluxes(fit: MultiGaussFit, *, n_chains: int = 256, n_sweeps: int = 300, keep: int = 4,
                  seed: int = 0) -> dict:
    """Sample the posterior of the component fluxes of ``fit`` at its fitted shape.

    Parameters
    ----------
    fit : MultiGaussFit
        A result of :func:`~pegleg.deconvolve.fit.fit_multigauss` (it carries the reduced
        linear system in ``fit.info["linear"]``).
    n_chains, n_sweeps : int
        Gibbs chains run together, and sweeps over all coordinates.  Chains start at the
        least-squares solution (the posterior mode).
    keep : int
        States kept per chain, spread over the second half of the sweeps.
    seed : int
        Random seed (results are deterministic for a seed).

    Returns
    -------
    dict
        ``flux_total`` and ``r50`` (pixels) at :data:`QUANTILES`, and ``samples``
        (n_chains * keep, K + n_sky) of component fluxes and sky terms.

    Raises
    ------
    FitError
        If ``fit`` has no linear system attached.
    """
    lin = fit.info.get("linear")
    if lin is None:
        raise FitError("this fit carries no linear system (a fit_multigauss result is expected)")
    R, c, scale = lin["R"], lin["qtb"], lin["scale"]
    K = fit.sigma.size
    D = R.shape[1]
    P = R.T @ R / scale**2          # precision
    h = R.T @ c / scale**2          # P @ unconstrained mean
    diag = np.diag(P).copy()
    if np.any(diag <= 0):
        raise FitError("degenerate linear system: a component has no constraint from the data")
    lb = np.concatenate([np.zeros(K), np.full(D - K, -np.inf)])
    rng = np.random.default_rng(seed)
    x0 = np.concatenate([np.asarray(fit.flux, float), np.asarray(fit.sky, float)])
    X = np.tile(x0, (n_chains, 1))
    sd = 1.0 / np.sqrt(diag)
    keep_at = set(np.linspace(n_sweeps // 2, n_sweeps - 1, keep).astype(int).tolist())
    kept = []
    for sweep in range(n_sweeps):
        for i in range(D):
            m = X[:, i] - (X @ P[:, i] - h[i]) / diag[i]
            X[:, i] = m + sd[i] * _std_normal_above((lb[i] - m) / sd[i], rng)
        if sweep in keep_at:
            kept.append(X.copy())
    samples = np.concatenate(kept)
    flux = samples[:, :K].sum(1)
    r50 = enclosed_radius(samples[:, :K], fit.sigma, 0.5)
    return {
        "flux_total": np.quantile(flux, QUANTILES),
        "r50": np.nanquantile(r50, QUANTILES),
        "samples": samples,
    }
