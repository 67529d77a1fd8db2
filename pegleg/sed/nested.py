"""Per-pixel nested sampling (dynesty): the reference the fast fitter is checked against.

Same likelihood and priors as :mod:`pegleg.sed.fit` (``fit_photometry(...,
method="nested")``), sampled directly: the shape parameters through the inverse CDF of
their priors (uniform, or truncated Student-t for the SFH ratios), ``log_mass_formed``
uniform in ``mass_range`` and, with a photo-z prior, the redshift from its truncated
normal.  Slow (seconds per pixel); use it for validation.
"""

from __future__ import annotations

import numpy as np
from scipy import special

from ..exceptions import FitError

__all__ = ["fit_nested", "prior_transform", "pixel_problem"]


def prior_transform(emulator, names, mass_range, z_prior=None):
    """A dynesty prior transform for ``names`` + ``log_mass_formed`` (+ ``redshift``).

    Vectorised: one call maps a unit-cube point (ndim,) -- or a batch (..., ndim) --
    through every prior's inverse CDF at once (the Student-t through
    ``scipy.special.stdtrit``, not a frozen distribution's ``ppf``, which costs ~0.1 ms a
    call)."""
    kinds, loc, scale, nu, ca, cb = [], [], [], [], [], []
    for name in names:
        lo, hi = emulator.bounds[emulator.param_names.index(name)]
        spec = dict(emulator.prior.get(name) or {"type": "uniform"})
        kind = spec.get("type", "uniform")
        if kind == "uniform":
            a, b = max(float(spec.get("low", lo)), lo), min(float(spec.get("high", hi)), hi)
            kinds.append(0), loc.append(a), scale.append(b - a), nu.append(1.0), ca.append(0.0), cb.append(1.0)
        elif kind == "student_t":
            m, sd = float(spec.get("loc", 0.0)), float(spec["scale"])
            v, clip = float(spec.get("nu", 2.0)), float(spec.get("clip", np.inf))
            a, b = max(lo, m - clip), min(hi, m + clip)
            kinds.append(1), loc.append(m), scale.append(sd), nu.append(v)
            ca.append(float(special.stdtr(v, (a - m) / sd))), cb.append(float(special.stdtr(v, (b - m) / sd)))
        elif kind == "normal":
            m, sd = float(spec.get("loc", 0.0)), float(spec["scale"])
            kinds.append(2), loc.append(m), scale.append(sd), nu.append(1.0)
            ca.append(float(special.ndtr((lo - m) / sd))), cb.append(float(special.ndtr((hi - m) / sd)))
        else:
            raise FitError(f"unknown prior type {kind!r} for {name!r}")
    mlo, mhi = mass_range
    kinds.append(0), loc.append(mlo), scale.append(mhi - mlo), nu.append(1.0), ca.append(0.0), cb.append(1.0)
    if z_prior is not None:
        mu, sd, zlo, zhi = z_prior
        kinds.append(2), loc.append(mu), scale.append(sd), nu.append(1.0)
        ca.append(float(special.ndtr((zlo - mu) / sd))), cb.append(float(special.ndtr((zhi - mu) / sd)))
    kinds = np.array(kinds)
    loc, scale, nu, ca, cb = (np.array(v, dtype=np.float64) for v in (loc, scale, nu, ca, cb))
    iu, it, iN = (np.flatnonzero(kinds == k) for k in range(3))
    width = cb - ca

    def transform(u):
        u = np.asarray(u, dtype=np.float64)
        x = np.empty_like(u)
        x[..., iu] = loc[iu] + u[..., iu] * scale[iu]
        if it.size:
            x[..., it] = loc[it] + scale[it] * special.stdtrit(nu[it], ca[it] + u[..., it] * width[it])
        if iN.size:
            x[..., iN] = loc[iN] + scale[iN] * special.ndtri(ca[iN] + u[..., iN] * width[iN])
        return x

    return transform


def pixel_problem(prob, r: int):
    """dynesty's pieces for pixel ``r`` of a :class:`pegleg.sed.fit._Problem`: ``theta_of(x)``
    (the emulator parameters at the reference mass), ``loglike(x)``, the prior transform and
    the dimension; ``x`` is (fitted parameters, log formed mass[, redshift])."""
    emu = prob.emu
    P = len(emu.param_names)
    d = len(prob.fit_idx)
    z_prior = None
    if prob.z_sigma is not None:
        zlo, zhi = emu.bounds[prob.iz]
        z_prior = (prob.z[r], prob.z_sigma, zlo, zhi)
    transform = prior_transform(emu, prob.fit_names, prob.mass_range, z_prior)
    f, w = prob.flux[r], prob.w[r]

    def theta_of(x):
        th = np.empty(P)
        th[prob.fit_idx] = x[:d]
        th[prob.im] = prob.ref_mass
        th[prob.iz] = x[d + 1] if z_prior is not None else prob.z[r]
        return th

    fidx = emu.filter_index(prob.filters)

    def loglike(x):
        th, valid, _ = emu._check_params(theta_of(x), strict=False)
        if not valid[0]:
            return -1e300
        # the emulator's own path for valid rows: no per-call filter lookup
        g = 10.0 ** (-0.4 * (emu._predict_valid(th, fidx)[0] - 23.9))
        if not np.all(np.isfinite(g)):
            return -1e300
        A = 10.0 ** (x[d] - prob.ref_mass)
        return -0.5 * float(np.sum(w * (f - A * g) ** 2))

    return theta_of, loglike, transform, d + 1 + (z_prior is not None)


def fit_nested(prob, rows, dst, nlive: int, n_samples: int, rng, out) -> None:
    """Fill ``out`` rows of a :class:`pegleg.sed.fit._Problem` by dynesty, one pixel at a time."""
    try:
        import dynesty
    except ImportError as exc:  # pragma: no cover - dynesty comes with imcascade
        raise FitError("method='nested' needs dynesty (pip install dynesty)") from exc
    from .fit import _normalise, _summaries

    emu = prob.emu
    d = len(prob.fit_idx)
    for r, o in zip(rows, dst):
        theta_of, loglike, transform, ndim = pixel_problem(prob, r)
        f, w = prob.flux[r], prob.w[r]
        sampler = dynesty.NestedSampler(loglike, transform, ndim, nlive=nlive,
                                        rstate=np.random.default_rng(rng.integers(2**32)))
        sampler.run_nested(print_progress=False, dlogz=0.1)
        res = sampler.results
        x = res.samples
        theta = np.array([theta_of(xi) for xi in x])
        g, der = emu.evaluate(theta, prob.filters, strict=False)
        log10A = x[:, d] - prob.ref_mass
        A = 10.0 ** log10A
        chi2 = np.sum(w * (f - A[:, None] * g) ** 2, axis=1)
        rd = {"theta": theta[None], "g": g[None], "log10A": log10A[None], "chi2": chi2[None],
              "der": {k: v[None] for k, v in der.items()}}
        log_w, ess = _normalise((res.logwt - res.logz[-1])[None, :])
        _summaries(prob, np.array([r]), np.array([o]), rd, log_w, ess, n_samples, rng, out)
