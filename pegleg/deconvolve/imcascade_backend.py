"""Fit one band with imcascade itself (Miller & van Dokkum 2021), in pegleg's conventions.

pegleg's own fitter (:func:`pegleg.deconvolve.fit.fit_multigauss`) solves imcascade's
model; this module runs the reference implementation on the same inputs, for
cross-checks and benchmarks.  imcascade is an optional dependency, imported lazily.

What the wrapper takes care of (all measured on imcascade 1.1):

Inputs
    imcascade fails on big-endian arrays (FITS data) and overwrites NaN pixels of the
    arrays it is given; it gets native float64 *copies*, NaN/inf/non-positive-error
    pixels are masked (weight 0) and zeroed in the copy.  ``Fitter`` calls
    :func:`logging.basicConfig` (an INFO handler on the root logger); the root
    logger's handlers and level are restored afterwards.
Axes and centre
    imcascade's ``x0`` is the *row* coordinate (our ``y``) and ``y0`` the column.  Its
    model is rendered unrotated and then rotated with :func:`scipy.ndimage.rotate`
    about a point half a pixel from ``(x0, y0)`` along both axes, so the rendered
    centre moves with the angle: the centre of the model image is
    ``(y, x) = (x0 + (cos t - sin t - 1) / 2, y0 + (sin t + cos t - 1) / 2)`` for
    imcascade angle ``t`` (measured: the model's light-weighted centroid follows this
    to < 0.002 px; at ``t = 0.5`` the shift is (-0.30, +0.18) px).  The returned
    ``centre`` is that rendered centre, so it compares directly with pegleg's.
Position angle
    At ``t = 0`` imcascade's major axis lies along the rows (our ``y``); ``t`` rotates
    it from +y towards +x.  In pegleg's convention (radians counter-clockwise from
    +x, towards +y) the angle is ``phi = pi/2 - t`` (mod pi).  Verified by rendering
    elongated Gaussians (q = 0.5, phi = 0, 30, 75, 120, 160 deg) with
    :func:`pegleg.deconvolve.gaussians.component_images` and with imcascade's
    ``make_model`` at the mapped parameters: they agree to < 0.5% of the peak
    (the other candidate mappings leave 25-60% residuals).
Fluxes
    With ``log_weight_scale=True`` (imcascade's default) the fitted weights are
    ``log10`` of the component fluxes; they are returned linear.  imcascade bounds each
    weight to ``[log10(F) - 5, log10(F)]`` for a flux guess ``F`` (the unmasked image
    sum): here the range is ``[log10(F) - 7, log10(F) + 1]`` so that noise in the sum
    cannot cap a component.
Sky
    imcascade bounds its sky terms to 10x their initial guesses, i.e. to almost zero
    for a background-subtracted stamp.  Here ``sky0`` is bounded by +-5 x the median
    pixel error (started at 0) and the plane's slopes by that over half the stamp
    size.  imcascade's plane is ``s0 + s1 (row - ny/2) + s2 (col - nx/2)``; it is
    returned in pegleg's basis (constant, d/dy, d/dx about the stamp centre
    ``((ny-1)/2, (nx-1)/2)``).
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from ..exceptions import FitError
from .fit import SKY_MODELS, MultiGaussFit, moments

__all__ = ["fit_band_imcascade", "import_imcascade", "imcascade_centre", "imcascade_angle"]

_SKY_TYPES = {"flat": "flat", "plane": "tilted-plane"}


def import_imcascade():
    """Import imcascade's ``Fitter`` lazily.

    Returns
    -------
    type
        ``imcascade.fitter.Fitter``.

    Raises
    ------
    FitError
        When imcascade is not installed.
    """
    try:
        from imcascade.fitter import Fitter
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise FitError("imcascade is not installed: pip install imcascade") from exc
    return Fitter


@contextlib.contextmanager
def quiet_root_logger():
    """Undo imcascade's :func:`logging.basicConfig` on exit (root handlers and level)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)


def imcascade_angle(phi: float) -> float:
    """Convert between pegleg's position angle and imcascade's ``phi`` (an involution).

    Parameters
    ----------
    phi : float
        Angle in radians in one convention.

    Returns
    -------
    float
        The same orientation in the other convention, in ``[0, pi)``: ``pi/2 - phi``.
    """
    return float(np.mod(np.pi / 2 - phi, np.pi))


