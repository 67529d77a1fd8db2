"""Circular Gaussian-mixture models of PSF images.

Multi-Gaussian galaxy models (imcascade and pegleg's own deconvolution) need the PSF
as a sum of circular Gaussians with a shared centre:

.. math:: P(r) = \\sum_k a_k \\, \\frac{1}{2\\pi\\sigma_k^2} e^{-r^2 / 2\\sigma_k^2}

(``psf_a`` = :math:`a_k`, ``psf_sig`` = :math:`\\sigma_k` in imcascade's words).  This
module fits such a mixture to a PSF *image*.  Unlike imcascade's ``PSFFitter`` the model
is integrated over pixels (not point-sampled at pixel centres) and the centre is a free
sub-pixel parameter, so the fitted peak and total flux match the image: imcascade's
fitter was measured to centre profiles half a pixel off and to reach only 0.78x the peak.

Method: a non-negative least-squares fit on a dense logarithmic grid of widths finds
the scales present in the PSF; the strongest ``n`` of them seed a non-linear least-squares
refinement of widths, weights and centre with residuals weighted like Poisson noise
(so core and wings both matter), plus penalty terms that tie the model's peak pixel and
total flux to the image's.  ``n`` grows until the peak, flux and RMS goals are met (an Airy
ring cannot be matched by positive Gaussians: then the best fit is returned).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares
from scipy.special import erf

from .._numerics import bounded_lstsq
from ..exceptions import PSFError

__all__ = ["GaussianMixturePSF", "fit_psf_mixture", "gaussian_pixel_integrals"]

_SQRT2 = np.sqrt(2.0)


def gaussian_pixel_integrals(n: int, centre: float, sigma: np.ndarray) -> np.ndarray:
    """Fraction of a unit 1-D Gaussian falling in each of ``n`` pixels.

    Parameters
    ----------
    n : int
        Number of pixels; pixel ``i`` spans ``[i - 0.5, i + 0.5]``.
    centre : float
        Gaussian centre in pixel coordinates.
    sigma : array_like (K,)
        Widths in pixels.

    Returns
    -------
    numpy.ndarray (K, n)
    """
    sigma = np.atleast_1d(np.asarray(sigma, dtype=float))[:, None]
    edges = np.arange(n + 1) - 0.5 - centre
    c = 0.5 * erf(edges[None, :] / (_SQRT2 * sigma))
    return np.diff(c, axis=1)


@dataclass(frozen=True)
class GaussianMixturePSF:
    """A PSF as a sum of concentric circular Gaussians.

    Attributes
    ----------
    sigma : numpy.ndarray (K,)
        Widths in pixels (of the image the PSF was fitted on), ascending.
    weight : numpy.ndarray (K,)
        Flux of each component; ``weight.sum()`` is the model's total flux (~1).
    centre : tuple of float
        (y, x) centre in pixels of the fitted image (the central pixel is ``(n-1)/2``).
    shape : tuple of int
        Shape of the fitted image.
    peak_ratio, flux_ratio : float
        Model / image peak-pixel value and total flux over the stamp.
    rms : float
        RMS residual relative to the image peak.
    """

    sigma: np.ndarray
    weight: np.ndarray
    centre: tuple[float, float]
    shape: tuple[int, int]
    peak_ratio: float = np.nan
    flux_ratio: float = np.nan
    rms: float = np.nan
    info: dict = field(default_factory=dict, compare=False)

    @property
    def n_components(self) -> int:
        """Number of Gaussian components."""
        return int(self.sigma.size)

    @property
    def psf_sig(self) -> np.ndarray:
        """Widths in pixels, imcascade's ``psf_sig``."""
        return np.asarray(self.sigma, dtype=float)

    @property
    def psf_a(self) -> np.ndarray:
        """Weights normalised to sum 1, imcascade's ``psf_a``."""
        return np.asarray(self.weight, dtype=float) / float(np.sum(self.weight))

    def render(self, shape: tuple[int, int] | None = None, centre: tuple[float, float] | None = None) -> np.ndarray:
        """Pixel-integrated image of the mixture.

        Parameters
        ----------
        shape : (int, int), optional
            Output shape (default: the fitted image's).
        centre : (float, float), optional
            (y, x) centre in pixels (default: centred in ``shape`` with the fitted
            sub-pixel offset).
        """
        shape = tuple(shape or self.shape)
        if centre is None:
            off = (self.centre[0] - (self.shape[0] - 1) / 2, self.centre[1] - (self.shape[1] - 1) / 2)
            centre = ((shape[0] - 1) / 2 + off[0], (shape[1] - 1) / 2 + off[1])
        return _render(shape, centre, self.sigma, self.weight)

    def fwhm(self) -> float:
        """FWHM in pixels of the (continuous, not pixel-integrated) mixture profile."""
        r = np.linspace(0, 6 * self.sigma.max(), 4000)
        prof = (self.weight[:, None] / (2 * np.pi * self.sigma[:, None] ** 2)
                * np.exp(-0.5 * (r[None] / self.sigma[:, None]) ** 2)).sum(0)
        half = prof[0] / 2
        i = int(np.argmax(prof < half))
        return float(2 * np.interp(half, [prof[i], prof[i - 1]], [r[i], r[i - 1]]))


