"""Amortised posterior network: the proposal of pegleg's pixel SED fitter.

A *posterior network* maps the photometry of one pixel (fluxes, effective errors and
which bands are valid, plus the redshift) to two Gaussian mixtures:

``proposal``
    over the ``P - 1`` fitted parameters (every emulator parameter except
    ``log_mass_formed`` and ``redshift``, each mapped to an unconstrained variable ``u``
    by the network's ``transform``: ``"normal"`` (networks trained since 2026-11-27)
    ``u = Phi^-1(F(theta))`` with ``F`` the parameter's (truncated) prior CDF, so the prior
    is a standard normal in ``u``; ``"logit"`` (older files) ``u = logit((theta - lo) / (hi - lo))``)
    **and** ``log_mass_per_flux`` =
    ``log_mass_formed - log10(scale / uJy)``.  The fitter draws from its marginal over the
    first ``P - 2`` dimensions and corrects the draws by importance sampling with the
    exact emulator likelihood (:mod:`pegleg.sed.fit`); the mass is handled analytically
    there.  The fast mode uses the whole mixture as the posterior.
``summary``
    over derived quantities, per unit flux where they scale with mass:
    ``log_stellar_mass``, ``log_sfr100``, ``log_sfr10`` (each minus ``log10(scale)``)
    and ``log_age_mw`` -- the fast mode's outputs.

``scale`` (uJy) is computed from the data (:func:`features`), so the network is
independent of the flux unit and of the pixel's brightness.  This is a mixture-density
network (Bishop 1994; the ``"mdn"`` density estimator of ``sbi``'s SNPE): the
mixtures have ``K`` full-covariance components whose means, Cholesky factors and
weights are outputs of one multi-layer perceptron.  It is trained on simulations from an
emulator with pegleg's noise model by ``scripts/train_posterior.py`` (PyTorch, never
run by CI); inference here is pure numpy (float64 for the mixtures, float32 MLP).

A mixture is a cheap, exactly normalised density whose marginals, samples and
densities need only small matrix products, which is what importance sampling needs;
importance weights then correct whatever the network gets wrong.

File format (``.npz``, no pickles): float32 arrays ``W0, b0, ...`` (trunk and the
two heads' last layers are ``WA``, ``bA``, ``WB``, ``bB``), ``x_mean``, ``x_std``,
``ya_mean``, ``ya_std``, ``yb_mean``, ``yb_std`` and ``metadata`` (UTF-8 JSON as a
uint8 array) with ``format`` = ``"pegleg-posterior-network"``, ``version`` = 1,
``filters``, ``param_names`` (the proposal's dimensions), ``bounds`` (of the first
``P - 2``), ``summary_names``, ``n_components`` (``[K_A, K_B]``), ``activation``,
``redshift_range``, ``emulator`` (name and training provenance of the emulator it was
trained on), ``training`` and ``validation`` (free dicts); optional ``transform``
(``"logit"`` when absent, or ``"normal"``) and, for ``"normal"``, ``prior`` (the
emulator's prior specification of the first ``P - 2`` parameters, see
:meth:`pegleg.sed.emulator.BaseEmulator.log_prior`).

Why the prior-CDF transform: in logit space the continuity prior of the SFH ratios
(Student-t, scale 0.3, within +-5) is a spike with heavy tails that a few Gaussian
components cannot follow.  Measured (19 JOF bands, z = 2, 200 pixels per S/N range,
importance sampling with 256 draws): one Gaussian matched to each pixel's posterior
moments gives a median ESS/N of 0.53 (S/N 5-10) and 0.22 (S/N 20-40) in the normal
space against 0.12 and 0.07 in logit space, where the logit-space network reached 0.30
and 0.10.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..exceptions import EmulatorError
from .emulator import activation_function, prior_support

__all__ = [
    "PosteriorNetwork", "GaussianMixture", "features", "load_posterior_network",
    "save_posterior_network", "FORMAT_NAME", "FORMAT_VERSION", "N_FEATURES_EXTRA",
    "SUMMARY_NAMES", "MASS_PER_FLUX", "ParameterTransform", "TRANSFORMS",
]

FORMAT_NAME = "pegleg-posterior-network"
FORMAT_VERSION = 1
#: Extra features after the three per band: redshift / 5 and log10(1 + redshift).
N_FEATURES_EXTRA = 2
#: Dimensions of the summary mixture (the first three per unit flux, see the module doc).
SUMMARY_NAMES = ("log_stellar_mass", "log_sfr100", "log_sfr10", "log_age_mw")
MASS_PER_FLUX = "log_mass_per_flux"
#: log10(error / scale) of a missing band (and the clip range of valid ones).
_LOG_ERR_MISSING = 2.0
_LOG_ERR_MIN = -4.0
_DATA_DIR = Path(__file__).resolve().parent / "data"
_LOG_2PI = np.log(2.0 * np.pi)


#: Maps between the bounded parameters and the proposal's unconstrained variables.
TRANSFORMS = ("logit", "normal")


# --------------------------------------------------------------------------- transform
class ParameterTransform:
    """Bounded parameters (..., D) <-> the proposal's unconstrained variables (..., D).

    ``kind="logit"``: ``u = logit((theta - lo) / (hi - lo))``.  ``kind="normal"``:
    ``u = Phi^-1(F(theta))`` with ``F`` each parameter's prior CDF (``prior[name]`` as in
    :meth:`pegleg.sed.emulator.BaseEmulator.log_prior`: ``uniform`` (default),
    ``student_t`` or ``normal``, truncated to ``bounds`` and, for ``student_t``, to
    ``loc +- clip``), so the prior is a standard normal in ``u`` and
    ``log prior(theta) + log |d theta / d u| = log N(u; 0, 1)`` exactly.
    """

    def __init__(self, kind: str, names: Sequence[str], bounds, prior: Mapping[str, Any] | None = None):
        if kind not in TRANSFORMS:
            raise EmulatorError(f"unknown parameter transform {kind!r}; known: {TRANSFORMS}")
        self.kind = kind
        self.names = tuple(str(n) for n in names)
        self.bounds = np.asarray(bounds, dtype=np.float64)
        prior = dict(prior or {})
        self._dims = []
        if kind == "normal":
            for (lo, hi), name in zip(self.bounds, self.names):
                t, a, b, loc, sc, nu = prior_support(prior.get(name), lo, hi, name)
                if t == "uniform":
                    self._dims.append(("uniform", a, b, None))
                else:
                    ca, cb = (self._cdf(t, nu, (x - loc) / sc) for x in (a, b))
                    self._dims.append((t, a, b, (loc, sc, nu, ca, cb - ca)))

    @staticmethod
    def _cdf(kind, nu, x):
        from scipy import special

        x = np.asarray(x, dtype=np.float64)
        if kind == "normal":
            return special.ndtr(x)
        if nu == 2.0:                              # closed form (5x faster than stdtr)
            return 0.5 + x / (2.0 * np.sqrt(2.0 + x * x))
        return special.stdtr(nu, x)

    @staticmethod
    def _ppf(kind, nu, p):
        from scipy import special

        p = np.asarray(p, dtype=np.float64)
        if kind == "normal":
            return special.ndtri(p)
        if nu == 2.0:
            return (2.0 * p - 1.0) / np.sqrt(2.0 * p * (1.0 - p))
        return special.stdtrit(nu, p)

    @staticmethod
    def _logpdf(kind, nu, x):
        from scipy import special

        if kind == "normal":
            return -0.5 * x * x - 0.5 * _LOG_2PI
        return (special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * np.log(nu * np.pi)
                - (nu + 1) / 2 * np.log1p(x * x / nu))

    def forward(self, theta: np.ndarray) -> np.ndarray:
        """Parameters (..., D) -> unconstrained (..., D)."""
        theta = np.asarray(theta, dtype=np.float64)
        lo, hi = self.bounds[:, 0], self.bounds[:, 1]
        if self.kind == "logit":
            t = np.clip((theta - lo) / (hi - lo), 1e-12, 1 - 1e-12)
            return np.log(t) - np.log1p(-t)
        from scipy import special

        u = np.empty(theta.shape)
        for j, (kind, a, b, par) in enumerate(self._dims):
            v = theta[..., j]
            if kind == "uniform":
                c = (v - a) / (b - a)
            else:
                loc, sc, nu, ca, w = par
                c = (self._cdf(kind, nu, (v - loc) / sc) - ca) / w
            u[..., j] = special.ndtri(np.clip(c, 1e-15, 1 - 1e-15))
        return u

    def inverse(self, u: np.ndarray, jacobian: bool = True,
                dims: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Unconstrained (..., d) -> (parameters, ``log |d theta / d u|`` summed over dimensions, or None).

        ``dims``: ``u`` holds only these parameters (indices into ``names``).
        """
        u = np.asarray(u, dtype=np.float64)
        idx = np.arange(len(self.names)) if dims is None else np.asarray(dims, dtype=np.intp)
        if self.kind == "logit":
            lo, hi = self.bounds[idx, 0], self.bounds[idx, 1]
            e = np.exp(-np.abs(u))                      # stable logistic
            t = np.where(u >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
            theta = lo + (hi - lo) * t
            if not jacobian:
                return theta, None
            # t (1 - t) = e^-|u| / (1 + e^-|u|)^2
            return theta, (np.log(hi - lo) - np.abs(u) - 2.0 * np.log1p(e)).sum(axis=-1)
        from scipy import special as sp

        theta = np.empty(u.shape)
        log_jac = np.zeros(u.shape[:-1]) if jacobian else None
        for k, j in enumerate(idx):
            kind, a, b, par = self._dims[j]
            uk = u[..., k]
            c = sp.ndtr(uk)
            if kind == "uniform":
                theta[..., k] = a + (b - a) * c
                if jacobian:
                    log_jac += -0.5 * uk * uk - 0.5 * _LOG_2PI + np.log(b - a)
                continue
            loc, sc, nu, ca, w = par
            # far in the tails Phi(u) rounds to 0 or 1: clip (the parameter sits at its bound)
            p = np.clip(ca + w * c, ca + 1e-300, ca + w - 1e-16 * max(w, 1.0))
            x = self._ppf(kind, nu, p)
            theta[..., k] = np.clip(loc + sc * x, a, b)
            if jacobian:
                # d theta / d u = phi(u) / prior density = phi(u) * sc * w / f(x)
                log_jac += -0.5 * uk * uk - 0.5 * _LOG_2PI + np.log(sc * w) - self._logpdf(kind, nu, x)
        return theta, log_jac


# --------------------------------------------------------------------------- features
def features(flux, error, valid, redshift) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs for N pixels: ``(X (N, 3F + 2) float32, log10 scale (N,))``.

    ``flux`` and ``error`` (N, F) are in uJy, ``error`` the *effective* 1-sigma error
    (data error, error floor and emulator uncertainty in quadrature), ``valid`` (N, F)
    bool, ``redshift`` (N,) or a scalar.  ``scale = sqrt(mean over valid bands of
    flux**2 + error**2)``; the features are ``flux / scale`` (0 if invalid),
    ``log10(error / scale)`` (clipped to [-4, 2]; 2 if invalid), the valid flags, then
    ``redshift / 5`` and ``log10(1 + redshift)``.  Rows without a valid band get scale 1
    and all bands flagged invalid.
    """
    f = np.asarray(flux, dtype=np.float64)
    e = np.asarray(error, dtype=np.float64)
    v = np.asarray(valid, dtype=bool) & np.isfinite(f) & np.isfinite(e) & (e > 0)
    n, nb = f.shape
    fz = np.where(v, f, 0.0)
    ez = np.where(v, e, 0.0)
    nv = v.sum(axis=1)
    ms = (fz * fz + ez * ez).sum(axis=1) / np.maximum(nv, 1)
    scale = np.where(nv > 0, np.sqrt(ms), 1.0)
    scale = np.where(scale > 0, scale, 1.0)
    z = np.broadcast_to(np.asarray(redshift, dtype=np.float64), (n,))
    X = np.empty((n, 3 * nb + N_FEATURES_EXTRA), dtype=np.float32)
    X[:, :nb] = fz / scale[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        le = np.log10(np.where(v, e, 1.0) / scale[:, None])
    X[:, nb:2 * nb] = np.where(v, np.clip(le, _LOG_ERR_MIN, _LOG_ERR_MISSING), _LOG_ERR_MISSING)
    X[:, 2 * nb:3 * nb] = v
    X[:, 3 * nb] = z / 5.0
    X[:, 3 * nb + 1] = np.log10(1.0 + z)
    return X, np.log10(scale)


# --------------------------------------------------------------------------- mixtures
def _softplus(x):
    """log(1 + exp(x)), stable (np.logaddexp is 5x slower)."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


#: Up to this dimension :meth:`GaussianMixture.sample` transforms the draws by every
#: component (measured faster for D = 3, 4 with K = 6-8; slower for D = 12).
_ALL_COMPONENTS_MAX_DIM = 4


class GaussianMixture:
    """A batch of N Gaussian mixtures with K full-covariance components in D dimensions.

    ``log_weights`` (N, K) (normalised), ``mean`` (N, K, D), ``scale_tril`` (N, K, D, D)
    lower-triangular Cholesky factors of the covariances.  Everything float64.
    """

    def __init__(self, log_weights, mean, scale_tril):
        lw = np.asarray(log_weights, dtype=np.float64)
        self.log_weights = lw - np.logaddexp.reduce(lw, axis=1, keepdims=True)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale_tril = np.asarray(scale_tril, dtype=np.float64)
        self._inv = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.mean.shape

    @property
    def inv_tril(self) -> np.ndarray:
        """Inverses of the Cholesky factors (N, K, D, D), cached."""
        if self._inv is None:
            n, k, d = self.mean.shape
            eye = np.broadcast_to(np.eye(d), (n, k, d, d))
            self._inv = np.linalg.solve(self.scale_tril, eye)
        return self._inv

    def marginal(self, dims: Sequence[int]) -> "GaussianMixture":
        """The mixture's marginal over ``dims`` (same weights)."""
        dims = np.asarray(dims, dtype=np.intp)
        rows = self.scale_tril[..., dims, :]                 # (N, K, d, D): the rows of L kept
        sub = rows @ np.swapaxes(rows, -1, -2)
        return GaussianMixture(self.log_weights, self.mean[..., dims], np.linalg.cholesky(sub))

    def sample(self, n_draws: int, rng: np.random.Generator, *, widen: float = 1.0,
               widen_weight: float = 0.0) -> np.ndarray:
        """(N, n_draws, D) draws.

        With ``widen_weight > 0`` the draws come from the *defensive* mixture
        ``(1 - widen_weight) * self + widen_weight * self_widened`` whose widened copy has
        every Cholesky factor multiplied by ``widen`` (evaluate it with the same
        arguments in :meth:`logpdf`).
        """
        n, k, d = self.mean.shape
        cdf = np.cumsum(np.exp(self.log_weights), axis=1)
        u = rng.random((n, n_draws)) * cdf[:, -1:]
        comp = np.zeros((n, n_draws), dtype=np.intp)         # component of each draw
        for j in range(k - 1):
            comp += u > cdf[:, j, None]
        eps = rng.standard_normal((n, d, n_draws))
        if widen_weight > 0:
            eps *= np.where(rng.random((n, n_draws)) < widen_weight, widen, 1.0)[:, None, :]
        rows = np.arange(n)[:, None]
        if d <= _ALL_COMPONENTS_MAX_DIM:
            # small D: transform every draw by every component in one batched product, then
            # keep each draw's own (cheaper than gathering a (D x D) factor per draw)
            xk = np.matmul(self.scale_tril, eps[:, None])      # (N, K, D, n)
            xk += self.mean[..., None]
            x = np.take_along_axis(xk, comp[:, None, None, :], axis=1)[:, 0]
            return np.ascontiguousarray(np.swapaxes(x, 1, 2))
        # large D: each draw's own component: gather its factor and mean, one (D x D) @ (D,)
        # product per draw (K times less arithmetic than transforming every draw by every component)
        L = self.scale_tril[rows, comp]                      # (N, n, D, D)
        x = np.matmul(L, np.swapaxes(eps, 1, 2)[..., None])[..., 0]
        x += self.mean[rows, comp]
        return x

    def logpdf(self, x: np.ndarray, *, widen: float = 1.0, widen_weight: float = 0.0) -> np.ndarray:
        """log density (N, n) of points ``x`` (N, n, D) (of the defensive mixture if asked)."""
        n, k, d = self.mean.shape
        inv = self.inv_tril                               # (N, K, D, D)
        logdet = np.log(np.abs(np.diagonal(self.scale_tril, axis1=-2, axis2=-1))).sum(-1)  # (N, K)
        xt = np.ascontiguousarray(np.swapaxes(x, 1, 2))  # (N, D, n)
        terms = []
        for j in range(k):
            z = np.matmul(inv[:, j], xt - self.mean[:, j, :, None])
            maha = np.einsum("adn,adn->an", z, z)
            base = self.log_weights[:, j, None] - logdet[:, j, None] - 0.5 * d * _LOG_2PI
            if widen_weight > 0:
                terms.append(base + np.log1p(-widen_weight) - 0.5 * maha)
                terms.append(base + np.log(widen_weight) - d * np.log(widen) - 0.5 * maha / widen ** 2)
            else:
                terms.append(base - 0.5 * maha)
        t = np.stack(terms)
        m = t.max(axis=0)
        return m + np.log(np.exp(t - m).sum(axis=0))

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mixture mean (N, D) and covariance (N, D, D)."""
        w = np.exp(self.log_weights)[:, :, None]
        mean = (w * self.mean).sum(axis=1)
        cov = self.scale_tril @ np.swapaxes(self.scale_tril, -1, -2)
        dm = self.mean - mean[:, None, :]
        cov = (w[..., None] * (cov + dm[..., :, None] * dm[..., None, :])).sum(axis=1)
        return mean, cov


def _tril_from_raw(diag_raw: np.ndarray, off: np.ndarray, d: int) -> np.ndarray:
    """Lower-triangular factors from (…, D) raw diagonals and (…, D(D-1)/2) off-diagonals."""
    shape = diag_raw.shape[:-1]
    L = np.zeros(shape + (d, d))
    i, j = np.tril_indices(d, -1)
    L[..., i, j] = off
    idx = np.arange(d)
    L[..., idx, idx] = _softplus(diag_raw) + 1e-3
    return L


def head_size(k: int, d: int) -> int:
    """Outputs of a mixture head: K logits, K*D means, K*D raw diagonals, K*D(D-1)/2 off-diagonals."""
    return k * (1 + 2 * d + d * (d - 1) // 2)


def _parse_head(y: np.ndarray, k: int, d: int, mean: np.ndarray, std: np.ndarray) -> GaussianMixture:
    """Mixture from head outputs ``y`` (N, head_size); targets were standardised with (mean, std)."""
    n = y.shape[0]
    y = y.astype(np.float64)
    logits = y[:, :k]
    o = k
    mu = y[:, o:o + k * d].reshape(n, k, d)
    o += k * d
    draw = y[:, o:o + k * d].reshape(n, k, d)
    o += k * d
    off = y[:, o:o + k * d * (d - 1) // 2].reshape(n, k, d * (d - 1) // 2)
    L = _tril_from_raw(draw, off, d)
    # undo the standardisation: x = mean + std * x_std
    mu = mean + std * mu
    L = std[:, None] * L
    return GaussianMixture(logits, mu, L)


# --------------------------------------------------------------------------- network
class PosteriorNetwork:
    """A trained posterior network (see the module docstring).

    Call it with ``(flux, error, valid, redshift)`` to get ``(proposal, summary,
    log10_scale)``.  ``to_unconstrained`` / ``from_unconstrained`` map parameter values
    to and from the proposal's variables.
    """

    def __init__(self, trunk_weights, trunk_biases, WA, bA, WB, bB, x_mean, x_std,
                 ya_mean, ya_std, yb_mean, yb_std, metadata: Mapping[str, Any], *,
                 name: str = "posterior network"):
        meta = dict(metadata)
        meta.setdefault("format", FORMAT_NAME)
        meta.setdefault("version", FORMAT_VERSION)
        for key in ("filters", "param_names", "bounds", "summary_names", "n_components",
                    "activation", "redshift_range"):
            if key not in meta:
                raise EmulatorError(f"{name}: metadata is missing {key!r}")
        self.name = name
        self.metadata = meta
        f32 = np.float32
        arrays = list(trunk_weights) + list(trunk_biases) + [WA, bA, WB, bB, x_mean, x_std, ya_mean, ya_std,
                                                             yb_mean, yb_std]
        for a in arrays:
            a = np.asarray(a)
            if np.iscomplexobj(a) or not np.issubdtype(a.dtype, np.number):
                raise EmulatorError(f"{name}: network arrays must be real numbers, got dtype {a.dtype}")
            if not np.all(np.isfinite(a)):
                raise EmulatorError(f"{name}: network arrays contain NaN or infinite values")
        self.trunk_weights = [np.ascontiguousarray(w, dtype=f32) for w in trunk_weights]
        self.trunk_biases = [np.ascontiguousarray(b, dtype=f32) for b in trunk_biases]
        self.WA, self.bA = np.ascontiguousarray(WA, f32), np.ascontiguousarray(bA, f32)
        self.WB, self.bB = np.ascontiguousarray(WB, f32), np.ascontiguousarray(bB, f32)
        self.x_mean, self.x_std = np.asarray(x_mean, f32), np.asarray(x_std, f32)
        self.ya_mean, self.ya_std = np.asarray(ya_mean, np.float64), np.asarray(ya_std, np.float64)
        self.yb_mean, self.yb_std = np.asarray(yb_mean, np.float64), np.asarray(yb_std, np.float64)
        self.filters = tuple(str(f) for f in meta["filters"])
        self.param_names = tuple(str(p) for p in meta["param_names"])
        self.bounds = np.asarray(meta["bounds"], dtype=np.float64)
        self.summary_names = tuple(str(s) for s in meta["summary_names"])
        self.n_components = tuple(int(k) for k in meta["n_components"])
        self.redshift_range = tuple(float(z) for z in meta["redshift_range"])
        self.activation = str(meta["activation"])
        self._act = activation_function(self.activation)
        self.transform = ParameterTransform(str(meta.get("transform", "logit")), self.param_names[:-1],
                                            self.bounds, meta.get("prior"))
        self._validate()

    def _validate(self) -> None:
        nb = len(self.filters)
        n_in = 3 * nb + N_FEATURES_EXTRA
        if self.param_names[-1] != MASS_PER_FLUX:
            raise EmulatorError(f"{self.name}: the last proposal dimension must be {MASS_PER_FLUX!r}")
        if self.bounds.shape != (len(self.param_names) - 1, 2):
            raise EmulatorError(f"{self.name}: bounds must have shape ({len(self.param_names) - 1}, 2)")
        if not np.all(np.isfinite(self.bounds)) or np.any(self.bounds[:, 0] >= self.bounds[:, 1]):
            raise EmulatorError(f"{self.name}: bounds must be finite with low < high, got {self.bounds.tolist()}")
        if self.x_mean.shape != (n_in,) or self.x_std.shape != (n_in,):
            raise EmulatorError(f"{self.name}: x_mean/x_std must have {n_in} entries for {nb} filters")
        width = n_in
        for i, (w, b) in enumerate(zip(self.trunk_weights, self.trunk_biases)):
            if w.shape[0] != width or b.shape != (w.shape[1],):
                raise EmulatorError(f"{self.name}: trunk layer {i} has inconsistent shapes {w.shape}, {b.shape}")
            width = w.shape[1]
        ka, kb = self.n_components
        da, db = len(self.param_names), len(self.summary_names)
        for nm, W, b, size, m in (("A", self.WA, self.bA, head_size(ka, da), self.ya_mean),
                                  ("B", self.WB, self.bB, head_size(kb, db), self.yb_mean)):
            if W.shape != (width, size) or b.shape != (size,):
                raise EmulatorError(f"{self.name}: head {nm} must map {width} -> {size} outputs, got {W.shape}")
        if self.ya_mean.shape != (da,) or self.yb_mean.shape != (db,):
            raise EmulatorError(f"{self.name}: target normalisations have the wrong length")
        for nm, arr in (("x_std", self.x_std), ("ya_std", self.ya_std), ("yb_std", self.yb_std)):
            if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                raise EmulatorError(f"{self.name}: {nm} must be finite and > 0")

    def __repr__(self) -> str:
        return (f"<PosteriorNetwork {self.name!r}: {len(self.filters)} filters, "
                f"z {self.redshift_range[0]}-{self.redshift_range[1]}, K={self.n_components}>")

    # ----------------------------------------------------------------- transforms
    def to_unconstrained(self, theta: np.ndarray) -> np.ndarray:
        """Bounded parameters (…, P-2) -> the proposal's unconstrained variables (:class:`ParameterTransform`)."""
        return self.transform.forward(theta)

    def from_unconstrained(self, u: np.ndarray, jacobian: bool = True,
                           dims: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Unconstrained (..., P-2) -> (parameters, ``log abs(d theta / d u)`` summed over dimensions, or None).

        ``dims``: ``u`` holds only these parameters (indices into ``param_names[:-1]``).
        """
        return self.transform.inverse(u, jacobian, dims)

    # ----------------------------------------------------------------- evaluation
    def trunk(self, X: np.ndarray) -> np.ndarray:
        h = (X - self.x_mean) / self.x_std
        h = h.astype(np.float32)
        for w, b in zip(self.trunk_weights, self.trunk_biases):
            h = h @ w
            h += b
            self._act(h)
        return h

    def __call__(self, flux, error, valid, redshift):
        X, log_scale = features(flux, error, valid, redshift)
        h = self.trunk(X)
        ka, kb = self.n_components
        prop = _parse_head(h @ self.WA + self.bA, ka, len(self.param_names), self.ya_mean, self.ya_std)
        summ = _parse_head(h @ self.WB + self.bB, kb, len(self.summary_names), self.yb_mean, self.yb_std)
        return prop, summ, log_scale

    def filter_index(self, filters: Sequence[str]) -> np.ndarray:
        """Positions of ``filters`` in this network's input; error naming missing ones."""
        lookup = {f.upper(): i for i, f in enumerate(self.filters)}
        missing = [f for f in filters if str(f).upper() not in lookup]
        if missing:
            raise EmulatorError(
                f"{self.name} was not trained on filters {missing}; its filters are "
                f"{', '.join(self.filters)} (train one for your filter set with "
                f"scripts/train_posterior.py)")
        return np.array([lookup[str(f).upper()] for f in filters], dtype=np.intp)

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, (w, b) in enumerate(zip(self.trunk_weights, self.trunk_biases)):
            out[f"W{i}"], out[f"b{i}"] = w, b
        out.update(WA=self.WA, bA=self.bA, WB=self.WB, bB=self.bB, x_mean=self.x_mean,
                   x_std=self.x_std, ya_mean=self.ya_mean.astype(np.float32),
                   ya_std=self.ya_std.astype(np.float32), yb_mean=self.yb_mean.astype(np.float32),
                   yb_std=self.yb_std.astype(np.float32))
        return out


# --------------------------------------------------------------------------- I/O
def save_posterior_network(net: PosteriorNetwork, path) -> Path:
    """Write ``net`` to ``path`` (``.npz``, pickle-free, atomic)."""
    path = Path(path)
    meta = dict(net.metadata, format=FORMAT_NAME, version=FORMAT_VERSION)
    arrays = net.arrays()
    arrays["metadata"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..io.atomic import atomic_write

    def _write(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    return atomic_write(path, _write)


def load_posterior_network(name="default") -> PosteriorNetwork:
    """Load a posterior network: ``"default"`` (bundled) or a path to a ``.npz`` file."""
    if not isinstance(name, (str, os.PathLike)):
        raise EmulatorError(f"load_posterior_network: expected 'default' or a file path, got "
                            f"{type(name).__name__} {name!r}")
    bundled = None   # a bundled network is named by its name, not this machine's install path
    if isinstance(name, str) and "/" not in name and os.sep not in name and not name.endswith(".npz"):
        path = _DATA_DIR / f"{name}_posterior.npz"
        bundled = name
        if not path.exists():
            raise EmulatorError(f"no bundled posterior network called {name!r} (looked for {path})")
    else:
        path = Path(name)
    where = f"posterior-network file {str(path)!r}"
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise EmulatorError(f"{where} does not exist") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError) as exc:
        raise EmulatorError(f"{where} is not a readable pickle-free .npz file: {exc}") from None
    raw = arrays.pop("metadata", None)
    if raw is None or raw.dtype != np.uint8:
        raise EmulatorError(f"{where} has no JSON 'metadata' entry; not a pegleg posterior network")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EmulatorError(f"{where}: metadata is not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise EmulatorError(f"{where}: format is {meta.get('format') if isinstance(meta, dict) else None!r}, "
                            f"expected {FORMAT_NAME!r}")
    if meta.get("version") != FORMAT_VERSION:
        raise EmulatorError(f"{where}: version {meta.get('version')!r} is not supported (reads {FORMAT_VERSION})")
    n = 0
    while f"W{n}" in arrays:
        n += 1
    need = ["WA", "bA", "WB", "bB", "x_mean", "x_std", "ya_mean", "ya_std", "yb_mean", "yb_std"]
    absent = [k for k in need if k not in arrays] + ([] if n else ["W0"])
    if absent:
        raise EmulatorError(f"{where}: missing arrays {absent}")
    try:
        return PosteriorNetwork([arrays[f"W{i}"] for i in range(n)], [arrays[f"b{i}"] for i in range(n)],
                                *(arrays[k] for k in need), meta, name=str(path) if bundled is None else bundled)
    except EmulatorError as exc:
        raise EmulatorError(f"{where}: {exc}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise EmulatorError(f"{where}: invalid content: {exc}") from None
