"""Synthetic multi-band galaxies with known truth, for tests, demos and validation.

:func:`galaxy` returns ``(observed, truth)``: ``observed`` is an ordinary stamp Dataset
(:mod:`pegleg.schema`) and ``truth`` holds the intrinsic model it was made from.
:func:`write_field` pastes many physical galaxies into per-band FITS mosaics and writes
a catalogue, a truth table and a configuration for :func:`pegleg.pipeline.run_catalog`
(``scripts/make_synthetic_field.py`` is its command line).

Design choices
==============
Geometry
    All components share one centre: by default the stamp centre ``((ny-1)/2, (nx-1)/2)``
    plus a sub-pixel offset of ``(+0.3, -0.2)`` pixels in ``(y, x)``, so that nothing
    relies on the model being symmetric on the pixel grid.  The galaxy has one axis
    ratio ``q`` (minor/major, default 0.7) and position angle ``pa`` (degrees, default
    30) that components inherit unless they override them.  **PA convention**: the
    angle of the major axis measured counter-clockwise from the +x (column) axis
    towards the +y (row) axis, i.e. counter-clockwise on an ``origin="lower"`` display.
    It is *not* the astronomical east-of-north angle.  The elliptical radius of a point
    at offset ``(dx, dy)`` is ``sqrt(x'^2 + (y'/q)^2)`` with ``x' = dx cos pa + dy sin pa``,
    ``y' = -dx sin pa + dy cos pa``; it equals the semi-major axis of the ellipse through
    the point, and all radii (``r_e``, ``r50``, ``r80``) are semi-major-axis radii.
Components
    ``bulge``: Sersic n = 4, r_e = 0.06" at 4.44 um, red SED ``f_nu ~ lambda^1.5``,
    1.0 uJy at 4.44 um, size gradient alpha = 0.05.
    ``disk``: Sersic n = 1, r_e = 0.18", blue SED ``f_nu ~ lambda^-0.3``, 1.5 uJy,
    alpha = 0.2.
    ``clumps`` (``clumps=N``): N small round Gaussians (FWHM 0.05"), bluer still
    (``f_nu ~ lambda^-1``), 0.05 uJy each at 4.44 um (scattered 0.5-1.5x by the seed),
    placed by the seed within the disk at elliptical radii 0.3-1.5 disk r_e (always
    inside 0.6 of the truncation radius).  They are one component (one SED) named
    ``"clumps"``; their positions and fluxes are in ``truth.attrs["components"]``.
    Override any parameter with a dict (``bulge={"flux": 0}``), a :class:`Component`,
    or drop a component with ``False``.  The default total is ~2.5 uJy at F444W.
SEDs
    Each component's total flux per band is a power law in ``f_nu`` versus pivot
    wavelength, normalised at :data:`REFERENCE_WAVELENGTH` = 4.44 um:
    ``F(band) = flux * (lambda / 4.44 um)^slope``.  Pass ``sed=callable(component_name,
    bands, wavelengths) -> fluxes`` (one value per band, in ``units``) to replace the
    power laws, or ``physical=True`` for emulator SEDs (next section).
Physical SEDs
    With ``physical=True`` every component's SED comes from an SED emulator
    (``emulator=``; default :func:`pegleg.sed.load_emulator` ``("default")``, loaded only
    then) evaluated at the component's formed mass and the galaxy's ``redshift`` (which
    must be given).  A component dict may then carry ``"log_mass"`` (log10 of the
    component's total *formed* stellar mass, Msun) and ``"sed"`` (a dict of the other
    emulator parameters, ``emulator.param_names`` minus ``log_mass_formed`` and
    ``redshift``); ``"flux"`` and ``"slope"`` are not allowed (the emulator sets
    them).  Defaults, :data:`PHYSICAL_DEFAULTS` (``dsfr_k = log10(SFR_k / SFR_{k+1})``,
    bin 1 the youngest):

    * bulge: log_mass 10.3, log_metallicity 0.0, av 0.2, dsfr1..6 = -0.4 (star
      formation declined: old, red, metal-rich, little dust; log_sfr100 ~ -1.3,
      log_age_mw ~ 9.57 at z = 1);
    * disk: log_mass 9.9, log_metallicity -0.5, av 0.8, dsfr = 0 (constant SFH:
      younger and dustier; log_sfr100 ~ 0.14, log_age_mw ~ 9.46 at z = 1);
    * clumps: log_mass 7.0 *per clump* (mean; each clump gets 0.5-1.5 x, as for the
      flux of power-law clumps), log_metallicity -0.7, av 0.3, log_u -2.0,
      dsfr = +1.0 (rising SFH: young, log_age_mw ~ 7.6 at z = 1);
    * all: delta 0 (Calzetti-like curve), eta 2 (stars younger than 10 Myr see
      2 x av); bulge and disk log_u -2.5.

    Parameters neither given nor in the table (another emulator's) take the middle of
    the emulator's bounds.  Unknown names, values outside the emulator's bounds and a
    missing ``redshift`` raise :class:`~pegleg.exceptions.SchemaError`.  The size
    gradient ``alpha`` defaults to 0 in physical mode, so each component has *one*
    normalised profile ``P_c`` (summing to 1 over the rendered region) in every band,
    and each pixel's intrinsic flux is exactly ``sum_c P_c F_c(band)``, i.e. the sum of
    emulator SEDs of masses ``M_c P_c`` (the emulator scales exactly with mass).  The
    colour gradient then comes from the bulge/disk mix alone.  (With an explicit
    ``alpha != 0`` the band images follow the power law in size, while the mass maps
    use the profile at 4.44 um: no longer an exact per-pixel truth.)
    The truth gains (y, x) maps with the units of :data:`pegleg.schema.PHYSICAL`:
    ``log_stellar_mass`` = ``log10(sum_c M*_c P_c)`` (``M*_c`` the emulator's
    surviving stellar mass), ``log_sfr100`` and ``log_sfr10`` (same, with the
    component SFRs), ``log_age_mw`` = ``log10(sum_c w_c 10^age_c)`` and ``av`` =
    ``sum_c w_c av_c`` with ``w_c = M*_c P_c / sum M*_c P_c`` (the emulator's
    per-component mass-weighted values), and ``stellar_mass_density`` /
    ``sfr_density`` = ``10^log_stellar_mass`` / ``10^log_sfr100`` over the proper pixel
    area ``(pixel_scale x kpc/arcsec)^2`` for astropy ``FlatLambdaCDM(H0=70,
    Om0=0.3)`` (the emulator's cosmology).  Masses and SFRs are floored at
    :data:`PHYSICAL_FLOOR` = 1e-30 before the log10 (pixels beyond the truncation
    radius: -30, never -inf or NaN; the densities use the same floored values), and
    where the floored mass is the floor, ``log_age_mw`` and ``av`` are the galaxy's
    integrated mass-weighted values.  The maps cover the stamp; their sum is the total
    of the truncated model (``log_stellar_mass_total``, ``log_sfr100_total`` attrs)
    whenever the truncation radius lies inside the stamp (the default).
SED gradients (single-population pixels)
    With ``physical=True`` a bulge or disk dict may add ``"sed_outer"`` (emulator
    parameters, as ``"sed"``; unset ones equal the central values) and
    ``"gradient_radius"`` (arcsec, default 2 ``r_e``): the component's SED parameters
    then go linearly in the *galaxy's* elliptical radius from ``"sed"`` at the centre to
    ``"sed_outer"`` at ``gradient_radius`` and stay there beyond.  The component keeps
    one mass profile (``log_mass`` formed, its Sersic shape); every sub-pixel of the
    render grid gets the SED of its radius (a 257-step radial table of the emulator), so
    each pixel is one stellar population up to the variation across the pixel.  With
    ``disk=False`` the galaxy has a colour and M/L gradient *without* composite pixels
    (the bulge + disk default mixes two populations in every pixel, which biases
    single-population pixel fits: outshining).  The truth maps, ``component_flux`` and
    the component's ``<name>_log_stellar_mass`` ... attributes integrate the gradient;
    ``<name>_sed_params`` holds the central and ``<name>_sed_params_outer`` the outer
    parameters, ``<name>_gradient_radius`` the radius.
Colour gradients
    Sizes scale with wavelength as ``r_e(lambda) = r_e * (lambda / 4.44 um)^-alpha``,
    so blue bands are more extended; with the default bulge fraction rising to the
    red, ``r50`` falls with wavelength.
Truncation
    Every profile is multiplied by a smooth cosine taper of its own elliptical radius,
    1 inside 0.8 ``R_t`` and 0 beyond ``R_t``; the default ``R_t`` is 0.9 x half the
    stamp's short side (in arcsec).  The whole intrinsic model therefore lies in the
    stamp and the total flux of the truncated model is well defined; ``flux`` values
    are *truncated* totals.  (A truncated profile's half-light radius is slightly
    smaller than the untruncated ``r_e``: the truth ``r50`` is measured, not assumed.)
Rendering
    The model is integrated over pixels, not sampled at pixel centres: 8 x 8
    sub-pixels everywhere, 32 x 32 in the central 7 x 7 pixels and 96 x 96 in the
    central 3 x 3 pixels (the n = 4 cusp).  The numerical total of each component
    agrees with a 1-D quadrature of the truncated profile to < 0.1 % (recorded as
    ``truth.attrs["render_flux_error"]``); each component is then normalised so that
    its rendered total equals the requested flux exactly.  The model is rendered on
    the stamp padded by the largest PSF half-size, convolved band by band with
    :func:`scipy.signal.fftconvolve`, and cropped to ``shape``; light the PSF scatters
    across the stamp edge is lost (and gained) just as in a real cutout.
PSFs
    Default :func:`pegleg.psf.models.jwst_like_psf` per band at ``pixel_scale`` (its
    FWHM grows with wavelength); ``psf=`` a mapping band -> array, a (band, n, n) array
    or one (n, n) array uses given PSFs instead.  ``truth["psf_fwhm"]`` is the FWHM of
    the continuous PSF (measured on a finely sampled render for default PSFs, with
    :func:`~pegleg.psf.models.measure_fwhm` for given ones).
Noise
    ``depth`` is the 1-sigma Gaussian noise per pixel (in ``units``): a number, or a
    mapping/sequence per band.  By default one depth for all bands such that the
    brightest band's peak pixel (noise-free, PSF-convolved) has S/N = ``snr_peak``
    (100).  ``noise=False`` gives a noise-free image whose ``error`` is still the
    depth.  Noise comes from ``numpy.random.default_rng`` seeded by ``seed`` (clump
    placement uses an independent stream spawned from the same seed).  A flat ``sky``
    (number or per-band mapping) is added to the observed image only.
Outputs
    ``observed``: :func:`pegleg.schema.from_arrays` Dataset (image, error = depth,
    mask all False, psf, redshift, ``source_id = "synthetic-<seed>"``, and a
    ``segmentation`` map: 1 where the noise-free convolved image of the reddest band
    exceeds 2 x its depth, dilated by one pixel) with history step ``"synth.galaxy"``.
    ``truth``: see :func:`galaxy`.  All flux-like inputs and outputs are in ``units``;
    the built-in defaults are defined in uJy and converted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from scipy import ndimage, signal, special

from . import filters as _filters
from . import schema
from .exceptions import EmulatorError, PSFError, SchemaError
from .psf import models as _psf_models

__all__ = [
    "galaxy",
    "write_field",
    "FIELD_BANDS",
    "Component",
    "Clumps",
    "DEFAULT_BULGE",
    "DEFAULT_DISK",
    "DEFAULT_CLUMPS",
    "REFERENCE_WAVELENGTH",
    "PHYSICAL_DEFAULTS",
    "PHYSICAL_FLOOR",
]

#: Wavelength (micron) at which component fluxes and sizes are specified.
REFERENCE_WAVELENGTH = 4.44

_OVERSAMPLE = ((8, None), (32, 3), (96, 1))  # (sub-pixels per axis, half-size of the block in pixels)
_BIN = 0.005  # growth-curve bin width, pixels
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclasses.dataclass(frozen=True)
class Component:
    """One smooth Sersic component of a synthetic galaxy.

    Parameters
    ----------
    name : str
        Component name (``"bulge"``, ``"disk"``, ...).
    n : float
        Sersic index (0.3-10).
    r_e : float
        Half-light semi-major axis at :data:`REFERENCE_WAVELENGTH`, arcsec (untruncated
        profile).
    flux : float
        Total (truncated) flux at :data:`REFERENCE_WAVELENGTH`, in the ``units`` of
        :func:`galaxy` (the built-in defaults are uJy).
    slope : float
        SED power law ``f_nu ~ lambda^slope``.
    alpha : float
        Size gradient ``r_e(lambda) = r_e (lambda / 4.44 um)^-alpha``.
    q : float or None
        Axis ratio (0 < q <= 1); None = the galaxy's.
    pa : float or None
        Position angle, degrees counter-clockwise from +x; None = the galaxy's.
    """

    name: str
    n: float = 1.0
    r_e: float = 0.18
    flux: float = 1.0
    slope: float = 0.0
    alpha: float = 0.0
    q: float | None = None
    pa: float | None = None


@dataclasses.dataclass(frozen=True)
class Clumps:
    """Star-forming clumps: small round Gaussians placed by the seed within the disk.

    Parameters
    ----------
    number : int
        How many clumps.
    flux : float
        Mean flux of one clump at :data:`REFERENCE_WAVELENGTH` (``units``); each clump
        gets 0.5-1.5 x this, drawn from the seed.
    fwhm : float
        FWHM of each clump, arcsec (wavelength independent).
    slope : float
        SED power law ``f_nu ~ lambda^slope`` shared by all clumps.
    r_min, r_max : float
        Range of elliptical radius (in units of the disk's reference ``r_e``) within
        which clumps are placed, uniformly in angle and radius.
    """

    number: int = 0
    flux: float = 0.05
    fwhm: float = 0.05
    slope: float = -1.0
    r_min: float = 0.3
    r_max: float = 1.5


DEFAULT_BULGE = Component("bulge", n=4.0, r_e=0.06, flux=1.0, slope=1.5, alpha=0.05)
DEFAULT_DISK = Component("disk", n=1.0, r_e=0.18, flux=1.5, slope=-0.3, alpha=0.2)
DEFAULT_CLUMPS = Clumps()

#: Physical-mode defaults per component slot: ``log_mass`` (log10 formed stellar mass,
#: Msun; for clumps the mean of one clump) and ``sed`` (emulator parameters).
PHYSICAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "bulge": {"log_mass": 10.3, "sed": {
        "log_metallicity": 0.0, "av": 0.2, "delta": 0.0, "eta": 2.0, "log_u": -2.5,
        **{f"dsfr{k}": -0.4 for k in range(1, 7)}}},
    "disk": {"log_mass": 9.9, "sed": {
        "log_metallicity": -0.5, "av": 0.8, "delta": 0.0, "eta": 2.0, "log_u": -2.5,
        **{f"dsfr{k}": 0.0 for k in range(1, 7)}}},
    "clumps": {"log_mass": 7.0, "sed": {
        "log_metallicity": -0.7, "av": 0.3, "delta": 0.0, "eta": 2.0, "log_u": -2.0,
        **{f"dsfr{k}": 1.0 for k in range(1, 7)}}},
}
#: Floor applied to per-pixel stellar masses (Msun) and SFRs (Msun/yr) before log10.
PHYSICAL_FLOOR = 1e-30
_PHYS_KEYS = ("log_mass", "sed", "sed_outer", "gradient_radius")
#: Quantities of a component's radial SED-gradient table besides the band fluxes.
_GRADIENT_DERIVED = ("log_stellar_mass", "log_sfr100", "log_sfr10", "log_age_mw", "av")


# ---------------------------------------------------------------------------
# input checking
# ---------------------------------------------------------------------------
def _finite(value: Any, name: str, *, positive: bool = False, nonneg: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SchemaError(f"{name}: expected a number, got {value!r}") from None
    if not np.isfinite(v) or (positive and v <= 0) or (nonneg and v < 0):
        need = "a positive" if positive else "a non-negative" if nonneg else "a finite"
        raise SchemaError(f"{name}: expected {need} finite number, got {value!r}")
    return v


def _component(spec: Any, default: Component, q: float, pa: float, factor: float) -> Component | None:
    """Resolve a component argument (None, False, dict, Component) to a checked Component."""
    if spec is False:
        return None
    if spec is None or spec is True:
        comp = dataclasses.replace(default, flux=default.flux * factor)
    elif isinstance(spec, Component):
        comp = spec
    elif isinstance(spec, Mapping):
        fields = {f.name for f in dataclasses.fields(Component)}
        unknown = sorted(set(spec) - fields)
        if unknown:
            raise SchemaError(f"{default.name}: unknown parameter(s) {unknown}; expected some of {sorted(fields)}")
        base = dataclasses.replace(default, flux=default.flux * factor)
        comp = dataclasses.replace(base, **dict(spec))
    else:
        raise SchemaError(f"{default.name}: expected a dict of parameters, a pegleg.synth.Component, "
                          f"None (defaults) or False (no {default.name}), got {type(spec).__name__}")
    n = _finite(comp.n, f"{comp.name}.n", positive=True)
    if not 0.3 <= n <= 10:
        raise SchemaError(f"{comp.name}.n: expected a Sersic index between 0.3 and 10, got {n}")
    cq = q if comp.q is None else _finite(comp.q, f"{comp.name}.q", positive=True)
    if cq > 1:
        raise SchemaError(f"{comp.name}.q: expected an axis ratio 0 < q <= 1, got {cq}")
    cpa = pa if comp.pa is None else _finite(comp.pa, f"{comp.name}.pa")
    return Component(
        name=str(comp.name), n=n, r_e=_finite(comp.r_e, f"{comp.name}.r_e", positive=True),
        flux=_finite(comp.flux, f"{comp.name}.flux", nonneg=True),
        slope=_finite(comp.slope, f"{comp.name}.slope"), alpha=_finite(comp.alpha, f"{comp.name}.alpha"),
        q=cq, pa=cpa,
    )


def _clumps(spec: Any, factor: float) -> Clumps:
    if spec is None or spec is False:
        spec = 0
    if isinstance(spec, (bool, np.bool_)):
        raise SchemaError("clumps: expected a number of clumps, a dict or a pegleg.synth.Clumps")
    if isinstance(spec, (int, np.integer)):
        spec = {"number": int(spec)}
    if isinstance(spec, Mapping):
        fields = {f.name for f in dataclasses.fields(Clumps)}
        unknown = sorted(set(spec) - fields)
        if unknown:
            raise SchemaError(f"clumps: unknown parameter(s) {unknown}; expected some of {sorted(fields)}")
        spec = dataclasses.replace(dataclasses.replace(DEFAULT_CLUMPS, flux=DEFAULT_CLUMPS.flux * factor), **dict(spec))
    if not isinstance(spec, Clumps):
        raise SchemaError(f"clumps: expected a number of clumps, a dict or a pegleg.synth.Clumps, got {type(spec).__name__}")
    num = spec.number
    if isinstance(num, (bool, np.bool_)) or not isinstance(num, (int, np.integer)) or num < 0:
        raise SchemaError(f"clumps.number: expected an integer >= 0, got {num!r}")
    r_min = _finite(spec.r_min, "clumps.r_min", nonneg=True)
    r_max = _finite(spec.r_max, "clumps.r_max", positive=True)
    if r_max < r_min:
        raise SchemaError(f"clumps: r_max ({r_max}) < r_min ({r_min})")
    return Clumps(number=int(num), flux=_finite(spec.flux, "clumps.flux", nonneg=True),
                  fwhm=_finite(spec.fwhm, "clumps.fwhm", positive=True),
                  slope=_finite(spec.slope, "clumps.slope"), r_min=r_min, r_max=r_max)


def _split_physical(spec: Any, slot: str, physical: bool) -> tuple[Any, dict[str, Any]]:
    """Separate ``log_mass``/``sed`` from a component dict; check what physical mode forbids."""
    if not isinstance(spec, Mapping):
        return spec, {}
    phys = {k: spec[k] for k in _PHYS_KEYS if k in spec}
    rest = {k: v for k, v in spec.items() if k not in _PHYS_KEYS}
    if phys and not physical:
        raise SchemaError(f"{slot}: {sorted(phys)} only apply with physical=True")
    if physical:
        bad = sorted(k for k in ("flux", "slope") if k in rest)
        if bad:
            raise SchemaError(f"{slot}: {bad} cannot be set with physical=True (the emulator gives the SED); "
                              f"use 'log_mass' and 'sed' instead")
    return rest, phys


def _sed_vector(slot: str, phys: Mapping[str, Any], emulator: Any, redshift: float,
                log_mass_offset: float = 0.0) -> tuple[np.ndarray, float, dict[str, float]]:
    """Full emulator parameter vector (``param_names`` order) of one component.

    Returns ``(vector, log_mass, sed)`` where ``log_mass`` is the value given (or the
    default) and ``sed`` the complete dict of the other parameters.
    """
    names = list(emulator.param_names)
    free = [n for n in names if n not in ("log_mass_formed", "redshift")]
    default = PHYSICAL_DEFAULTS[slot]
    log_mass = _finite(phys.get("log_mass", default["log_mass"]), f"{slot}.log_mass")
    given = phys.get("sed", None)
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise SchemaError(f"{slot}.sed: expected a dict of emulator parameters, got {type(given).__name__}")
    unknown = sorted(str(k) for k in given if k not in free)
    if unknown:
        raise SchemaError(f"{slot}.sed: unknown emulator parameter(s) {unknown}; expected some of {free} "
                          f"(set the mass with '{slot}': {{'log_mass': ...}} and the redshift with redshift=)")
    bounds = np.asarray(emulator.bounds, dtype=float)
    sed = {}
    for n in free:
        lo, hi = bounds[names.index(n)]
        v = given.get(n, default["sed"].get(n, 0.5 * (lo + hi)))
        sed[n] = _finite(v, f"{slot}.sed[{n!r}]")
    values = {**sed, "log_mass_formed": log_mass + log_mass_offset, "redshift": redshift}
    vec = np.array([values[n] for n in names], dtype=float)
    for n, v in zip(names, vec):
        lo, hi = bounds[names.index(n)]
        if not lo <= v <= hi:
            what = "log_mass" if n == "log_mass_formed" else "redshift" if n == "redshift" else f"sed[{n!r}]"
            raise SchemaError(f"{slot}.{what}: {v:.6g} is outside the emulator's bounds [{lo:g}, {hi:g}]")
    return vec, log_mass, sed


@dataclasses.dataclass
class _GradientTable:
    """A component's SED as a function of galaxy elliptical radius (a table on ``r``, pixels).

    ``flux`` (r, band) and ``derived`` (name -> (r,)) are the emulator's values for a formed
    mass of 10**``_GRADIENT_REF_MASS``; ``mass_scale`` converts to the component's mass.
    """

    r: np.ndarray
    flux: np.ndarray
    derived: dict[str, np.ndarray]
    mass_scale: float
    outer: np.ndarray
    radius: float

    def weighted(self, func: Callable, column: np.ndarray) -> Callable:
        """``func`` (a render-level profile) times ``column`` interpolated at each sub-pixel's radius."""
        def out(lev):
            return func(lev) * np.interp(lev.r_gal, self.r, column)
        return out

    def truth_columns(self) -> dict[str, np.ndarray]:
        """Per unit of the profile: surviving mass, SFRs, mass x age and mass x A_V."""
        m = 10.0 ** self.derived["log_stellar_mass"]
        return {"mass": m, "sfr100": 10.0 ** self.derived["log_sfr100"], "sfr10": 10.0 ** self.derived["log_sfr10"],
                "age_w": m * 10.0 ** self.derived["log_age_mw"], "av_w": m * self.derived["av"]}


_GRADIENT_REF_MASS = 10.0
_GRADIENT_STEPS = 257


def _gradient_table(slot: str, phys: Mapping[str, Any], comp: Component, centre_vec: np.ndarray, emulator: Any,
                    bands: list[str], redshift: float, rt: float, ps: float) -> _GradientTable:
    """The radial SED table of a component with ``sed_outer`` (module docstring, "SED gradients")."""
    names = list(emulator.param_names)
    if comp.alpha != 0:
        raise SchemaError(f"{slot}: a radial SED gradient (sed_outer) needs alpha=0 (one mass profile)")
    outer_given = phys.get("sed_outer", {})
    if not isinstance(outer_given, Mapping):
        raise SchemaError(f"{slot}.sed_outer: expected a dict of emulator parameters, got {type(outer_given).__name__}")
    base = dict(phys.get("sed") or {})
    outer_vec, _, _ = _sed_vector(slot, {"log_mass": phys.get("log_mass", PHYSICAL_DEFAULTS[slot]["log_mass"]),
                                         "sed": {**base, **outer_given}}, emulator, redshift)
    radius = _finite(phys.get("gradient_radius", 2.0 * comp.r_e), f"{slot}.gradient_radius", positive=True)
    r = np.linspace(0.0, rt * 1.05 + 2.0, _GRADIENT_STEPS)            # pixels (galaxy elliptical radius)
    t = np.clip(r * ps / radius, 0.0, 1.0)[:, None]
    table = centre_vec[None, :] + t * (outer_vec - centre_vec)[None, :]
    ilm = names.index("log_mass_formed")
    table[:, ilm] = _GRADIENT_REF_MASS
    try:
        flux, der = emulator.evaluate(table, list(bands))
    except EmulatorError as exc:
        raise SchemaError(f"{slot}: the emulator cannot evaluate the SED gradient: {exc}") from exc
    flux = np.asarray(flux, dtype=float).reshape(len(r), len(bands))
    derived = {key: np.asarray(der.get(key, np.nan), dtype=float) * np.ones(len(r)) for key in _GRADIENT_DERIVED}
    if not np.all(np.isfinite(flux)) or not all(np.all(np.isfinite(v)) for v in derived.values()):
        raise SchemaError(f"{slot}: the emulator gives non-finite values along the SED gradient")
    return _GradientTable(r, flux, derived, 10.0 ** (centre_vec[ilm] - _GRADIENT_REF_MASS), outer_vec, radius)


def _per_band(value: Any, bands: list[str], name: str, *, positive: bool) -> np.ndarray:
    if isinstance(value, Mapping):
        missing = [b for b in bands if b not in value]
        if missing:
            raise SchemaError(f"{name}: no value for band(s) {missing}")
        vals = [value[b] for b in bands]
    elif np.ndim(value) == 0:
        vals = [value] * len(bands)
    else:
        vals = list(np.asarray(value, dtype=float).ravel())
        if len(vals) != len(bands):
            raise SchemaError(f"{name}: {len(vals)} values for {len(bands)} bands")
    return np.array([_finite(v, f"{name}[{b}]", positive=positive)
                     for v, b in zip(vals, bands)])


def _psfs(psf: Any, bands: list[str], pixel_scale: float) -> tuple[list[np.ndarray], list[float]]:
    """PSF arrays (normalised) and their FWHM (arcsec) per band."""
    if psf is None:
        arrays = [_psf_models.jwst_like_psf(b, pixel_scale) for b in bands]
        fwhm = []
        for b in bands:
            fine = min(pixel_scale, _psf_models._nominal_fwhm(b) / 6.0)
            fwhm.append(_psf_models.measure_fwhm(_psf_models.jwst_like_psf(b, fine), fine))
        return arrays, fwhm
    if isinstance(psf, xr.DataArray):
        psf = {b: psf.sel({schema.BAND: b}).values for b in bands} if schema.BAND in psf.dims else psf.values
    if isinstance(psf, Mapping):
        missing = [b for b in bands if b not in psf]
        if missing:
            raise PSFError(f"psf: no PSF for band(s) {missing}; got PSFs for {list(psf)}")
        arrays = [schema.check_psf_array(psf[b], b) for b in bands]
    else:
        arr = np.asarray(psf, dtype=float)
        if arr.ndim == 2:
            arrays = [schema.check_psf_array(arr, b) for b in bands]
        elif arr.ndim == 3 and arr.shape[0] == len(bands):
            arrays = [schema.check_psf_array(arr[i], b) for i, b in enumerate(bands)]
        else:
            raise PSFError(f"psf: expected a mapping band -> 2-D PSF, a (band, n, n) array for {len(bands)} "
                           f"bands or one (n, n) array, got shape {arr.shape}")
    fwhm = [_psf_models.measure_fwhm(a, pixel_scale) for a in arrays]
    return arrays, fwhm


# ---------------------------------------------------------------------------
# profiles
# ---------------------------------------------------------------------------
def _taper(r: np.ndarray, rt: float) -> np.ndarray:
    """1 inside 0.8 rt, cosine roll-off to 0 at rt, 0 beyond."""
    t = np.clip((r / rt - 0.8) / 0.2, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))