def _render(shape, centre, sigma, weight) -> np.ndarray:
    gy = gaussian_pixel_integrals(shape[0], centre[0], sigma)
    gx = gaussian_pixel_integrals(shape[1], centre[1], sigma)
    return np.einsum("k,ky,kx->yx", np.asarray(weight, float), gy, gx)


def _basis(shape, centre, sigma) -> np.ndarray:
    gy = gaussian_pixel_integrals(shape[0], centre[0], sigma)
    gx = gaussian_pixel_integrals(shape[1], centre[1], sigma)
    return (gy[:, :, None] * gx[:, None, :]).reshape(len(sigma), -1)


def _seed(p: np.ndarray, centre, n: int, wts: np.ndarray, smax: float) -> tuple[np.ndarray, np.ndarray]:
    grid = np.geomspace(0.2, smax / 3, 24)
    A = _basis(p.shape, centre, grid)
    a = bounded_lstsq((A * wts.ravel()).T, (p * wts).ravel(), 0.0)
    order = np.argsort(a)[::-1]
    keep = [i for i in order if a[i] > 0][:n]
    if len(keep) < n:  # too few distinct scales: spread the rest log-uniformly
        extra = np.geomspace(0.5, smax / 2, n - len(keep) + 2)[1:-1]
        s = np.concatenate([grid[keep], extra])
        w = np.concatenate([a[keep], np.full(extra.size, 1e-3)])
    else:
        s, w = grid[keep], a[keep]
    o = np.argsort(s)
    return s[o], np.clip(w[o], 1e-6, None)