def imcascade_centre(x0: float, y0: float, t: float) -> tuple[float, float]:
    """Rendered centre ``(y, x)`` of an imcascade model with parameters ``x0, y0`` and angle ``t``.

    Parameters
    ----------
    x0, y0 : float
        imcascade's centre parameters (row, column).
    t : float
        imcascade's angle (radians).

    Returns
    -------
    (float, float)
        Centre in pegleg's (y, x) pixel coordinates (see the module notes).
    """
    c, s = np.cos(t), np.sin(t)
    return float(x0 + 0.5 * (c - s - 1)), float(y0 + 0.5 * (s + c - 1))


def _imcascade_params(centre: tuple[float, float], t: float) -> tuple[float, float]:
    """Inverse of :func:`imcascade_centre`: ``(x0, y0)`` rendering at ``centre`` (y, x)."""
    c, s = np.cos(t), np.sin(t)
    return float(centre[0] - 0.5 * (c - s - 1)), float(centre[1] - 0.5 * (s + c - 1))


def fit_band_imcascade(image: np.ndarray, error: np.ndarray, mask: np.ndarray, psf_sigma: np.ndarray,
                       psf_weight: np.ndarray, sigma: np.ndarray, *, sky_model: str = "flat",
                       centre: tuple[float, float] | None = None, region: np.ndarray | None = None,
                       max_centre_shift: float = 3.0, log_weight_scale: bool = True,
                       ls_kwargs: dict | None = None) -> MultiGaussFit:
    """Fit one band with imcascade's ``Fitter.run_ls_min`` and return a :class:`MultiGaussFit`.

    Parameters
    ----------
    image, error : arrays (ny, nx)
        Flux per pixel and 1-sigma error (any dtype/byte order; never modified).
    mask : bool array (ny, nx)
        True = pixel not used.  Non-finite pixels and errors <= 0 are masked too.
    psf_sigma, psf_weight : arrays (P,)
        Gaussian-mixture PSF (pixels); weights are normalised to sum 1.
    sigma : array (K,)
        Widths of the galaxy's Gaussian components (pixels, major axis).
    sky_model : {"flat", "none", "plane"}
        imcascade's ``sky_type="flat"``, ``sky_model=False`` or ``"tilted-plane"``.
    centre : (y, x), optional
        Initial centre in pixels; default from the image moments (as pegleg's fitter).
    region : bool array, optional
        Pixels used for the initial moments (default: unmasked pixels above 2 sigma).
    max_centre_shift : float
        Bound on the centre's move from its initial value (pixels).
    log_weight_scale : bool
        imcascade's option: fit log10 of the component fluxes (its default).
    ls_kwargs : dict, optional
        Passed to :func:`scipy.optimize.least_squares` via ``run_ls_min``.

    Returns
    -------
    MultiGaussFit
        In pegleg's conventions: ``centre`` (y, x) of the rendered model, ``phi``
        radians counter-clockwise from +x in ``[0, pi)``, linear component fluxes, sky
        coefficients in pegleg's basis.  ``flux_error`` is the linearised error of the
        total flux from least_squares' Jacobian.  ``info`` holds imcascade's raw
        parameters (``"params"``), ``"nfev"`` and ``"backend": "imcascade"``.

    Raises
    ------
    FitError
        If imcascade is missing, ``sky_model`` is unknown, too few pixels are usable,
        or the source has no positive flux.
    """
    if sky_model not in SKY_MODELS:
        raise FitError(f"sky_model: expected one of {SKY_MODELS}, got {sky_model!r}")
    Fitter = import_imcascade()
    img = np.array(image, dtype=np.float64)  # native byte order, a copy
    err = np.array(error, dtype=np.float64)
    use = ~np.asarray(mask, bool) & np.isfinite(img) & np.isfinite(err) & (err > 0)
    if use.sum() < 10:
        raise FitError(f"only {int(use.sum())} usable pixels: the band is (almost) fully masked")
    img[~use] = 0.0
    weight = np.where(use, 1.0 / np.where(use, err, 1.0) ** 2, 0.0)
    shape = img.shape

    reg = use & (img > 2 * err) if region is None else use & np.asarray(region, bool)
    if reg.sum() < 3:
        reg = use
    mom = moments(np.where(reg, img, 0.0), reg.astype(float))
    c0 = tuple(float(v) for v in (centre if centre is not None else mom["centre"]))
    q0 = float(np.clip(mom["q"], 0.15, 0.99))
    t0 = imcascade_angle(mom["phi"])
    x0, y0 = _imcascade_params(c0, t0)

    sigma = np.asarray(sigma, dtype=np.float64).copy()
    psf_sigma = np.asarray(psf_sigma, dtype=np.float64).copy()
    psf_a = np.asarray(psf_weight, dtype=np.float64)
    psf_a = psf_a / psf_a.sum()

    noise = float(np.median(err[use]))
    flux_guess = float(img[use].sum())
    if not flux_guess > 0:
        flux_guess = float(np.clip(img[use], 0, None).sum())
    if not flux_guess > 0:
        raise FitError("no positive flux in the stamp: nothing to fit")
    init = {"x0": x0, "y0": y0, "q": q0, "phi": t0, "re": max(mom["r50_guess"], 0.5), "flux": flux_guess}
    bounds = {"x0": [x0 - max_centre_shift, x0 + max_centre_shift],
              "y0": [y0 - max_centre_shift, y0 + max_centre_shift],
              "q": [0.05, 1.0], "phi": [t0 - np.pi, t0 + np.pi]}
    if log_weight_scale:
        init["a_max"] = np.log10(flux_guess) + 1.0
        init["a_min"] = init["a_max"] - 8.0
    else:
        init["a_max"], init["a_min"] = 10 * flux_guess, 0.0
    if sky_model != "none":
        slope = 5 * noise / (0.5 * max(shape))
        init.update(sky0=0.0, sky1=0.0, sky2=0.0)
        bounds.update(sky0=[-5 * noise, 5 * noise], sky1=[-slope, slope], sky2=[-slope, slope])

    with quiet_root_logger():
        fitter = Fitter(img, sigma, psf_sigma, psf_a, weight=weight, mask=(~use).astype(int),
                        sky_model=sky_model != "none", sky_type=_SKY_TYPES.get(sky_model, "flat"),
                        log_weight_scale=log_weight_scale, verbose=False, init_dict=init, bounds_dict=bounds)
        # imcascade's initial weights can sit on its own bounds; keep them strictly inside
        lo, hi = fitter.lb, fitter.ub
        fitter.param_init = np.clip(fitter.param_init, lo + 1e-9 * (hi - lo), hi - 1e-9 * (hi - lo))
        params = fitter.run_ls_min(ls_kwargs=dict(ls_kwargs or {}))
    res = fitter.min_res

    K = sigma.size
    a = params[4:4 + K]
    flux = 10.0**a if log_weight_scale else a.copy()
    t = float(params[3])
    cy, cx = imcascade_centre(params[0], params[1], t)
    sky_raw = params[4 + K:]
    if sky_model == "plane":
        s0, s1, s2 = sky_raw
        ny, nx = shape
        sky = np.array([s0 + s1 * ((ny - 1) / 2 - ny / 2) + s2 * ((nx - 1) / 2 - nx / 2), s1, s2])
    else:
        sky = np.asarray(sky_raw, float).copy()
    chi2 = float(np.sum(res.fun**2))
    npix = int(use.sum())
    return MultiGaussFit(sigma=sigma, flux=flux, centre=(cy, cx), q=float(params[2]), phi=imcascade_angle(t),
                         sky=sky, sky_model=sky_model, chi2=chi2, ndof=npix - fitter.Ndof,
                         flux_error=_flux_error(res.jac, flux, K, log_weight_scale, chi2 / max(npix - fitter.Ndof, 1)),
                         success=bool(res.success), message=str(res.message),
                         info={"backend": "imcascade", "params": np.asarray(params, float).copy(),
                               "nfev": int(res.nfev), "initial": mom, "sky_noise": noise})


def _flux_error(jac, flux, K, log_scale: bool, chi2_red: float) -> float:
    """Linearised 1-sigma error of the total flux from least_squares' Jacobian."""
    try:
        cov = np.linalg.pinv(jac.T @ jac) * max(chi2_red, 1.0)
    except (np.linalg.LinAlgError, ValueError):  # pragma: no cover - degenerate Jacobian
        return float("nan")
    g = np.zeros(cov.shape[0])
    g[4:4 + K] = np.log(10.0) * flux if log_scale else 1.0
    return float(np.sqrt(max(g @ cov @ g, 0.0)))