def _sersic_b(n: float) -> float:
    return float(special.gammaincinv(2.0 * n, 0.5))


def _sersic(r: np.ndarray, r_e: float, n: float, rt: float) -> np.ndarray:
    """Truncated Sersic profile, 1 at r = r_e (r in pixels)."""
    b = _sersic_b(n)
    return np.exp(-b * (np.power(r / r_e, 1.0 / n) - 1.0)) * _taper(r, rt)


def _sersic_total(r_e: float, n: float, q: float, rt: float) -> float:
    """2 pi q int_0^rt I(r) taper(r) r dr, by the trapezoid rule in ln r (pixels^2)."""
    t = np.linspace(math.log(rt) - 25.0, math.log(rt), 20001)
    r = np.exp(t)
    f = _sersic(r, r_e, n, rt) * r * r
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    return float(2.0 * np.pi * q * trapezoid(f, t))


# ---------------------------------------------------------------------------
# the render grid
# ---------------------------------------------------------------------------
class _Level:
    """One oversampling level: a pixel block, its sub-pixel offsets from the centre."""

    def __init__(self, y0: int, y1: int, x0: int, x1: int, os_: int, yc: float, xc: float,
                 q: float, pa: float):
        self.y0, self.y1, self.x0, self.x1, self.os = y0, y1, x0, x1, os_
        sub = (np.arange(os_) + 0.5) / os_ - 0.5
        self.dy = (np.arange(y0, y1)[:, None] + sub[None, :]).ravel() - yc
        self.dx = (np.arange(x0, x1)[:, None] + sub[None, :]).ravel() - xc
        self.keep = np.ones((y1 - y0, x1 - x0), dtype=bool)
        self._r: dict[tuple[float, float], np.ndarray] = {}
        self.r_gal = self.radius(q, pa)

    def radius(self, q: float, pa: float) -> np.ndarray:
        key = (q, pa)
        if key not in self._r:
            c, s = math.cos(math.radians(pa)), math.sin(math.radians(pa))
            xp = self.dx[None, :] * c + self.dy[:, None] * s
            yp = -self.dx[None, :] * s + self.dy[:, None] * c
            self._r[key] = np.hypot(xp, yp / q)
        return self._r[key]

    def exclude(self, other: "_Level") -> None:
        """Pixels covered by a finer level do not count here."""
        self.keep[max(other.y0 - self.y0, 0):max(other.y1 - self.y0, 0),
                  max(other.x0 - self.x0, 0):max(other.x1 - self.x0, 0)] = False

    def pixels(self, sub: np.ndarray) -> np.ndarray:
        """Pixel integrals (sub-pixel mean x 1 pixel^2)."""
        ny, nx = self.y1 - self.y0, self.x1 - self.x0
        return sub.reshape(ny, self.os, nx, self.os).mean(axis=(1, 3))

    def finalize(self, nbins: int) -> None:
        keep_sub = np.repeat(np.repeat(self.keep, self.os, axis=0), self.os, axis=1)
        self.sel = keep_sub.ravel()
        self.bins = np.minimum((self.r_gal.ravel()[self.sel] / _BIN).astype(np.int64), nbins - 1)
        self.area = 1.0 / self.os**2