def fit_psf_mixture(psf: np.ndarray, n_components: int | None = None, *, max_components: int = 8,
                    peak_tolerance: float = 0.01, flux_tolerance: float = 0.002,
                    rms_tolerance: float = 1e-3) -> GaussianMixturePSF:
    """Fit a pixel-integrated circular Gaussian mixture to a PSF image.

    Parameters
    ----------
    psf : array_like (ny, nx)
        PSF image (any normalisation; fitted as given).  Odd sizes expected, centred.
    n_components : int, optional
        Number of Gaussians.  Default: the smallest number from 2 up to
        ``max_components`` that meets both tolerances (or the best fit found).
    max_components : int
        Upper limit when ``n_components`` is not given.
    peak_tolerance, flux_tolerance : float
        Goals on the absolute value of model/image - 1 for the peak pixel and the total flux over the stamp.
    rms_tolerance : float
        Goal on the RMS residual relative to the peak pixel.

    Returns
    -------
    GaussianMixturePSF
        Widths in pixels, weights, centre, and the achieved ``peak_ratio``,
        ``flux_ratio`` and ``rms`` (relative to the peak).

    Raises
    ------
    PSFError
        If the image is not 2-D, not finite, or has no positive flux.
    """
    p = np.array(psf, dtype=np.float64)
    if p.ndim != 2:
        raise PSFError(f"psf: expected a 2-D image, got {p.ndim} dimensions")
    if not np.all(np.isfinite(p)):
        raise PSFError("psf: contains NaN/inf values")
    total = p.sum()
    if not total > 0 or p.max() <= 0:
        raise PSFError(f"psf: sum is {total:g}; cannot fit a Gaussian mixture to a PSF without positive flux")
    scale = p.max()
    pn = p / scale
    ny, nx = pn.shape
    c0 = np.array([(ny - 1) / 2, (nx - 1) / 2])
    pos = np.clip(pn, 0, None)
    if pos.sum() > 0:
        yy, xx = np.indices(pn.shape)
        core = pos * (pos > 0.05)
        c0 = np.array([(core * yy).sum() / core.sum(), (core * xx).sum() / core.sum()])
    # Poisson-like weights: every pixel's relative error counts, with a floor for wings.
    floor = 3e-4
    wts = 1.0 / np.sqrt(np.abs(pn) + floor)
    smax = min(ny, nx) / 2.0
    ipeak = np.unravel_index(np.argmax(pn), pn.shape)
    tot_n = pn.sum()

    b_full = np.concatenate([(pn * wts).ravel(), [pn[ipeak] * 30.0, 300.0]])
    flat_peak = np.ravel_multi_index(ipeak, pn.shape)

    def design(c, s):
        B = _basis(pn.shape, c, s)  # (n, npix)
        # total weight (integral over the infinite plane) = the stamp's total, so a kernel
        # normalised to 1 stays normalised to 1 as a mixture
        return np.vstack([(B * wts.ravel()).T, B[:, flat_peak][None] * 30.0, np.ones((1, len(s))) / tot_n * 300.0])

    def solve(x, n):
        c, s = x[:2], np.exp(x[2:2 + n])
        A = design(c, s)
        return A, bounded_lstsq(A, b_full, 0.0)

    def fit(n: int):
        s0, _ = _seed(pn, c0, n, wts, smax)
        s0 = s0 * (1 + 0.05 * np.arange(n))  # break exact degeneracies
        x0 = np.concatenate([c0, np.log(s0)])
        lo = np.concatenate([c0 - 1.0, np.full(n, np.log(0.05))])
        hi = np.concatenate([c0 + 1.0, np.full(n, np.log(smax / 3))])
        x0 = np.clip(x0, lo + 1e-6, hi - 1e-6)

        def resid(x):
            A, a = solve(x, n)
            return A @ a - b_full

        res = least_squares(resid, x0, bounds=(lo, hi), diff_step=1e-4, max_nfev=60 * (n + 2))
        _, a = solve(res.x, n)
        c, s = res.x[:2], np.exp(res.x[2:])
        keep = a > 1e-4 * a.sum()
        c, s, a = c, s[keep], a[keep]
        m = _render(pn.shape, c, s, a)
        o = np.argsort(s)
        return GaussianMixturePSF(
            sigma=s[o], weight=a[o] * scale, centre=(float(c[0]), float(c[1])), shape=(ny, nx),
            peak_ratio=float(m[ipeak] / pn[ipeak]), flux_ratio=float(m.sum() / tot_n),
            rms=float(np.sqrt(np.mean((m - pn) ** 2))), info={"nfev": res.nfev, "cost": float(res.cost)},
        )

    if n_components is not None:
        if int(n_components) < 1:
            raise PSFError(f"n_components: expected >= 1, got {n_components}")
        return fit(int(n_components))
    best = None
    for n in range(2, max_components + 1):
        cand = fit(n)
        ok = (abs(cand.peak_ratio - 1) <= peak_tolerance and abs(cand.flux_ratio - 1) <= flux_tolerance
              and cand.rms <= rms_tolerance)
        if best is None or cand.rms < best.rms:
            best = cand
        if ok:
            return cand
    return best
