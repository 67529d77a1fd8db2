"""Continuous stellar-mass profiles, M/L-colour relations and profiles of everything.

:func:`mass_profile`
    The stellar-mass surface-density profile of a ``sedfit`` result in elliptical
    annuli (the geometry of :func:`pegleg.profiles.radial_profile`).  Where the pixels
    are informative -- annuli whose mean S/N in the reference band reaches ``min_snr``
    and that are mostly fitted, contiguous from the centre -- the resolved fit is used
    directly.  Beyond the last such annulus the mass-to-light ratio in ``band`` is
    extrapolated: ``ml_method="constant"`` uses the median M/L of the outermost
    ``n_ml`` reliable annuli; ``ml_method="colour"`` fits ``log M/L = a + b * colour``
    over the reliable annuli and applies it to the colour profile.  The mass profile
    there is M/L x the light profile of ``band``: with ``light_tail="exponential"`` (the
    default) or ``"sersic"``, the measured ``image`` (PSF-corrected after ``deconvolve``)
    out to the last annulus whose light S/N reaches ``tail_snr``, and beyond it an
    exponential (or free-index Sérsic) profile fitted to the measured light over the
    outer half of that range; with ``light_tail="model"`` (or when no tail can be
    fitted) the intrinsic multi-Gaussian ``model`` when the Dataset has one, else
    ``image``.  Uncertainties: the measured part from
    the pixels' posterior widths (``(p84 - p16) / 2`` of the surface density, averaged
    in quadrature in each annulus); the extrapolated part combines the scatter of the M/L
    of the outermost reliable annuli (or the colour-fit residual scatter) with the
    uncertainty of the light there (measured; the tail fit's spread over draws of its
    parameter covariance; for the intrinsic model the spread of its profile over the
    deconvolution's bootstrap draws).  Totals and
    half-mass/half-light radii are integrals of the profiles over the annulus areas
    inside the stamp, with 16/50/84 percentiles from 300 Monte Carlo draws of the
    profile errors and the extrapolated M/L.
:func:`ml_colour`
    M/L in ``band`` against a colour per fitted pixel (or bin), with a running median,
    the scatter about it, a linear fit and a monotonicity measure (Spearman rank
    correlation of the running medians).
:func:`profiles`
    Profiles of mass, SFR, A_V, age, light per band and colours on one radius grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from . import schema as S
from .cosmology import pixel_area_kpc2
from .exceptions import FitError, SchemaError
from .profiles import radial_profile

__all__ = ["mass_profile", "ml_colour", "profiles", "DEFAULT_MIN_SNR", "DEFAULT_TAIL_SNR", "ML_METHODS",
           "LIGHT_TAILS", "ML_COLOUR_SNR_LADDER", "ML_COLOUR_MIN_PIXELS"]

#: Annuli with a mean reference-band S/N per pixel below this are extrapolated.
DEFAULT_MIN_SNR = 5.0
ML_METHODS = ("constant", "colour")
LIGHT_TAILS = ("exponential", "sersic", "model")
#: The light profile beyond the last annulus with this S/N (whole annulus) is a fitted tail.
DEFAULT_TAIL_SNR = 10.0
#: The tail's Sérsic profile is fitted from this fraction of the tail radius outwards.
_TAIL_FIT_INNER = 0.5
#: Relative error floor of the annuli the tail is fitted to (deconvolution systematics).
_TAIL_FLOOR = 0.05
_N_MC = 300
#: ml_colour(min_snr=None) uses the first of these thresholds that leaves enough pixels.
ML_COLOUR_SNR_LADDER = (30.0, 20.0, 10.0)
ML_COLOUR_MIN_PIXELS = 30


def _need(ds: xr.Dataset, names: Sequence[str], what: str) -> None:
    missing = [n for n in names if n not in ds]
    if missing:
        raise SchemaError(f"{what} needs {missing} (run ds.pegleg.sedfit() first); the Dataset has "
                          f"{sorted(map(str, ds.data_vars))}")


def _fitted_map(ds: xr.Dataset) -> np.ndarray:
    flag = ds[S.SEDFIT_FLAG].values
    m = ds[S.LOG_STELLAR_MASS].sel({S.QUANTILE: 0.5}).values
    return ((flag & 5) == 0) & np.isfinite(m)


def _colour_pair(ds, colour):
    bands = [str(b) for b in ds[S.BAND].values]
    if colour is None:
        blue = "F150W" if "F150W" in bands else bands[0]
        red = "F444W" if "F444W" in bands else bands[-1]
        colour = (blue, red)
    if len(colour) != 2 or any(c not in bands for c in colour):
        raise SchemaError(f"colour must be two bands of the Dataset {bands}, got {colour!r}")
    return tuple(colour)


def mass_profile(ds: xr.Dataset, band: str = "F444W", *, min_snr: float = DEFAULT_MIN_SNR,
                 ml_method: str = "constant", colour: Sequence[str] | None = None, n_ml: int = 3,
                 bin_width: float | None = None, r_max: float | None = None, center=None,
                 ellipticity: float | None = None, position_angle: float | None = None,
                 light_tail: str = "exponential", tail_snr: float = DEFAULT_TAIL_SNR,
                 seed: int = 0) -> xr.Dataset:
    """Continuous stellar-mass profile with M/L extrapolation (see the module docstring).

    ``light_tail="exponential"`` (default) continues the light profile beyond the last
    annulus whose ``band`` S/N (whole annulus) reaches ``tail_snr`` with an exponential
    fitted to the measured light over the outer half of that range (``"sersic"``: free
    index); ``"model"`` keeps the intrinsic model (or image) all the way out.  The
    attributes ``light_tail``, ``r_tail`` (arcsec), ``tail_sersic_n`` and
    ``tail_sersic_r_e`` (arcsec) record what was used.

    Returns a Dataset over ``radius`` (arcsec; ``radius_kpc`` too) with
    ``mass_density`` and ``mass_density_error`` (Msun/kpc2), ``light_density``
    (image unit / kpc2), ``ml`` and ``ml_error`` (Msun per image unit), ``reliable``
    and ``extrapolated`` (bool), ``cumulative_mass`` (Msun) and ``cumulative_light``;
    attributes ``log_mass_total``, ``r50_mass``, ``r50_light`` (arcsec; each 16/50/84),
    ``r50_mass_kpc``, ``r_reliable`` (arcsec), ``ml_extrapolated``, ``ml_method``, and
    the geometry.
    """
    _need(ds, [S.STELLAR_MASS_DENSITY, S.LOG_STELLAR_MASS, S.SEDFIT_FLAG, S.SNR, S.IMAGE], "mass_profile")
    if ml_method not in ML_METHODS:
        raise SchemaError(f"ml_method must be one of {ML_METHODS}, got {ml_method!r}")
    if light_tail not in LIGHT_TAILS:
        raise SchemaError(f"light_tail must be one of {LIGHT_TAILS}, got {light_tail!r}")
    tail_snr = S.check_positive(tail_snr, "tail_snr")
    bands = [str(b) for b in ds[S.BAND].values]
    if band not in bands:
        raise SchemaError(f"band {band!r} is not in the Dataset (bands: {bands})")
    z = ds.attrs.get(S.REDSHIFT)
    if z is None:
        raise SchemaError("mass_profile needs attrs['redshift'] for physical areas")
    fitted = _fitted_map(ds)
    if not fitted.any():
        raise FitError("mass_profile: no fitted pixel (sedfit_flag marks every pixel)")
    ps = float(ds.attrs[S.PIXEL_SCALE])
    area_pix = pixel_area_kpc2(ps, float(z))
    geo = dict(center=center, ellipticity=ellipticity, position_angle=position_angle, bin_width=bin_width,
               r_max=r_max)

    smd = ds[S.STELLAR_MASS_DENSITY]
    work = xr.Dataset(
        {"mass": (smd.sel({S.QUANTILE: 0.5}).where(fitted)).assign_attrs(units="Msun/kpc2"),
         "mass_error": (0.5 * (smd.sel({S.QUANTILE: 0.84}) - smd.sel({S.QUANTILE: 0.16}))).where(fitted)
         .assign_attrs(units="Msun/kpc2"),
         "fitted": ((S.Y, S.X), fitted.astype(float), {"units": "1"}),
         "snr": ds[S.SNR].assign_attrs(units="1")},
        attrs=ds.attrs)
    for v in (S.IMAGE, S.ERROR, S.MASK, S.MODEL, S.ERROR_OBSERVED, S.MGM_SIGMA, S.MGM_FLUX_DRAWS):
        if v in ds:
            work[v] = ds[v]
    if S.CENTRE_Y in ds:
        for v in (S.CENTRE_Y, S.CENTRE_X, S.AXIS_RATIO, S.POSITION_ANGLE):
            work[v] = ds[v]
    pm = radial_profile(work, "mass", **geo)
    attrs_geo = {k: pm.attrs[k] for k in ("centre_y", "centre_x", "axis_ratio", "position_angle",
                                          "geometry_source") if k in pm.attrs}
    geo.update(center=(pm.attrs["centre_y"], pm.attrs["centre_x"]), ellipticity=1 - pm.attrs["axis_ratio"],
               position_angle=pm.attrs["position_angle"])
    pf = radial_profile(work, "fitted", **geo)
    psnr = radial_profile(work, "snr", **geo)
    pl = radial_profile(work, S.IMAGE, band=band, **geo)
    r = pm["radius"].values
    area = pm["area"].values * area_pix                     # kpc^2 of each annulus inside the stamp
    light = np.asarray(pl["profile"].values).reshape(-1) / area_pix
    light_err = np.asarray(pl["profile_error"].values).reshape(-1) / area_pix
    # the light beyond the reliable radius (light_ext): the measured image where its annulus
    # S/N reaches tail_snr and a fitted tail beyond; without a tail, the intrinsic (PSF-free)
    # model when the Dataset has one (deconvolve): smooth where the pixels are noise-dominated
    tail = None
    if light_tail != "model":
        tail = _sersic_tail(r, light, light_err, tail_snr, rng_seed=seed,
                            fixed_n=1.0 if light_tail == "exponential" else None)
    if tail is not None:
        inside = r <= tail["r_start"]
        light_ext = np.where(inside, light, tail["light"])
        light_ext_err = np.where(inside, light_err, tail["light_error"])
        light_source = f"image to {tail['r_start']:.4g} arcsec, {light_tail} tail beyond"
    elif S.MODEL in work:
        plm = radial_profile(work, S.MODEL, band=band, **geo)
        light_ext = np.asarray(plm["profile"].values).reshape(-1) / area_pix
        # the model's spread over the deconvolution's bootstrap draws (0 without draws)
        light_ext_err = np.nan_to_num(np.asarray(plm["profile_error"].values).reshape(-1)) / area_pix
        light_source = "model"
    else:
        light_ext, light_ext_err, light_source = None, None, "image"
    mass = pm["profile"].values
    mass_err = pm["profile_error"].values
    frac_fitted = pf["profile"].values
    ok = (frac_fitted >= 0.5) & (psnr["profile"].values >= min_snr) & np.isfinite(mass) & (light > 0)
    # reliable annuli: contiguous from the centre
    reliable = np.zeros_like(ok)
    for i, v in enumerate(ok):
        if not v:
            break
        reliable[i] = True
    if not reliable.any():
        raise FitError(f"mass_profile: no reliable annulus (mean S/N >= {min_snr} and >= 50% fitted) at the "
                       f"centre; lower min_snr or bin the data (ds.pegleg.bin)")
    with np.errstate(divide="ignore", invalid="ignore"):
        ml = mass / light
        ml_err = ml * np.sqrt((mass_err / mass) ** 2 + (light_err / light) ** 2)
    idx = np.flatnonzero(reliable)
    outer = idx[-min(n_ml, idx.size):]
    colour_pair = None
    if ml_method == "constant":
        ml_ext = float(np.median(ml[outer]))
        scatter = float(np.std(np.log10(ml[outer]))) if outer.size > 1 else 0.0
        ml_out = np.full(r.size, ml_ext)
        log_ml_sig = np.full(r.size, max(scatter, float(np.median(ml_err[outer] / ml[outer])) / np.log(10)))
    else:
        colour_pair = _colour_pair(ds, colour)
        pb = radial_profile(work, S.IMAGE, band=colour_pair[0], **geo)
        pr = radial_profile(work, S.IMAGE, band=colour_pair[1], **geo)
        with np.errstate(divide="ignore", invalid="ignore"):
            col = -2.5 * np.log10(np.asarray(pb["profile"].values).reshape(-1) /
                                  np.asarray(pr["profile"].values).reshape(-1))
        use = idx[np.isfinite(col[idx]) & (ml[idx] > 0)]
        if use.size < 3:
            raise FitError("ml_method='colour' needs >= 3 reliable annuli with a finite colour")
        b, a = np.polyfit(col[use], np.log10(ml[use]), 1)
        resid = np.log10(ml[use]) - (a + b * col[use])
        ml_out = 10 ** (a + b * np.where(np.isfinite(col), col, np.nanmedian(col[use])))
        ml_ext = float(np.median(ml_out[~reliable])) if (~reliable).any() else float(ml_out[idx[-1]])
        log_ml_sig = np.full(r.size, float(np.std(resid)) if use.size > 2 else 0.0)
    extrap = ~reliable
    if light_ext is not None:
        light_err = np.where(reliable, light_err, light_ext_err)
        light = np.where(reliable, light, light_ext)
    dens = np.where(reliable, mass, ml_out * light)
    dens_err = np.where(reliable, mass_err, np.abs(dens) * np.sqrt((np.log(10) * log_ml_sig) ** 2 +
                                                                     (light_err / np.where(light > 0, light, np.inf)) ** 2))
    dens = np.where(np.isfinite(dens), dens, 0.0)
    dens_err = np.where(np.isfinite(dens_err), dens_err, 0.0)
    cum_mass = np.cumsum(dens * area)
    cum_light = np.cumsum(np.where(np.isfinite(light), light, 0.0) * area)

    # Monte Carlo: profile errors (independent annuli) and one M/L shift for the extrapolated part
    rng = np.random.default_rng(seed)
    edges = np.concatenate([[0.0], pm["radius_outer"].values])
    tot, r50m, r50l = [], [], []
    for _ in range(_N_MC):
        shift = 10 ** (rng.normal(0, log_ml_sig[0]))
        d = np.where(reliable, dens + dens_err * rng.standard_normal(r.size),
                     dens * shift + np.where(light > 0, ml_out * light_err, 0) * rng.standard_normal(r.size))
        lt = np.where(np.isfinite(light), light + np.nan_to_num(light_err) * rng.standard_normal(r.size), 0.0)
        cm, cl = np.cumsum(d * area), np.cumsum(lt * area)
        tot.append(cm[-1])
        r50m.append(_half(cm, edges))
        r50l.append(_half(cl, edges))
    pct = [16, 50, 84]
    kpa = np.sqrt(area_pix) / ps
    out = xr.Dataset(
        {"mass_density": ("radius", dens, {"units": "Msun/kpc2", "long_name": "stellar-mass surface density "
                                           "(resolved fit where reliable, M/L x light beyond)"}),
         "mass_density_error": ("radius", dens_err, {"units": "Msun/kpc2", "long_name": "1-sigma uncertainty"}),
         "light_density": ("radius", light, {"units": f"{S.image_units(ds)}/kpc2",
                                             "long_name": f"{band} surface brightness"}),
         "ml": ("radius", ml_out if ml_method == "colour" else np.where(reliable, ml, ml_ext),
                {"units": f"Msun/{S.image_units(ds)}", "long_name": f"stellar mass-to-light ratio in {band}"}),
         "ml_measured": ("radius", ml, {"units": f"Msun/{S.image_units(ds)}",
                                        "long_name": f"M/L in {band} from the resolved fit"}),
         "ml_error": ("radius", ml_err, {"units": f"Msun/{S.image_units(ds)}", "long_name": "1-sigma uncertainty"}),
         "reliable": ("radius", reliable, {"units": "1", "long_name": "annulus uses the resolved fit"}),
         "extrapolated": ("radius", extrap, {"units": "1", "long_name": "annulus uses M/L x light"}),
         "cumulative_mass": ("radius", cum_mass, {"units": "Msun", "long_name": "stellar mass within the outer radius"}),
         "cumulative_light": ("radius", cum_light, {"units": S.image_units(ds), "long_name": f"{band} flux within the outer radius"}),
         "snr": ("radius", psnr["profile"].values, {"units": "1", "long_name": "mean S/N per pixel in the annulus"}),
         "fitted_fraction": ("radius", frac_fitted, {"units": "1", "long_name": "fraction of the annulus fitted"})},
        coords={"radius": pm["radius"], "radius_inner": pm["radius_inner"], "radius_outer": pm["radius_outer"],
                "radius_kpc": ("radius", r * kpa, {"units": "kpc", "long_name": "annulus centre, proper distance"})},
        attrs={**attrs_geo, "band": band, "ml_method": ml_method, "min_snr": float(min_snr), "n_ml": int(n_ml),
               "r_reliable": float(edges[idx[-1] + 1]), "ml_extrapolated": ml_ext,
               "ml_extrapolated_log_sigma": float(log_ml_sig[0]),
               "log_mass_total": np.log10(np.percentile(np.maximum(tot, 1e-30), pct)),
               "r50_mass": np.percentile(r50m, pct), "r50_light": np.percentile(r50l, pct),
               "r50_mass_kpc": np.percentile(r50m, pct) * kpa, "redshift": float(z),
               "pixel_scale": ps, "colour": ",".join(colour_pair) if colour_pair else "",
               "extrapolated_light": light_source, "light_tail": light_tail if tail is not None else "model",
               "tail_snr": float(tail_snr),
               "r_tail": float(tail["r_start"]) if tail is not None else float("nan"),
               "tail_sersic_n": float(tail["n"]) if tail is not None else float("nan"),
               "tail_sersic_r_e": float(tail["r_e"]) if tail is not None else float("nan")},
    )
    return out


def _sersic_tail(r, light, light_err, tail_snr: float, rng_seed=0, fixed_n=None):
    """A Sérsic (``fixed_n=1``: exponential) light profile for the annuli beyond the measured ones.

    ``light``/``light_err``: the measured (image) profile and its error per annulus at
    radii ``r``.  The tail starts after the last annulus with S/N >= ``tail_snr`` counted
    outwards from the annulus of peak S/N (the centre of a PSF-corrected image can be
    noisier than its surroundings).  The profile is fitted in log intensity to the annuli
    from ``_TAIL_FIT_INNER`` of that radius out to it, with relative errors floored at
    ``_TAIL_FLOOR``; its error is the spread over 300 draws of the fit's parameter
    covariance (scaled by the reduced chi2 when above 1).  Returns None (keep the model)
    when fewer than 4 annuli can be fitted, the tail would start at the last annulus, or
    the fit fails.
    """
    from scipy import optimize, special

    with np.errstate(divide="ignore", invalid="ignore"):
        snr = light / light_err
    good = np.isfinite(snr) & (snr >= tail_snr) & (light > 0)
    if not good.any():
        return None
    # the last annulus before the S/N first drops below tail_snr outside its peak (the
    # centre of a PSF-corrected image can be noisier than the annuli around it)
    j = int(np.nanargmax(np.where(np.isfinite(snr), snr, -np.inf)))
    if not good[j]:
        return None
    while j + 1 < good.size and good[j + 1]:
        j += 1
    if j < 3 or j >= r.size - 1:
        return None
    fit = np.flatnonzero(good[:j + 1] & (r[:j + 1] >= _TAIL_FIT_INNER * r[j]))
    if fit.size < 4:
        return None
    x, y = r[fit], np.log(light[fit])
    # relative errors with a floor for the deconvolution's systematic wiggles (measured 5-10%)
    sy = np.hypot(light_err[fit] / light[fit], _TAIL_FLOOR)

    def model(p, rr):
        log_ie, log_re = p[:2]
        n = np.exp(p[2]) if fixed_n is None else fixed_n
        b = special.gammaincinv(2.0 * n, 0.5)
        return log_ie - b * ((rr / np.exp(log_re)) ** (1.0 / n) - 1.0)

    p0 = [y[len(y) // 2], np.log(max(r[j] / 2, 1e-6)), 0.0]
    lo, hi = [-np.inf, np.log(r[0] / 10 + 1e-12), np.log(0.2)], [np.inf, np.log(r[-1] * 100), np.log(10.0)]
    if fixed_n is not None:
        p0, lo, hi = p0[:2], lo[:2], hi[:2]
    try:
        res = optimize.least_squares(lambda p: (model(p, x) - y) / sy, p0, bounds=(lo, hi))
    except (ValueError, FloatingPointError):
        return None
    if not res.success or not np.all(np.isfinite(res.x)):
        return None
    out_light = np.exp(model(res.x, r))
    rel = np.zeros(r.size)
    try:
        J = res.jac
        dof = max(x.size - len(p0), 1)
        cov = np.linalg.pinv(J.T @ J) * max(2.0 * res.cost / dof, 1.0)
        draws = np.random.default_rng(rng_seed).multivariate_normal(res.x, cov, 300, method="eigh")
        sh = np.exp(np.array([model(d, r) for d in draws]))
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.nanstd(np.log(sh), axis=0)
    except (np.linalg.LinAlgError, ValueError):
        pass
    out_err = out_light * rel
    n = float(np.exp(res.x[2])) if fixed_n is None else float(fixed_n)
    return {"light": out_light, "light_error": out_err, "r_start": float(r[j]), "n": n, "r_e": float(np.exp(res.x[1]))}


def _half(cum: np.ndarray, edges: np.ndarray) -> float:
    """Radius where the cumulative curve ``cum`` (at the outer ``edges[1:]``) reaches half its end value."""
    c = np.concatenate([[0.0], cum])
    half = 0.5 * c[-1]
    i = int(np.searchsorted(c, half))
    if i <= 0 or i >= c.size:
        return float("nan")
    t = (half - c[i - 1]) / (c[i] - c[i - 1]) if c[i] > c[i - 1] else 0.0
    return float(edges[i - 1] + t * (edges[i] - edges[i - 1]))


def ml_colour(ds: xr.Dataset, band: str = "F444W", colour: Sequence[str] | None = None, *,
              min_snr: float | None = None, n_bins: int = 8) -> xr.Dataset:
    """M/L in ``band`` vs a colour for every fitted pixel (see the module docstring).

    Pixels enter when fitted and at S/N >= ``min_snr`` in ``band`` and both colour bands.
    ``min_snr=None`` (default) takes the first of :data:`ML_COLOUR_SNR_LADDER` (30, 20,
    10) that leaves at least :data:`ML_COLOUR_MIN_PIXELS` pixels: posterior-median M/L of
    pixels at S/N 10-30 are pulled towards the prior's typical value, which flattens the
    slope (measured on the colour-gradient synthetic galaxy: 0.73, 0.81 and 0.93 of the
    true slope at S/N >= 10, 20 and 30).

    Returns a Dataset over ``pixel`` (``colour``, ``log_ml``, ``y``, ``x``) and over
    ``colour_bin`` (``running_median``, ``running_scatter``); attributes ``slope``,
    ``slope_error``, ``intercept`` (linear fit of log M/L on colour), ``scatter``
    (rms about the running median, dex), ``spearman`` (monotonicity of the running
    medians, -1..1), ``colour`` and ``min_snr`` (the threshold used).
    """
    from scipy import stats

    _need(ds, [S.LOG_STELLAR_MASS, S.SEDFIT_FLAG, S.IMAGE], "ml_colour")
    blue, red = _colour_pair(ds, colour)
    bands = [str(b) for b in ds[S.BAND].values]
    if band not in bands:
        raise SchemaError(f"band {band!r} is not in the Dataset (bands: {bands})")
    fitted = _fitted_map(ds)
    img = ds[S.IMAGE]
    fb, fr, fl = (img.sel({S.BAND: b}).values for b in (blue, red, band))
    eb, er, el = (ds[S.ERROR].sel({S.BAND: b}).values for b in (blue, red, band))
    # S/N cut in every band used: noisy colours and prior-dominated M/L flatten the slope
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.fmin(np.fmin(fb / eb, fr / er), fl / el)
    snr = np.where(fitted & np.isfinite(snr), snr, -np.inf)
    if min_snr is None:
        ladder = ML_COLOUR_SNR_LADDER
        min_snr = next((t for t in ladder if np.sum(snr >= t) >= ML_COLOUR_MIN_PIXELS), ladder[-1])
    else:
        min_snr = S.check_positive(min_snr, "min_snr")
    use = snr >= min_snr
    if use.sum() < 5:
        raise FitError(f"ml_colour: only {int(use.sum())} pixels with positive fluxes and S/N >= {min_snr}")
    col = -2.5 * np.log10(fb[use] / fr[use])
    logml = ds[S.LOG_STELLAR_MASS].sel({S.QUANTILE: 0.5}).values[use] - np.log10(fl[use])
    yy, xx = np.nonzero(use)
    edges = np.quantile(col, np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, col, side="right") - 1, 0, n_bins - 1)
    med = np.array([np.median(logml[which == k]) if np.any(which == k) else np.nan for k in range(n_bins)])
    cen = np.array([np.median(col[which == k]) if np.any(which == k) else np.nan for k in range(n_bins)])
    resid = logml - np.interp(col, cen[np.isfinite(med)], med[np.isfinite(med)])
    scat = np.array([np.std(resid[which == k]) if np.sum(which == k) > 1 else np.nan for k in range(n_bins)])
    fit = stats.linregress(col, logml)
    rho = stats.spearmanr(cen[np.isfinite(med)], med[np.isfinite(med)]).statistic if np.isfinite(med).sum() > 2 else np.nan
    return xr.Dataset(
        {"colour": ("pixel", col, {"units": "mag", "long_name": f"{blue} - {red}"}),
         "log_ml": ("pixel", logml, {"units": f"log10(Msun/{S.image_units(ds)})", "long_name": f"log M*/L in {band}"}),
         "y": ("pixel", yy, {"units": "pixel", "long_name": "row"}),
         "x": ("pixel", xx, {"units": "pixel", "long_name": "column"}),
         "running_median": ("colour_bin", med, {"units": f"log10(Msun/{S.image_units(ds)})", "long_name": "running median of log M/L"}),
         "running_scatter": ("colour_bin", scat, {"units": "dex", "long_name": "scatter about the running median"})},
        coords={"colour_bin": ("colour_bin", cen, {"units": "mag", "long_name": "median colour in the bin"})},
        attrs={"slope": float(fit.slope), "slope_error": float(fit.stderr), "intercept": float(fit.intercept),
               "scatter": float(np.std(resid)), "spearman": float(rho), "colour": f"{blue}-{red}", "band": band,
               "min_snr": float(min_snr)},
    )


def profiles(ds: xr.Dataset, quantities: Sequence[str] | None = None, *, colours: Sequence[Sequence[str]] | None = None,
             bands: Sequence[str] | None = None, **geometry) -> xr.Dataset:
    """Profiles of the sedfit maps, the light per band and colours on one radius grid.

    ``quantities`` default: every present one of ``stellar_mass_density``,
    ``sfr_density``, ``av``, ``log_age_mw``, ``log_ssfr``, ``log_metallicity`` (medians);
    ``bands``: light profiles (default all); ``colours``: band pairs (default
    ``[("F150W", "F444W")]`` when present).  ``geometry`` goes to ``radial_profile``
    (``center``, ``ellipticity``, ``position_angle``, ``bin_width``, ``r_max``); one
    geometry (that of the first profile) is used for all.
    """
    default = [S.STELLAR_MASS_DENSITY, S.SFR_DENSITY, S.AV, S.LOG_AGE_MW, S.LOG_SSFR, S.LOG_METALLICITY]
    quantities = [q for q in default if q in ds] if quantities is None else list(quantities)
    _need(ds, quantities, "profiles")
    bands = [str(b) for b in ds[S.BAND].values] if bands is None else list(bands)
    if colours is None:
        colours = [("F150W", "F444W")] if {"F150W", "F444W"} <= set(bands) else []
    out = {}
    base = None
    geo = dict(geometry)
    for q in quantities:
        da = ds[q]
        work = ds.copy()
        if S.QUANTILE in da.dims:
            work[q] = da.sel({S.QUANTILE: 0.5}).assign_attrs(da.attrs)
        p = radial_profile(work, q, **geo)
        if base is None:
            base = p
            geo.update(center=(p.attrs["centre_y"], p.attrs["centre_x"]), ellipticity=1 - p.attrs["axis_ratio"],
                       position_angle=p.attrs["position_angle"], bin_width=p.attrs["bin_width"], r_max=p.attrs["r_max"])
        out[q] = p["profile"].assign_attrs(p["profile"].attrs)
    pl = radial_profile(ds, S.IMAGE, band=bands, **geo)
    if base is None:
        base = pl
    out["light"] = pl["profile"]
    for blue, red in colours:
        fb = pl["profile"].sel({S.BAND: blue}).values
        fr = pl["profile"].sel({S.BAND: red}).values
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"colour_{blue}_{red}"] = xr.DataArray(-2.5 * np.log10(fb / fr), dims="radius",
                                                       attrs={"units": "mag", "long_name": f"{blue} - {red}"})
    res = xr.Dataset({k: v.drop_vars([c for c in v.coords if c not in ("radius", S.BAND)], errors="ignore")
                      for k, v in out.items()})
    res = res.assign_coords({c: base[c] for c in ("radius", "radius_inner", "radius_outer") if c in base.coords})
    res.attrs = {k: base.attrs[k] for k in ("centre_y", "centre_x", "axis_ratio", "position_angle", "bin_width",
                                            "r_max", "pixel_scale") if k in base.attrs}
    return res