class _Grid:
    """Render grid: padded stamp, oversampling levels, growth-curve bins."""

    def __init__(self, shape_padded: tuple[int, int], yc: float, xc: float, q: float, pa: float, reach: float):
        self.shape = shape_padded
        ny, nx = shape_padded
        iyc, ixc = int(round(yc)), int(round(xc))
        lo_y, hi_y = max(int(math.floor(yc - reach - 1)), 0), min(int(math.ceil(yc + reach + 2)), ny)
        lo_x, hi_x = max(int(math.floor(xc - reach - 1)), 0), min(int(math.ceil(xc + reach + 2)), nx)
        self.levels: list[_Level] = []
        for os_, half in _OVERSAMPLE:
            if half is None:
                box = (lo_y, hi_y, lo_x, hi_x)
            else:
                box = (max(iyc - half, lo_y), min(iyc + half + 1, hi_y),
                       max(ixc - half, lo_x), min(ixc + half + 1, hi_x))
            lev = _Level(*box, os_, yc, xc, q, pa)
            if self.levels:
                self.levels[-1].exclude(lev)
            self.levels.append(lev)
        rmax = max(float(lev.r_gal.max()) for lev in self.levels)
        self.nbins = int(rmax / _BIN) + 2
        for lev in self.levels:
            lev.finalize(self.nbins)

    def render(self, func: Callable[[_Level], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-integrated padded image and growth-curve histogram of ``func``."""
        img = np.zeros(self.shape)
        hist = np.zeros(self.nbins)
        for lev in self.levels:
            sub = func(lev)
            img[lev.y0:lev.y1, lev.x0:lev.x1] = lev.pixels(sub)
            hist += np.bincount(lev.bins, weights=sub.ravel()[lev.sel] * lev.area, minlength=self.nbins)
        return img, hist


def _radius_at(hist: np.ndarray, frac: float) -> float:
    """Radius (pixels) enclosing ``frac`` of the histogram's total."""
    cum = np.cumsum(hist)
    target = frac * cum[-1]
    i = int(np.searchsorted(cum, target))
    lo = cum[i - 1] if i > 0 else 0.0
    step = cum[i] - lo
    return (i + (target - lo) / step if step > 0 else i + 1.0) * _BIN


# ---------------------------------------------------------------------------
# the generator
# ---------------------------------------------------------------------------
def galaxy(
    bands: Sequence[str] | str,
    *,
    shape: tuple[int, int] = (65, 65),
    pixel_scale: float = 0.03,
    redshift: float | None = 1.0,
    seed: int = 0,
    noise: bool = True,
    depth: float | Mapping[str, float] | Sequence[float] | None = None,
    snr_peak: float = 100.0,
    sky: float | Mapping[str, float] | Sequence[float] = 0.0,
    bulge: Mapping[str, Any] | Component | bool | None = None,
    disk: Mapping[str, Any] | Component | bool | None = None,
    clumps: int | Mapping[str, Any] | Clumps = 0,
    q: float = 0.7,
    pa: float = 30.0,
    centre: tuple[float, float] | None = None,
    truncation: float | None = None,
    psf: Any = None,
    sed: Callable[[str, list[str], np.ndarray], Sequence[float]] | None = None,
    units: str = "uJy",
    physical: bool = False,
    emulator: Any = None,
) -> tuple[xr.Dataset, xr.Dataset]:
    """A synthetic galaxy observed in ``bands``, and the truth it was made from.

    See the module docstring (:mod:`pegleg.synth`) for the model and every design choice.

    Parameters
    ----------
    bands : sequence of str
        Known filter names (e.g. ``["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]``).
    shape : (int, int)
        Stamp size ``(ny, nx)`` in pixels, each >= 9.
    pixel_scale : float
        arcsec/pixel.
    redshift : float or None
        Stored in both Datasets' attributes; required (> 0, within the emulator's
        bounds) with ``physical=True``.
    seed : int
        Seeds the noise and the clump placement; same seed -> identical output.
    noise : bool
        Add Gaussian noise of standard deviation ``depth`` (``error`` is ``depth`` either way).
    depth : float, mapping or sequence, optional
        1-sigma noise per pixel per band, in ``units``.  Default: one value for all bands
        giving peak-pixel S/N = ``snr_peak`` in the brightest band.
    snr_peak : float
        Peak-pixel S/N of the brightest band when ``depth`` is not given.
    sky : float, mapping or sequence
        Flat background added to the observed image (``units``).
    bulge, disk : dict, Component, None or False
        Parameter overrides for the components (see :class:`Component`); None = defaults,
        False = no such component.  With ``physical=True`` a dict may also hold
        ``"log_mass"`` (log10 formed stellar mass of the component, Msun) and ``"sed"``
        (dict of emulator parameters other than ``log_mass_formed``/``redshift``;
        missing ones take :data:`PHYSICAL_DEFAULTS`), but not ``"flux"``/``"slope"``
        (a :class:`Component`'s ``flux`` and ``slope`` are ignored); ``alpha`` then
        defaults to 0.  ``"sed_outer"`` and ``"gradient_radius"`` give the component a
        radial SED gradient (module docstring, "SED gradients").
    clumps : int, dict or Clumps
        Number of clumps, or their parameters (:class:`Clumps`).  With
        ``physical=True`` a dict may hold ``"log_mass"`` (mean formed mass of *one*
        clump; default 7.0) and ``"sed"`` (default: young, see :data:`PHYSICAL_DEFAULTS`).
    q, pa : float
        Galaxy axis ratio and position angle (degrees, counter-clockwise from +x).
    centre : (float, float), optional
        Galaxy centre ``(y, x)`` in stamp pixel coordinates.  Default: stamp centre
        + ``(0.3, -0.2)``.
    truncation : float, optional
        Truncation radius (semi-major axis, arcsec).  Default: 0.9 x half the short side.
    psf : mapping band -> array, array (band, n, n) or (n, n), optional
        PSFs to convolve with (and store in ``observed``).  Default: :func:`jwst_like_psf`.
    sed : callable, optional
        ``sed(component_name, bands, wavelengths) -> fluxes`` (total flux per band in
        ``units``) replacing the power-law SEDs; ``component_name`` is ``"bulge"``,
        ``"disk"`` or ``"clumps"`` (the total of all clumps).
    units : str
        Flux unit of all flux inputs and outputs (default ``"uJy"``).
    physical : bool
        Component SEDs from an SED emulator at each component's mass and ``redshift``
        (module docstring, "Physical SEDs"), with physical truth maps.  Excludes ``sed=``.
    emulator : emulator object, str or None
        Used with ``physical=True``: an object with ``param_names``, ``bounds`` and
        ``evaluate(params, bands) -> (flux_uJy, derived)`` (e.g. from
        :func:`pegleg.sed.load_emulator`), or a name/path for ``load_emulator``;
        None = ``load_emulator("default")`` (loaded only when ``physical=True``).

    Returns
    -------
    observed : xarray.Dataset
        A valid stamp Dataset (``pegleg.validate`` passes) with ``segmentation``.
    truth : xarray.Dataset
        Coordinates ``band``, ``wavelength``, ``y``, ``x``, ``component``; variables
        ``image`` (band, y, x; intrinsic, unconvolved, pixel-integrated),
        ``image_convolved`` (band, y, x; noise- and sky-free observed image),
        ``component_image`` (component, band, y, x), ``component_flux`` (component,
        band), ``flux_total`` (band; total flux of the truncated model), ``flux_stamp``
        (band; flux of ``image`` in the stamp), ``r50``, ``r80`` (band; semi-major-axis
        radii enclosing 50/80 % of ``flux_total`` in elliptical apertures with the
        galaxy's ``q`` and ``pa``, arcsec), ``psf_fwhm`` (band, arcsec), ``noise`` and
        ``sky`` (band).  Attributes: ``pixel_scale``, ``redshift``, ``centre_y``,
        ``centre_x`` (pixel), ``q``, ``pa`` (deg), ``pa_convention``,
        ``truncation_radius`` (arcsec), ``reference_wavelength`` (um), ``components``
        (JSON list of component parameters, including clump positions),
        ``render_flux_error`` (largest ``abs(numerical / analytic - 1)`` of the pixel
        integration), ``source_id``, ``pegleg_history``.

        With ``physical=True`` also (y, x) maps ``log_stellar_mass``,
        ``stellar_mass_density``, ``log_sfr100``, ``log_sfr10``, ``sfr_density``,
        ``log_age_mw`` and ``av`` (units and long names from
        :data:`pegleg.schema.PHYSICAL`; definitions, floor and weighting in the module
        docstring), ``component_sed_params`` (component, sed_param; the full emulator
        parameter vectors, ``sed_param`` = ``emulator.param_names``), ``component_profile``
        (component, y, x; the normalised intrinsic profiles ``P_c`` in the stamp) and
        attributes ``sed_model`` (``"emulator"``), ``emulator`` (its name),
        ``sed_param_names`` (JSON list), ``cosmology``, ``kpc_per_arcsec``,
        ``pixel_area_kpc2``, ``log_stellar_mass_total``, ``log_sfr100_total`` and per
        component ``<name>_sed_params`` (float array in ``sed_param_names`` order),
        ``<name>_log_mass_formed``, ``<name>_log_stellar_mass``, ``<name>_log_sfr100``,
        ``<name>_log_sfr10``, ``<name>_log_age_mw``, ``<name>_av``; the ``components``
        JSON then lists ``log_mass``, ``sed`` and ``derived`` instead of ``flux``/``slope``.

    Raises
    ------
    SchemaError
        Unknown band, bad shape, pixel scale, parameters, depth or units; with
        ``physical=True``: no redshift, unknown or out-of-bounds emulator parameters,
        bands the emulator does not cover, or ``sed=`` given too.
    PSFError
        Unusable PSFs.
    """
    t_start = time.perf_counter()
    # -- inputs ------------------------------------------------------------------
    blist = schema._check_bands(bands)
    wl = np.array([_filters.pivot_wavelength(b) for b in blist])
    try:
        ny, nx = (int(s) for s in shape)
        if (ny, nx) != tuple(shape):
            raise ValueError
    except (TypeError, ValueError):
        raise SchemaError(f"shape: expected two integers (ny, nx), got {shape!r}") from None
    if ny < 9 or nx < 9:
        raise SchemaError(f"shape: stamp {shape} is too small; expected at least 9 x 9 pixels")
    ps = schema._check_pixel_scale(pixel_scale)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SchemaError(f"seed: expected an integer >= 0, got {seed!r}")
    units = schema.check_flux_unit(units)
    import astropy.units as u

    factor = float(u.Unit("uJy").to(u.Unit(units)))
    q = _finite(q, "q", positive=True)
    if q > 1:
        raise SchemaError(f"q: expected an axis ratio 0 < q <= 1, got {q}")
    pa = _finite(pa, "pa")
    if centre is None:
        cy, cx = (ny - 1) / 2.0 + 0.3, (nx - 1) / 2.0 - 0.2
    else:
        try:
            cy, cx = (_finite(c, "centre") for c in centre)
        except TypeError:
            raise SchemaError(f"centre: expected (y, x) pixel coordinates, got {centre!r}") from None
        if not (0 <= cy <= ny - 1 and 0 <= cx <= nx - 1):
            raise SchemaError(f"centre: {centre!r} lies outside the stamp of shape {(ny, nx)}")
    rt_arcsec = 0.9 * 0.5 * min(ny, nx) * ps if truncation is None else _finite(truncation, "truncation", positive=True)
    rt = rt_arcsec / ps  # pixels
    snr_peak = _finite(snr_peak, "snr_peak", positive=True)
    if not isinstance(noise, (bool, np.bool_)):
        raise SchemaError(f"noise: expected True or False, got {noise!r}")
    if not isinstance(physical, (bool, np.bool_)):
        raise SchemaError(f"physical: expected True or False, got {physical!r}")
    physical = bool(physical)
    z_phys = float("nan")
    if physical:
        if sed is not None:
            raise SchemaError("sed: give either sed= or physical=True, not both")
        if redshift is None:
            raise SchemaError("redshift: physical=True needs the galaxy's redshift; got None")
        z_phys = _finite(redshift, "redshift", positive=True)
    elif emulator is not None:
        raise SchemaError("emulator: only used with physical=True")

    bulge, phys_bulge = _split_physical(bulge, "bulge", physical)
    disk, phys_disk = _split_physical(disk, "disk", physical)
    clumps, phys_clumps = _split_physical(clumps, "clumps", physical)
    phys_spec = {"bulge": phys_bulge, "disk": phys_disk, "clumps": phys_clumps}
    dflt_bulge, dflt_disk = DEFAULT_BULGE, DEFAULT_DISK
    if physical:  # one profile per component in all bands (exact per-pixel truth)
        dflt_bulge, dflt_disk = (dataclasses.replace(d, alpha=0.0) for d in (DEFAULT_BULGE, DEFAULT_DISK))
    slotted = [(slot, c) for slot, c in (("bulge", _component(bulge, dflt_bulge, q, pa, factor)),
                                         ("disk", _component(disk, dflt_disk, q, pa, factor))) if c is not None]
    comps = [c for _, c in slotted]
    comp_slots = [slot for slot, _ in slotted]
    names = [c.name for c in comps]
    if len(set(names)) != len(names):
        raise SchemaError(f"component names must differ, got {names}")
    clump = _clumps(clumps, factor)
    if not comps and clump.number == 0:
        raise SchemaError("no components: give a bulge, a disk or clumps")

    psf_arrays, psf_fwhm = _psfs(psf, blist, ps)
    h = max(max(a.shape) // 2 for a in psf_arrays)
    sky_b = _per_band(sky, blist, "sky", positive=False)

    # -- geometry ----------------------------------------------------------------
    NY, NX = ny + 2 * h, nx + 2 * h
    yc, xc = cy + h, cx + h
    room = min(yc + 0.5, NY - 0.5 - yc, xc + 0.5, NX - 0.5 - xc)
    if rt > room:
        raise SchemaError(f"truncation: radius {rt_arcsec:.4g} arcsec ({rt:.1f} px) reaches beyond the rendered "
                          f"region (stamp + PSF half-size, {room:.1f} px from the centre); use a larger shape")
    grid = _Grid((NY, NX), yc, xc, q, pa, rt)

    # clumps: deterministic positions within the disk
    seq_clump, seq_noise = np.random.SeedSequence(int(seed)).spawn(2)
    clump_list: list[dict[str, float]] = []
    if clump.number:
        rng_c = np.random.default_rng(seq_clump)
        dref = next((c for c in comps if c.name == "disk"), Component("disk", r_e=DEFAULT_DISK.r_e, q=q, pa=pa))
        rad = rng_c.uniform(clump.r_min, clump.r_max, clump.number) * dref.r_e / ps
        rad = np.minimum(rad, 0.6 * rt)
        ang = rng_c.uniform(0.0, 2 * np.pi, clump.number)
        fl = rng_c.uniform(0.5, 1.5, clump.number)
        c, s = math.cos(math.radians(dref.pa)), math.sin(math.radians(dref.pa))
        xp, yp = rad * np.cos(ang), rad * np.sin(ang) * dref.q
        for i in range(clump.number):
            clump_list.append({"dy": float(xp[i] * s + yp[i] * c), "dx": float(xp[i] * c - yp[i] * s),
                               "weight": float(fl[i] / fl.sum())})
        total_ref = clump.flux * fl.sum()
        clump_scale = float(fl.sum())  # total / mean clump (flux or mass)

    # -- SEDs --------------------------------------------------------------------
    comp_names = names + (["clumps"] if clump.number else [])
    fluxes = np.zeros((len(comp_names), len(blist)))
    if physical:
        emu = _load_emulator(emulator)
        theta, phys_meta = [], []
        for k, name in enumerate(comp_names):
            slot = "clumps" if name == "clumps" else comp_slots[k]
            offset = math.log10(clump_scale) if name == "clumps" else 0.0
            vec, log_mass, sed_par = _sed_vector(slot, phys_spec[slot], emu, z_phys, offset)
            theta.append(vec)
            phys_meta.append({"log_mass": log_mass, "log_mass_formed": float(vec[list(emu.param_names).index(
                "log_mass_formed")]), "sed": sed_par})
        theta = np.array(theta)
        try:
            flux_ujy, derived = emu.evaluate(theta, list(blist))
        except EmulatorError as exc:
            raise SchemaError(f"physical: the emulator cannot evaluate these components: {exc}") from exc
        flux_ujy = np.asarray(flux_ujy, dtype=float).reshape(len(comp_names), len(blist))
        if not np.all(np.isfinite(flux_ujy)) or np.any(flux_ujy < 0):
            raise SchemaError(f"physical: the emulator returned invalid fluxes {flux_ujy.tolist()}")
        derived = {key: np.asarray(derived.get(key, np.nan), dtype=float) * np.ones(len(comp_names))
                   for key in ("log_stellar_mass", "log_sfr100", "log_sfr10", "log_age_mw", "av")}
        if not np.all(np.isfinite(derived["log_stellar_mass"])):
            raise SchemaError("physical: the emulator gives no finite log_stellar_mass for these components")
        fluxes[:] = flux_ujy * factor
        gradients = {k: _gradient_table(comp_slots[k], phys_spec[comp_slots[k]], comps[k], theta[k], emu, blist,
                                        z_phys, rt, ps)
                     for k, name in enumerate(comp_names)
                     if name != "clumps" and ("sed_outer" in phys_spec[comp_slots[k]]
                                              or "gradient_radius" in phys_spec[comp_slots[k]])}
        if "sed_outer" in phys_clumps or "gradient_radius" in phys_clumps:
            raise SchemaError("clumps: 'sed_outer'/'gradient_radius' apply to the bulge and disk only")
    else:
        gradients = {}
    for k, name in enumerate(comp_names if not physical else []):
        if sed is not None:
            f = np.asarray(sed(name, list(blist), wl.copy()), dtype=float).ravel()
            if f.shape != (len(blist),) or not np.all(np.isfinite(f)) or np.any(f < 0):
                raise SchemaError(f"sed({name!r}, ...): expected {len(blist)} finite fluxes >= 0, got {f!r}")
        elif name == "clumps":
            f = total_ref * (wl / REFERENCE_WAVELENGTH) ** clump.slope
        else:
            cp = comps[k]
            f = cp.flux * (wl / REFERENCE_WAVELENGTH) ** cp.slope
        fluxes[k] = f

    # -- render ------------------------------------------------------------------
    nb, nc = len(blist), len(comp_names)
    comp_pad = np.zeros((nc, nb, NY, NX))
    hist_tot = np.zeros((nb, grid.nbins))
    render_err = 0.0
    sig_c = clump.fwhm / _FWHM_PER_SIGMA / ps

    def profile(k: int, wavelength: float):
        """(function of a render level, analytic total) of component ``k`` at ``wavelength``."""
        if comp_names[k] == "clumps":
            def func(lev):
                out = np.zeros((lev.dy.size, lev.dx.size))
                for cl in clump_list:
                    gy = np.exp(-((lev.dy - cl["dy"]) ** 2) / (2 * sig_c**2))
                    gx = np.exp(-((lev.dx - cl["dx"]) ** 2) / (2 * sig_c**2))
                    out += cl["weight"] * np.outer(gy, gx)
                return out * _taper(lev.r_gal, rt)
            return func, 2 * np.pi * sig_c**2
        cp = comps[k]
        re_b = cp.r_e * (wavelength / REFERENCE_WAVELENGTH) ** (-cp.alpha) / ps

        def func(lev, _cp=cp, _re=re_b):
            return _sersic(lev.radius(_cp.q, _cp.pa), _re, _cp.n, rt)
        return func, _sersic_total(re_b, cp.n, cp.q, rt)

    # normalised profile per component (physical truth maps): band independent unless alpha != 0
    achromatic = [name == "clumps" or comps[k].alpha == 0 for k, name in enumerate(comp_names)]
    prof_pad = np.zeros((nc, NY, NX)) if physical else None
    plain_total: dict[int, float] = {}   # pixel sum of each achromatic profile as rendered
    for j in range(nb):
        for k in range(nc):
            func, analytic = profile(k, wl[j])
            plain, hist = grid.render(func)
            total = plain.sum()
            render_err = max(render_err, abs(total / analytic - 1.0))
            img = plain
            if k in gradients:
                # per-pixel SEDs: the mass profile times the SED of its radius, integrated per pixel
                gt = gradients[k]
                img, hist = grid.render(gt.weighted(func, gt.flux[:, j]))
                scale = gt.mass_scale * factor / total if total > 0 else 0.0
                fluxes[k, j] = img.sum() * scale
            else:
                scale = fluxes[k, j] / total if total > 0 else 0.0
            comp_pad[k, j] = img * scale
            hist_tot[j] += hist * scale
            if physical and j == 0 and achromatic[k] and total > 0:
                prof_pad[k] = plain / total
                plain_total[k] = total
    if physical:
        for k in range(nc):
            if not achromatic[k]:
                img, _ = grid.render(profile(k, REFERENCE_WAVELENGTH)[0])
                prof_pad[k] = img / img.sum()
        # per component: (y, x) maps of surviving mass, SFRs and mass x age / A_V (padded grid)
        comp_maps = []
        for k in range(nc):
            if k in gradients:   # achromatic (alpha = 0): the profile rendered in the band loop
                func, _ = profile(k, REFERENCE_WAVELENGTH)
                norm = gradients[k].mass_scale / plain_total[k]
                comp_maps.append({key: grid.render(gradients[k].weighted(func, col))[0] * norm
                                  for key, col in gradients[k].truth_columns().items()})
            else:
                m = 10.0 ** derived["log_stellar_mass"][k]
                comp_maps.append({"mass": m * prof_pad[k], "sfr100": 10.0 ** derived["log_sfr100"][k] * prof_pad[k],
                                  "sfr10": 10.0 ** derived["log_sfr10"][k] * prof_pad[k],
                                  "age_w": m * 10.0 ** derived["log_age_mw"][k] * prof_pad[k],
                                  "av_w": m * derived["av"][k] * prof_pad[k]})
            tot = {key: float(v.sum()) for key, v in comp_maps[-1].items()}
            if k in gradients:   # the component's integrated values follow from its maps
                derived["log_stellar_mass"][k] = math.log10(tot["mass"])
                derived["log_sfr100"][k] = math.log10(max(tot["sfr100"], PHYSICAL_FLOOR))
                derived["log_sfr10"][k] = math.log10(max(tot["sfr10"], PHYSICAL_FLOOR))
                derived["log_age_mw"][k] = math.log10(tot["age_w"] / tot["mass"])
                derived["av"][k] = tot["av_w"] / tot["mass"]

    intrinsic_pad = comp_pad.sum(axis=0)
    sl = (slice(h, h + ny), slice(h, h + nx))
    truth_img = intrinsic_pad[:, sl[0], sl[1]]
    comp_img = comp_pad[:, :, sl[0], sl[1]]
    convolved = np.stack([signal.fftconvolve(intrinsic_pad[j], psf_arrays[j], mode="same")[sl]
                          for j in range(nb)])
    flux_total = fluxes.sum(axis=0)
    r50 = np.array([_radius_at(hist_tot[j], 0.5) for j in range(nb)]) * ps
    r80 = np.array([_radius_at(hist_tot[j], 0.8) for j in range(nb)]) * ps

    # -- noise -------------------------------------------------------------------
    if depth is None:
        peak = float(convolved.max())
        if not peak > 0:
            raise SchemaError("depth: the galaxy has no flux in any band; give depth= explicitly")
        depth_b = np.full(nb, peak / snr_peak)
    else:
        depth_b = _per_band(depth, blist, "depth", positive=True)
    observed_img = convolved + sky_b[:, None, None]
    if noise:
        rng = np.random.default_rng(seq_noise)
        observed_img = observed_img + rng.standard_normal((nb, ny, nx)) * depth_b[:, None, None]
    error = np.broadcast_to(depth_b[:, None, None], (nb, ny, nx)).copy()
    red = int(np.argmax(wl))
    seg = ndimage.binary_dilation(convolved[red] > 2.0 * depth_b[red], structure=np.ones((3, 3), bool))

    # -- datasets ----------------------------------------------------------------
    params = {
        "bands": blist, "shape": [ny, nx], "pixel_scale": ps, "redshift": redshift, "seed": int(seed),
        "noise": bool(noise), "depth": depth_b.tolist(), "sky": sky_b.tolist(), "q": q, "pa": pa,
        "centre": [cy, cx], "truncation": rt_arcsec, "psf": "jwst_like_psf" if psf is None else "given",
        "sed": ("emulator:" + str(getattr(emu, "name", type(emu).__name__))) if physical
        else "power law" if sed is None else getattr(sed, "__name__", "callable"), "units": units,
        "components": comp_names, "clumps": clump.number, "physical": physical,
    }
    source_id = f"synthetic-{int(seed)}"
    observed = schema.from_arrays(
        observed_img, error, {b: a for b, a in zip(blist, psf_arrays)}, blist, ps,
        redshift=redshift, units=units, segmentation=seg.astype(np.int32), source_id=source_id,
    )
    observed = schema.append_history(observed, "synth.galaxy", params)

    comp_meta = [dataclasses.asdict(c) for c in comps]
    if clump.number:
        comp_meta.append({**dataclasses.asdict(clump), "name": "clumps", "positions": [
            {"y": cy + cl["dy"], "x": cx + cl["dx"], "flux_fraction": cl["weight"]} for cl in clump_list]})
    if physical:
        for k, meta in enumerate(comp_meta):
            meta.pop("flux", None)
            meta.pop("slope", None)
            meta.update(phys_meta[k])
            meta["derived"] = {key: float(v[k]) for key, v in derived.items()}
    fu = units

    def var(dims, data, unit, long_name):
        return (dims, data, {"units": unit, "long_name": long_name})

    B, Yd, Xd = schema.BAND, schema.Y, schema.X
    truth = xr.Dataset(
        {
            "image": var((B, Yd, Xd), truth_img, fu, "intrinsic (unconvolved) flux per pixel"),
            "image_convolved": var((B, Yd, Xd), convolved, fu, "PSF-convolved noise-free flux per pixel (no sky)"),
            "component_image": var(("component", B, Yd, Xd), comp_img, fu, "intrinsic flux per pixel of each component"),
            "component_flux": var(("component", B), fluxes, fu, "total flux of each truncated component"),
            "flux_total": var((B,), flux_total, fu, "total intrinsic flux of the truncated model"),
            "flux_stamp": var((B,), truth_img.sum(axis=(1, 2)), fu, "intrinsic flux inside the stamp"),
            "r50": var((B,), r50, "arcsec", "semi-major axis of the elliptical aperture enclosing 50% of flux_total"),
            "r80": var((B,), r80, "arcsec", "semi-major axis of the elliptical aperture enclosing 80% of flux_total"),
            "psf_fwhm": var((B,), np.asarray(psf_fwhm), "arcsec", "FWHM of the PSF"),
            "noise": var((B,), depth_b, fu, "1-sigma noise per pixel"),
            "sky": var((B,), sky_b, fu, "flat sky level added to the observed image"),
        },
        coords={
            B: observed[B], schema.WAVELENGTH: observed[schema.WAVELENGTH],
            Yd: observed[Yd], Xd: observed[Xd],
            "component": ("component", np.array(comp_names, dtype=object), {"long_name": "model component", "units": "1"}),
        },
        attrs={
            schema.PIXEL_SCALE: ps,
            **({schema.REDSHIFT: float(redshift)} if redshift is not None else {}),
            schema.SOURCE_ID: source_id,
            "centre_y": cy, "centre_x": cx, "q": q, "pa": pa,
            "pa_convention": "degrees counter-clockwise from the +x (column) axis towards +y (row)",
            "truncation_radius": rt_arcsec,
            "reference_wavelength": REFERENCE_WAVELENGTH,
            "components": json.dumps(comp_meta),
            "render_flux_error": float(render_err),
            "units": fu,
            schema.HISTORY: "[]",
        },
    )
    if physical:
        truth = _physical_truth(truth, emu, theta, derived, prof_pad[:, sl[0], sl[1]], comp_names, z_phys, ps,
                                [{key: v[sl] for key, v in cm.items()} for cm in comp_maps], gradients)
    params["runtime_s"] = round(time.perf_counter() - t_start, 4)
    truth = schema.append_history(truth, "synth.galaxy", params)
    return observed, truth


# ---------------------------------------------------------------------------
# a synthetic field: many galaxies in per-band mosaics, with a catalogue
# ---------------------------------------------------------------------------
#: Bands of :func:`write_field` when none are given (six NIRCam wide bands).
FIELD_BANDS = ("F115W", "F150W", "F200W", "F277W", "F356W", "F444W")
_FIELD_KEYS = ("id", "y", "x", "redshift", "seed")
_FIELD_GALAXY_KEYS = ("bulge", "disk", "clumps", "q", "pa")


def _toml_value(value: Any) -> str:
    """A TOML literal of a string, number, bool or list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if not math.isfinite(float(value)):
            raise SchemaError(f"cannot write the non-finite number {value!r} to TOML")
        return repr(value)
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(os.fspath(value))  # a TOML basic string for printable text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise SchemaError(f"cannot write a {type(value).__name__} ({value!r}) to TOML")


def _field_layout(n: int, rng: np.random.Generator, spacing: int) -> tuple[list[dict[str, Any]], tuple[int, int]]:
    """Galaxy specifications on a square-ish grid of ``spacing`` pixels, and the mosaic shape."""
    ncol = math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    draws = {  # one vectorised draw per property (independent of the layout)
        "redshift": np.round(rng.uniform(1.5, 3.0, n), 3),
        "bulge": rng.uniform(9.3, 10.3, n),
        "disk": rng.uniform(9.5, 10.2, n),
        "q": rng.uniform(0.5, 0.9, n),
        "pa": rng.uniform(0.0, 180.0, n),
    }
    specs = []
    for i in range(n):
        r, c = divmod(i, ncol)
        specs.append({"id": f"syn-{i + 1:04d}", "y": r * spacing + spacing // 2, "x": c * spacing + spacing // 2,
                      "redshift": float(draws["redshift"][i]), "seed": i + 1,
                      "bulge": {"log_mass": round(float(draws["bulge"][i]), 3)},
                      "disk": {"log_mass": round(float(draws["disk"][i]), 3)},
                      "q": round(float(draws["q"][i]), 3), "pa": round(float(draws["pa"][i]), 2)})
    return specs, (nrow * spacing, ncol * spacing)


def write_field(
    folder: str | os.PathLike,
    n_galaxies: int | None = None,
    *,
    bands: Sequence[str] = FIELD_BANDS,
    galaxies: Sequence[Mapping[str, Any]] | None = None,
    mosaic_shape: tuple[int, int] | None = None,
    stamp: int = 33,
    spacing: int = 44,
    pixel_scale: float = 0.03,
    depth: float = 6e-4,
    seed: int = 0,
    segmentation: bool = True,
    extra_rows: Sequence[tuple[str, float, float, float]] = (),
    center: tuple[float, float] = (150.1, 2.2),
    config: str | None = "run.toml",
    stamp_size: int = 41,
    sedfit: Mapping[str, Any] | None = None,
    emulator: Any = None,
) -> dict[str, Any]:
    """Write a synthetic field: per-band mosaics, PSFs, a catalogue and a run configuration.

    Each galaxy is a physical :func:`galaxy` (emulator SEDs, known stellar mass) rendered
    noise-free on a ``stamp`` x ``stamp`` grid and pasted into mosaics with a TAN WCS
    (north up, east left); Gaussian noise of ``depth`` is then added to the whole
    mosaic.  Output (all inside ``folder``):

    * ``mosaics/<BAND>_sci.fits`` (float32, ``BUNIT = 'uJy'`` per pixel) and
      ``mosaics/<BAND>_err.fits`` (constant ``depth``), image in the primary HDU;
    * ``mosaics/seg.fits`` (int32 segmentation: galaxy ``k`` of the list is label
      ``k + 1``, 0 is sky) unless ``segmentation=False``;
    * ``psf/<BAND>.fits`` (the :func:`galaxy` PSFs, header ``PIXELSCL``);
    * ``catalog.csv`` (``id, ra, dec, redshift``; degrees) for
      :func:`pegleg.pipeline.run_catalog` / ``pegleg run``, then ``extra_rows``;
    * ``truth.csv``: per galaxy ``id, ra, dec, redshift, y, x`` (mosaic pixel of the
      stamp centre), ``log_stellar_mass`` and ``log_sfr100`` (log10 Msun and
      Msun/yr, totals), ``r50_mass_arcsec`` (semi-major half-mass radius) and
      ``r50_<BAND>_arcsec`` (half-light radius per band, intrinsic);
    * ``config`` (default ``run.toml``, None: not written): a TOML configuration
      (:class:`pegleg.pipeline.Config`) with ``data_dir = "."``, ``output_dir =
      "results"``, ``stamp_size``, ``match_to`` = the reddest band and the ``[sedfit]``
      options ``sedfit`` (default ``{"method": "fast"}``).

    The same arguments give byte-identical image data (the noise and the layout come
    from ``numpy.random.default_rng(seed)``).

    Parameters
    ----------
    folder : path
        Output folder (created; existing files of the same names are overwritten).
    n_galaxies : int, optional
        Number of galaxies laid out on a square grid ``spacing`` pixels apart, with
        ids ``syn-0001``, ...; redshift 1.5-3, bulge and disk log10 formed masses
        9.3-10.3 and 9.5-10.2, axis ratio 0.5-0.9 and position angle drawn from the
        seed.  Give either this or ``galaxies``.
    bands : sequence of str
        Filters (default :data:`FIELD_BANDS`).
    galaxies : sequence of mappings, optional
        Explicit galaxies: ``id``, ``y``, ``x`` (integer mosaic pixel of the stamp
        centre), ``redshift``, optional ``seed`` (default: position in the list + 1)
        and any of ``bulge``, ``disk``, ``clumps``, ``q``, ``pa`` (passed to
        :func:`galaxy`).
    mosaic_shape : (int, int), optional
        Mosaic ``(ny, nx)`` in pixels; required with ``galaxies``, derived from the
        grid otherwise.
    stamp : int
        Odd side (pixels) of the grid on which each galaxy is rendered; its light is
        truncated inside it (:func:`galaxy`, "Truncation").
    spacing : int
        Grid step in pixels with ``n_galaxies``.
    pixel_scale : float
        arcsec/pixel.
    depth : float
        1-sigma noise per pixel (uJy), the same in every band.
    seed : int
        Seeds the layout draws and the mosaic noise.
    segmentation : bool
        Write ``mosaics/seg.fits``.
    extra_rows : sequence of (id, y, x, redshift)
        Catalogue rows without a galaxy (e.g. a position outside the mosaics, for
        testing failures), given in mosaic pixel coordinates.
    center : (float, float)
        RA, Dec (degrees) of the mosaic centre.
    config : str or None
        File name of the TOML configuration written into ``folder``.
    stamp_size : int
        ``stamp_size`` of that configuration (cutout side in pixels).
    sedfit : mapping, optional
        ``[sedfit]`` options of that configuration (strings, numbers, booleans).
    emulator : optional
        SED emulator of :func:`galaxy` (default: the bundled one).

    Returns
    -------
    dict
        ``catalog``, ``truth_file``, ``config`` (paths; ``config`` None when not
        written), ``truth`` (the truth table, pandas.DataFrame), ``mosaics``
        (band -> ``{"sci", "err"[, "seg"]}`` paths relative to ``folder``), ``psf``
        (``"psf"``), ``shape`` (mosaic ``(ny, nx)``), ``bands``.

    Raises
    ------
    SchemaError
        Neither or both of ``n_galaxies`` and ``galaxies``; a missing key, a duplicate
        id or a stamp reaching outside the mosaic; an even or too small ``stamp``;
        values that cannot be written to the configuration.
    """
    import pandas as pd
    from astropy.io import fits
    from astropy.wcs import WCS

    from .profiles import radial_profile

    if (n_galaxies is None) == (galaxies is None):
        raise SchemaError("write_field: give exactly one of n_galaxies (a grid of random galaxies) and galaxies")
    stamp = int(stamp)
    if stamp < 9 or stamp % 2 == 0:
        raise SchemaError(f"write_field: stamp must be an odd number of pixels >= 9, got {stamp}")
    bands = [str(b) for b in bands]
    rng = np.random.default_rng(seed)
    if galaxies is None:
        if int(n_galaxies) < 1:
            raise SchemaError(f"write_field: n_galaxies must be >= 1, got {n_galaxies!r}")
        if int(spacing) < stamp:
            raise SchemaError(f"write_field: spacing ({spacing}) must be at least the stamp side ({stamp})")
        specs, shape = _field_layout(int(n_galaxies), np.random.default_rng([seed, 1]), int(spacing))
        if mosaic_shape is not None:
            shape = (int(mosaic_shape[0]), int(mosaic_shape[1]))
    else:
        if mosaic_shape is None:
            raise SchemaError("write_field: mosaic_shape (ny, nx) is required with galaxies")
        specs, shape = [dict(g) for g in galaxies], (int(mosaic_shape[0]), int(mosaic_shape[1]))
    h = stamp // 2
    seen = set()
    for k, g in enumerate(specs):
        missing = [key for key in ("id", "y", "x", "redshift") if key not in g]
        unknown = sorted(set(g) - set(_FIELD_KEYS) - set(_FIELD_GALAXY_KEYS))
        if missing or unknown:
            raise SchemaError(f"write_field: galaxy {k}: missing key(s) {missing}, unknown key(s) {unknown}; "
                              f"expected {list(_FIELD_KEYS)} and optionally {list(_FIELD_GALAXY_KEYS)}")
        y, x = int(g["y"]), int(g["x"])
        if y - h < 0 or x - h < 0 or y + h >= shape[0] or x + h >= shape[1]:
            raise SchemaError(f"write_field: galaxy {g['id']!r}: its {stamp}x{stamp} stamp at (y, x) = ({y}, {x}) "
                              f"reaches outside the {shape[0]}x{shape[1]} mosaic")
        if str(g["id"]) in seen:
            raise SchemaError(f"write_field: duplicate galaxy id {g['id']!r}")
        seen.add(str(g["id"]))

    folder = Path(folder)
    (folder / "mosaics").mkdir(parents=True, exist_ok=True)
    (folder / "psf").mkdir(exist_ok=True)
    emu = _load_emulator(emulator)
    sci = np.zeros((len(bands),) + shape)
    seg = np.zeros(shape, np.int32)
    psf = None
    truth_rows = []
    for k, g in enumerate(specs):
        kw = {key: g[key] for key in _FIELD_GALAXY_KEYS if key in g}
        obs, truth = galaxy(bands, shape=(stamp, stamp), pixel_scale=pixel_scale, physical=True,
                            redshift=float(g["redshift"]), seed=int(g.get("seed", k + 1)), noise=False, depth=depth,
                            emulator=emu, **kw)
        y, x = int(g["y"]), int(g["x"])
        sl = (slice(y - h, y + h + 1), slice(x - h, x + h + 1))
        sci[(slice(None),) + sl] += obs["image"].values
        seg[sl] = np.where(obs["segmentation"].values > 0, k + 1, seg[sl])
        if psf is None:
            psf = obs["psf"].values
        row = {"id": str(g["id"]), "redshift": float(g["redshift"]), "y": y, "x": x,
               "log_stellar_mass": float(truth.attrs["log_stellar_mass_total"]),
               "log_sfr100": float(truth.attrs["log_sfr100_total"]),
               "r50_mass_arcsec": float(radial_profile(truth, schema.STELLAR_MASS_DENSITY)["r50"])}
        row.update({f"r50_{b}_arcsec": float(v) for b, v in zip(bands, truth["r50"].values)})
        truth_rows.append(row)
    sci += rng.normal(0.0, depth, sci.shape)

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(center[0]), float(center[1])]
    w.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    w.wcs.cd = np.array([[-pixel_scale / 3600, 0.0], [0.0, pixel_scale / 3600]])
    hdr = w.to_header()
    hdr["BUNIT"] = "uJy"
    mosaics: dict[str, dict[str, str]] = {}
    for i, b in enumerate(bands):
        entry = {"sci": f"mosaics/{b}_sci.fits", "err": f"mosaics/{b}_err.fits"}
        fits.PrimaryHDU(sci[i].astype(np.float32), hdr).writeto(folder / entry["sci"], overwrite=True)
        fits.PrimaryHDU(np.full(shape, depth, np.float32), hdr).writeto(folder / entry["err"], overwrite=True)
        ph = fits.Header()
        ph["PIXELSCL"] = pixel_scale
        fits.PrimaryHDU(psf[i], ph).writeto(folder / "psf" / f"{b}.fits", overwrite=True)
        if segmentation:
            entry["seg"] = "mosaics/seg.fits"
        mosaics[b] = entry
    if segmentation:
        fits.PrimaryHDU(seg, hdr).writeto(folder / "mosaics" / "seg.fits", overwrite=True)

    truth_df = pd.DataFrame(truth_rows)
    ra, dec = w.pixel_to_world_values(truth_df["x"].to_numpy(float), truth_df["y"].to_numpy(float))
    truth_df.insert(1, "ra", np.asarray(ra, dtype=float))
    truth_df.insert(2, "dec", np.asarray(dec, dtype=float))
    lines = ["id,ra,dec,redshift"]
    lines += [f"{r.id},{r.ra:.8f},{r.dec:.8f},{r.redshift}" for r in truth_df.itertuples()]
    for gid, y, x, z in extra_rows:
        r, d = w.pixel_to_world_values(float(x), float(y))
        lines.append(f"{gid},{float(r):.8f},{float(d):.8f},{float(z)}")
    catalog = folder / "catalog.csv"
    catalog.write_text("\n".join(lines) + "\n")
    truth_file = folder / "truth.csv"
    truth_df.to_csv(truth_file, index=False)

    config_path = None
    if config is not None:
        reddest = max(bands, key=_filters.pivot_wavelength)
        text = ["version = 1", 'data_dir = "."', 'output_dir = "results"', 'psf = "psf"',
                f"stamp_size = {_toml_value(int(stamp_size))}", f"match_to = {_toml_value(reddest)}",
                "calibrate_errors = true", "", "[sedfit]"]
        text += [f"{key} = {_toml_value(v)}" for key, v in dict(sedfit or {"method": "fast"}).items()]
        for b, entry in mosaics.items():
            text += ["", f"[mosaics.{b}]"] + [f"{key} = {_toml_value(v)}" for key, v in entry.items()]
        config_path = folder / config
        config_path.write_text("\n".join(text) + "\n")
    return {"catalog": catalog, "truth_file": truth_file, "config": config_path, "truth": truth_df,
            "mosaics": mosaics, "psf": "psf", "shape": shape, "bands": bands}


def _load_emulator(emulator: Any) -> Any:
    """The emulator object for physical mode (default: the bundled one, loaded lazily)."""
    if emulator is None or isinstance(emulator, (str, os.PathLike)):
        from .sed import load_emulator

        return load_emulator("default" if emulator is None else emulator)
    for attr in ("param_names", "bounds", "evaluate"):
        if not hasattr(emulator, attr):
            raise SchemaError(f"emulator: expected an SED emulator (pegleg.sed.load_emulator), got "
                              f"{type(emulator).__name__} without {attr!r}")
    return emulator


def _cosmo_name() -> str:
    from .cosmology import NAME

    return NAME


def _physical_truth(truth: xr.Dataset, emu: Any, theta: np.ndarray, derived: Mapping[str, np.ndarray],
                    prof: np.ndarray, comp_names: list[str], redshift: float, ps: float,
                    comp_maps: list[dict[str, np.ndarray]], gradients: Mapping[int, Any]) -> xr.Dataset:
    """Add the physical (y, x) maps and attributes to ``truth`` (module docstring, "Physical SEDs").

    ``comp_maps[k]`` holds component ``k``'s stamp maps of surviving mass ``mass``, ``sfr100``,
    ``sfr10``, and mass x age (``age_w``, yr) and mass x A_V (``av_w``); ``derived`` its totals.
    """
    from .cosmology import kpc_per_arcsec as _kpa

    kpc_per_arcsec = _kpa(redshift)
    area = (ps * kpc_per_arcsec) ** 2
    mass_c = 10.0 ** derived["log_stellar_mass"]
    sfr100_c = 10.0 ** derived["log_sfr100"]
    age_c, av_c = derived["log_age_mw"], derived["av"]

    def total(key):
        return np.sum([cm[key] for cm in comp_maps], axis=0)

    mass = total("mass")
    mass_f = np.maximum(mass, PHYSICAL_FLOOR)
    sfr100_f = np.maximum(total("sfr100"), PHYSICAL_FLOOR)
    sfr10_f = np.maximum(total("sfr10"), PHYSICAL_FLOOR)
    has = mass > PHYSICAL_FLOOR
    age_int = math.log10(float(np.sum(mass_c * 10.0 ** age_c) / np.sum(mass_c)))
    av_int = float(np.sum(mass_c * av_c) / np.sum(mass_c))
    with np.errstate(divide="ignore", invalid="ignore"):
        age = np.where(has, np.log10(np.maximum(total("age_w") / np.where(has, mass, 1.0), PHYSICAL_FLOOR)),
                       age_int)
        av = np.where(has, total("av_w") / np.where(has, mass, 1.0), av_int)

    Yd, Xd = schema.Y, schema.X
    maps = {
        schema.LOG_STELLAR_MASS: np.log10(mass_f),
        schema.STELLAR_MASS_DENSITY: mass_f / area,
        schema.LOG_SFR100: np.log10(sfr100_f),
        schema.LOG_SFR10: np.log10(sfr10_f),
        schema.SFR_DENSITY: sfr100_f / area,
        schema.LOG_AGE_MW: age,
        schema.AV: av,
    }
    out = truth.copy()
    for name, data in maps.items():
        units, long_name = schema.PHYSICAL[name]
        out[name] = schema.set_attrs(xr.DataArray(data, dims=(Yd, Xd)), units, long_name)
    pnames = [str(n) for n in emu.param_names]
    out = out.assign_coords(sed_param=("sed_param", np.array(pnames, dtype=object),
                                       {"long_name": "emulator parameter", "units": "1"}))
    out["component_sed_params"] = schema.set_attrs(
        xr.DataArray(theta, dims=("component", "sed_param")), "1",
        "emulator parameters of each component (units per parameter)")
    out["component_profile"] = schema.set_attrs(
        xr.DataArray(prof, dims=("component", Yd, Xd)), "1",
        "normalised intrinsic pixel-integrated profile of each component (sums to 1 over the rendered region)")
    attrs = {
        "sed_model": "emulator",
        "emulator": str(getattr(emu, "name", type(emu).__name__)),
        "sed_param_names": json.dumps(pnames),
        "cosmology": _cosmo_name(),
        "kpc_per_arcsec": kpc_per_arcsec,
        "pixel_area_kpc2": area,
        "log_stellar_mass_total": math.log10(float(mass_c.sum())),
        "log_sfr100_total": math.log10(max(float(sfr100_c.sum()), PHYSICAL_FLOOR)),
    }
    ilm = pnames.index("log_mass_formed")
    for k, name in enumerate(comp_names):
        attrs[f"{name}_sed_params"] = np.asarray(theta[k], dtype=np.float64)
        attrs[f"{name}_log_mass_formed"] = float(theta[k, ilm])
        for key in ("log_stellar_mass", "log_sfr100", "log_sfr10", "log_age_mw", "av"):
            attrs[f"{name}_{key}"] = float(derived[key][k])
        if k in gradients:
            attrs[f"{name}_sed_params_outer"] = np.asarray(gradients[k].outer, dtype=np.float64)
            attrs[f"{name}_gradient_radius"] = float(gradients[k].radius)
    out.attrs.update(attrs)
    return out
