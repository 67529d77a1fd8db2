"""Exact reference SED model of pegleg: bagpipes with a Prospector-style parametrisation.

The emulator shipped with pegleg is trained on this module, and this module is the
truth it is tested against.  Every model is computed by bagpipes (BC03 + MILES stellar
grids, Cloudy nebular grids, Inoue+14 IGM, Draine & Li dust emission; all shipped in
the bagpipes wheel) through **one reused** ``bagpipes.model_galaxy`` per filter set,
updated in place for every parameter vector (never rebuilt per call).

Parameters (:data:`PARAM_NAMES` order, bounds in :data:`BOUNDS`)
----------------------------------------------------------------
``log_mass_formed``
    log10 of the total stellar mass formed (Msun), [6, 12.5].
``redshift``
    [0.01, 10] (bagpipes' ``config.max_redshift``); luminosity distance for a flat
    LCDM with H0 = 70, Om0 = 0.3 (bagpipes' cosmology).
``log_metallicity``
    log10(Z / Zsun) of all stars (and of the nebular gas), [-2, 0.2].
``av``
    V-band attenuation of the diffuse ISM (mag), [0, 4].
``delta``
    power-law slope modification of the Salim et al. (2018) curve (bagpipes
    ``"Salim"``; 0 = Calzetti), [-1, 0.4].  The 2175 A bump strength is tied to the
    slope as in Kriek & Conroy (2013) and Prospector's ``dust_type=4``:
    ``B = max(0, 0.85 - 1.9 delta)``.
``eta``
    birth-cloud attenuation factor: stars younger than ``t_bc`` = 10 Myr (and their
    nebular emission) see ``eta * av``, [1, 3].
``log_u``
    ionisation parameter of the nebular emission, [-4, -1].
``dsfr1`` ... ``dsfr6``
    non-parametric "continuity" star-formation history (Leja et al. 2019) in 7 bins
    of lookback time: 0-10 Myr, 10-100 Myr, then 5 bins log-spaced from 100 Myr to the
    age of the universe at ``redshift``.  ``dsfr{k} = log10(SFR_k / SFR_{k+1})`` with bin
    1 the YOUNGEST (Prospector's ``logsfr_ratios`` order and sign), so all zeros is a
    constant SFH and positive values make the galaxy younger.  bagpipes'
    ``continuity`` counts its ``dsfr`` from the oldest bin; the conversion is
    ``bagpipes dsfr{j} = pegleg dsfr{7-j}``.  Prior: Student-t (scale 0.3, nu = 2),
    truncated to [-5, 5].

The oldest bin edge is kept strictly inside the age of the universe as bagpipes
itself computes it (interpolation on its 0.01-step redshift grid), so no model forms
stars before the Big Bang.
"""

from __future__ import annotations

import contextlib
import io
import threading
import warnings

import numpy as np

from ..exceptions import EmulatorError
from . import filters as _filters

__all__ = [
    "PARAM_NAMES", "BOUNDS", "DSFR_SCALE", "DSFR_NU", "N_SFH_BINS", "T_BC_GYR",
    "photometry", "spectrum", "derived", "evaluate", "sample_prior", "sfh_bin_edges",
    "check_params", "bagpipes_components", "versions", "LINE_IDS", "check_lines",
    "bin_photometry", "sfh_age_grid", "igm_band_transmission", "distance_modulus",
]

PARAM_NAMES: tuple[str, ...] = (
    "log_mass_formed", "redshift", "log_metallicity", "av", "delta", "eta", "log_u",
    "dsfr1", "dsfr2", "dsfr3", "dsfr4", "dsfr5", "dsfr6",
)
N_SFH_BINS = 7
DSFR_SCALE = 0.3
DSFR_NU = 2.0
DSFR_LIMIT = 5.0
T_BC_GYR = 0.01
#: (P, 2) lower and upper bound of every parameter, in :data:`PARAM_NAMES` order.
BOUNDS = np.array([
    [6.0, 12.5],     # log_mass_formed
    [0.01, 10.0],    # redshift
    [-2.0, 0.2],     # log_metallicity
    [0.0, 4.0],      # av
    [-1.0, 0.4],     # delta
    [1.0, 3.0],      # eta
    [-4.0, -1.0],    # log_u
] + [[-DSFR_LIMIT, DSFR_LIMIT]] * (N_SFH_BINS - 1))
BOUNDS.setflags(write=False)

_IDX = {n: i for i, n in enumerate(PARAM_NAMES)}

#: pegleg's emission-line names (vacuum wavelengths, :data:`pegleg.spectrum.LINES`) -> the
#: line of bagpipes' Cloudy grid (its ``config.line_names``, air wavelengths) whose flux
#: :func:`spectrum` returns with ``lines=``.
LINE_IDS: dict[str, str] = {
    "Lyalpha": "H  1  1215.67A", "[OII]3727": "O  2  3726.03A", "[OII]3730": "O  2  3728.81A",
    "[NeIII]3870": "Ne 3  3868.76A", "Hgamma": "H  1  4340.46A", "Hbeta": "H  1  4861.32A",
    "[OIII]4960": "O  3  4958.91A", "[OIII]5008": "O  3  5006.84A", "[NII]6550": "N  2  6548.05A",
    "Halpha": "H  1  6562.80A", "[NII]6585": "N  2  6583.45A", "[SII]6718": "S  2  6716.44A",
    "[SII]6733": "S  2  6730.82A", "[SIII]9071": "S  3  9068.62A", "[SIII]9533": "S  3  9530.62A",
    "HeI10833": "Blnd  1.08302m", "Pabeta": "H  1  1.28181m", "Paalpha": "H  1  1.87510m",
}
_C_AA = 2.99792458e18  # speed of light, Angstrom / s
_L_SUN_CGS = 3.826e33  # erg/s, bagpipes' solar luminosity
# relative margin keeping the oldest bin edge inside bagpipes' age of the universe
_EDGE_MARGIN = 1e-5

_bp = None
_lock = threading.Lock()


def _bagpipes():
    """Import bagpipes quietly (it prints notes and leaves FITS files open at import)."""
    global _bp
    if _bp is None:
        with _lock:
            if _bp is None:
                try:
                    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                        warnings.simplefilter("ignore")
                        import bagpipes
                        import bagpipes.utils  # noqa: F401
                except ImportError as exc:  # pragma: no cover - environment
                    raise EmulatorError(
                        "the exact SED reference needs bagpipes: pip install bagpipes "
                        f"astro-sedpy ({exc})") from exc
                _bp = bagpipes
    return _bp


def versions() -> dict[str, str]:
    """Versions of the packages that define the reference models."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("pegleg", "bagpipes", "astro-sedpy", "numpy", "scipy", "astropy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:  # pragma: no cover
            out[pkg] = "unknown"
    return out


# --------------------------------------------------------------------------- params
def check_params(params) -> tuple[np.ndarray, bool]:
    """``params`` as a float (N, P) array and whether a single (P,) vector was given.

    Raises
    ------
    EmulatorError
        For a wrong shape, non-finite values or values outside :data:`BOUNDS` (the
        message names the parameter).
    """
    arr = np.asarray(params, dtype=float)
    single = arr.ndim == 1
    if single:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != len(PARAM_NAMES):
        raise EmulatorError(
            f"params must have shape (N, {len(PARAM_NAMES)}) or ({len(PARAM_NAMES)},) in "
            f"the order {PARAM_NAMES}, got shape {np.shape(params)}")
    for i, name in enumerate(PARAM_NAMES):
        col = arr[:, i]
        if not np.all(np.isfinite(col)):
            raise EmulatorError(f"parameter {name!r} has non-finite values")
        lo, hi = BOUNDS[i]
        bad = (col < lo) | (col > hi)
        if bad.any():
            raise EmulatorError(
                f"parameter {name!r} = {col[bad][0]:g} is outside its bounds [{lo:g}, {hi:g}]")
    return arr, single


def _age_of_universe_myr(z: float) -> float:
    """Age of the universe at ``z`` in Myr exactly as bagpipes' SFH computes it."""
    u = _bagpipes().utils
    return 1e3 * float(np.interp(z, u.z_array, u.age_at_z))


def sfh_bin_edges(redshift: float) -> np.ndarray:
    """The 8 lookback-time bin edges (Myr) of the continuity SFH at ``redshift``."""
    t_univ = _age_of_universe_myr(redshift) * (1.0 - _EDGE_MARGIN)
    old = np.logspace(2.0, np.log10(t_univ), N_SFH_BINS - 1)
    return np.concatenate([[0.0, 10.0], old])


def _new_components(p: np.ndarray) -> dict:
    comps = {
        "redshift": 1.0,
        "t_bc": T_BC_GYR,
        "continuity": {"massformed": 10.0, "metallicity": 1.0,
                       "bin_edges": list(sfh_bin_edges(1.0))},
        "dust": {"type": "Salim", "Av": 0.0, "delta": 0.0, "B": 0.85, "eta": 1.0},
        "nebular": {"logU": -2.0},
    }
    for j in range(1, N_SFH_BINS):
        comps["continuity"][f"dsfr{j}"] = 0.0
    _fill_components(comps, p)
    return comps


def _fill_components(comps: dict, p: np.ndarray) -> None:
    """Write parameter vector ``p`` into a bagpipes model_components dict in place."""
    z = float(p[_IDX["redshift"]])
    comps["redshift"] = z
    c = comps["continuity"]
    c["massformed"] = float(p[_IDX["log_mass_formed"]])
    c["metallicity"] = float(10.0 ** p[_IDX["log_metallicity"]])
    c["bin_edges"] = [float(e) for e in sfh_bin_edges(z)]
    dsfr = [float(p[_IDX[f"dsfr{k}"]]) for k in range(1, N_SFH_BINS)]
    for j in range(1, N_SFH_BINS):  # bagpipes counts from the oldest bin
        c[f"dsfr{j}"] = dsfr[N_SFH_BINS - 1 - j]
    d = comps["dust"]
    d["Av"] = float(p[_IDX["av"]])
    d["delta"] = float(p[_IDX["delta"]])
    d["B"] = max(0.0, 0.85 - 1.9 * d["delta"])
    d["eta"] = float(p[_IDX["eta"]])
    comps["nebular"]["logU"] = float(p[_IDX["log_u"]])


def bagpipes_components(params) -> dict:
    """The bagpipes ``model_components`` dict of one parameter vector (for inspection)."""
    arr, _ = check_params(params)
    if arr.shape[0] != 1:
        raise EmulatorError("bagpipes_components takes one parameter vector")
    return _new_components(arr[0])


# --------------------------------------------------------------------------- models
class _Model:
    """One bagpipes model_galaxy (photometry, or a spectrum on a wavelength grid).

    The photometric model is built once per process with ALL available filters, so its
    wavelength sampling (which bagpipes derives from the filter set) and hence every
    magnitude does not depend on which filters a call asks for; a call's filters only
    swap in a (cached) bagpipes ``filter_set`` resampled onto that same grid.
    """

    def __init__(self, filters=None, spec_wavs_aa=None):
        bp = _bagpipes()
        p0 = np.mean(BOUNDS, axis=1)
        p0[_IDX["redshift"]] = 1.0
        self.comps = _new_components(p0)
        self.names = tuple(filters) if filters is not None else None
        filt_list = _filters.filter_files(self.names) if self.names else None
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            self.model = bp.model_galaxy(self.comps, filt_list=filt_list,
                                         spec_wavs=spec_wavs_aa, spec_units="mujy")
        self._sets = {}
        if self.names:
            self._sets[self.names] = (self.model.filter_set, filt_list, self._pivots(self.names))
            self.use(self.names)

    @staticmethod
    def _pivots(names):
        return np.array([_filters.pivot_wavelength(n) * 1e4 for n in names])

    def use(self, names: tuple[str, ...]) -> None:
        """Make ``names`` the filters that :meth:`update` integrates."""
        entry = self._sets.get(names)
        if entry is None:
            bp = _bagpipes()
            files = _filters.filter_files(names)
            fs = bp.filters.filter_set(files)
            fs.resample_filter_curves(self.model.wavelengths)
            entry = self._sets[names] = (fs, files, self._pivots(names))
        self.model.filter_set, self.model.filt_list, self.pivot_aa = entry

    def update(self, p: np.ndarray) -> None:
        _fill_components(self.comps, p)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            try:
                self.model.update(self.comps)
            except RuntimeWarning as exc:  # pragma: no cover - excluded by the bin edges
                raise EmulatorError(f"bagpipes refused parameters {dict(zip(PARAM_NAMES, p))}: "
                                    f"{exc}") from exc

    def fnu(self) -> np.ndarray:
        """The current model's f_nu (erg/s/cm2/Hz) in the filters in use."""
        flam = np.atleast_1d(self.model.photometry)  # photon-weighted <f_lambda>, cgs / A
        return flam * self.pivot_aa ** 2 / _C_AA  # exact for photon-counting curves

    def mags(self) -> np.ndarray:
        fnu = self.fnu()
        with np.errstate(divide="ignore", invalid="ignore"):
            m = -2.5 * np.log10(fnu) - 48.6
        return np.where(fnu > 0, m, np.inf)

    def derived(self) -> dict[str, float]:
        return _sfh_derived(self.model.sfh)


_MODELS: dict = {}


def _model_for(filters, *, dust_probe: bool = False) -> _Model:
    """The process's photometric model, set to integrate ``filters``.

    With ``dust_probe`` a second model whose dust re-emission is replaced by a unit spike
    at its reddest wavelength (1e8 A, outside every filter): its photometry has no dust
    emission and its spectrum's last value measures the absorbed luminosity
    (:func:`bin_photometry` with ``split_dust=True``)."""
    key = "phot_probe" if dust_probe else "phot"
    m = _MODELS.get(key)
    if m is None:
        m = _Model(filters=_filters.available_filters())
        if dust_probe:
            spike = np.zeros_like(m.model.wavelengths)
            spike[-1] = 1.0
            m.model.dust_emission.spectrum = lambda *args, **kw: spike
        _MODELS[key] = m
    m.use(tuple(filters))
    return m


def _resolve_filters(filters) -> tuple[str, ...]:
    if isinstance(filters, str):
        filters = [filters]
    names = tuple(filters)
    if not names:
        raise EmulatorError("filters must name at least one filter")
    for n in names:
        _filters.sedpy_name(n)  # raises EmulatorError listing the available names
    return names


def _sfh_derived(sfh) -> dict[str, float]:
    ages = sfh.ages
    widths = sfh.age_widths
    rate = sfh.sfh

    def mean_sfr(t):
        mask = ages < t
        return float(np.sum(rate[mask] * widths[mask]) / np.sum(widths[mask]))

    with np.errstate(divide="ignore"):
        return {
            "log_stellar_mass": float(sfh.stellar_mass),
            "log_mass_formed": float(sfh.formed_mass),
            "log_sfr100": float(np.log10(mean_sfr(1e8))),
            "log_sfr10": float(np.log10(mean_sfr(1e7))),
            "log_age_mw": float(np.log10(sfh.mass_weighted_age * 1e9)),
        }


_DERIVED_KEYS = ("log_stellar_mass", "log_mass_formed", "log_sfr100", "log_sfr10",
                 "log_age_mw", "av")


def evaluate(params, filters) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """AB magnitudes (as :func:`photometry`) and derived quantities (as :func:`derived`)
    from the same bagpipes models (one update per parameter vector)."""
    arr, single = check_params(params)
    names = _resolve_filters(filters)
    model = _model_for(names)
    mags = np.empty((arr.shape[0], len(names)))
    der = {k: np.empty(arr.shape[0]) for k in _DERIVED_KEYS}
    for i, p in enumerate(arr):
        model.update(p)
        mags[i] = model.mags()
        for k, v in model.derived().items():
            der[k][i] = v
    der["av"][:] = arr[:, _IDX["av"]]
    if single:
        return mags[0], {k: v[:1] for k, v in der.items()}
    return mags, der


def photometry(params, filters) -> np.ndarray:
    """Exact AB magnitudes of the models ``params`` in ``filters``.

    Parameters
    ----------
    params : array (N, P) or (P,)
        In :data:`PARAM_NAMES` order, inside :data:`BOUNDS`.
    filters : sequence of str
        pegleg filter names (see :func:`pegleg.sed.filters.available_filters`).

    Returns
    -------
    (N, F) array, or (F,) for a single vector.  ``inf`` where the model has no flux
    (e.g. blueward of the Lyman limit at high redshift).
    """
    arr, single = check_params(params)
    names = _resolve_filters(filters)
    model = _model_for(names)
    out = np.empty((arr.shape[0], len(names)))
    for i, p in enumerate(arr):
        model.update(p)
        out[i] = model.mags()
    return out[0] if single else out


_ISOLATE_DEX = 40.0


def bin_photometry(params, filters, *, split_dust: bool = False):
    """Photometry of each SFH bin alone: the exact linear decomposition of a model.

    bagpipes' spectrum is linear in the star-formation history (SSP weights on its age
    grid; nebular emission, both dust screens, dust re-emission and the IGM all act
    linearly on them), so a model with bin masses ``m_k`` has flux ``sum_k m_k F_k``
    where ``F_k`` is the flux of one solar mass formed at constant rate in bin ``k``
    alone.  This returns ``F_k`` -- computed by bagpipes with every other bin's SFR
    10^-40 times lower -- for the parameters' redshift, metallicity, dust and log U
    (``log_mass_formed`` and ``dsfr*`` are ignored).  The decomposition reproduces
    :func:`photometry` to 1e-14 mag (``tests/test_sps.py``).

    Returns
    -------
    flux : (N, 7, F) array
        uJy per solar mass formed in bin k (bin 0 = the youngest, 0-10 Myr).
    surviving : (N, 7) array
        Fraction of the bin's formed mass that survives (bagpipes' ``stellar_mass``).
    dust_lum : (N, 7) array, only with ``split_dust=True``
        Luminosity absorbed by dust (Lsun per solar mass formed in the bin), which
        bagpipes re-emits with its Draine & Li template (q_PAH = 2, U_min = 1,
        gamma = 0.01); ``flux`` then EXCLUDES that re-emission
        (:mod:`pegleg.sed.components` adds it back exactly).
    """
    arr, single = check_params(params)
    names = _resolve_filters(filters)
    model = _model_for(names, dust_probe=split_dust)
    flux = np.empty((arr.shape[0], N_SFH_BINS, len(names)))
    surv = np.empty((arr.shape[0], N_SFH_BINS))
    dust = np.empty((arr.shape[0], N_SFH_BINS))
    c = model.comps["continuity"]
    for i, p in enumerate(arr):
        q = p.copy()
        q[_IDX["log_mass_formed"]] = 0.0
        _fill_components(model.comps, q)
        for k in range(N_SFH_BINS):
            log_sfr = np.full(N_SFH_BINS, -_ISOLATE_DEX)
            log_sfr[k] = 0.0
            step = log_sfr[:-1] - log_sfr[1:]        # pegleg dsfr, youngest first
            for j in range(1, N_SFH_BINS):           # bagpipes counts from the oldest bin
                c[f"dsfr{j}"] = float(step[N_SFH_BINS - 1 - j])
            model.model.update(model.comps)
            flux[i, k] = model.fnu() * 1e29  # erg/s/cm2/Hz -> uJy
            surv[i, k] = 10.0 ** model.model.sfh.stellar_mass
            if split_dust:  # the spike: dust_lum * L_sun / (4 pi d_L^2 (1 + z)) at IGM = 1
                mm = model.model
                dust[i, k] = mm.spectrum_full[-1] * mm.lum_flux * (1.0 + mm.model_comp["redshift"]) / _L_SUN_CGS
    out = (flux, surv, dust) if split_dust else (flux, surv)
    return tuple(a[0] for a in out) if single else out


def sfh_age_grid() -> dict[str, np.ndarray]:
    """bagpipes' SFH age grid and age-redshift table, which fix the bin masses exactly.

    ``ages`` and ``widths`` (yr) are the fine grid on which bagpipes samples every SFH
    (a bin holds the grid points strictly inside its edges); ``z`` and ``age_gyr``
    the table it interpolates the age of the universe from.
    """
    _, sfh = _sfh_model()
    u = _bagpipes().utils
    return {"ages": np.array(sfh.ages), "widths": np.array(sfh.age_widths),
            "z": np.array(u.z_array), "age_gyr": np.array(u.age_at_z)}


def igm_band_transmission(filters, redshift) -> np.ndarray:
    """IGM transmission of each band for a source flat in f_nu: (Z, F) in [0, 1].

    bagpipes' Inoue+14 transmission at each ``redshift``, averaged over the band as
    bagpipes integrates photometry (photon counting, its wavelength sampling).  The
    SFH-bin emulator divides its targets by it, so the network never learns the
    Lyman-alpha forest and Lyman-limit cliffs.
    """
    names = _resolve_filters(filters)
    model = _model_for(names)
    z = np.atleast_1d(np.asarray(redshift, dtype=float))
    wav = model.model.wavelengths
    fs = model.model.filter_set
    out = np.empty((z.size, len(names)))
    for i, zi in enumerate(z):
        flat = (wav * (1.0 + zi)) ** -2.0
        trans = model.model.igm.trans(float(zi))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = np.atleast_1d(fs.get_photometry(flat * trans, float(zi))) / \
                np.atleast_1d(fs.get_photometry(flat, float(zi)))
    return np.clip(np.nan_to_num(out, nan=0.0), 0.0, 1.0)


def distance_modulus(redshift) -> np.ndarray:
    """``5 log10(d_L / 10 pc) - 2.5 log10(1 + z)`` in bagpipes' cosmology (mag): the AB
    magnitude of a source minus its absolute magnitude at the same rest frame."""
    from astropy import units as u
    from astropy.cosmology import FlatLambdaCDM

    z = np.asarray(redshift, dtype=float)
    dl = FlatLambdaCDM(H0=70.0, Om0=0.3).luminosity_distance(z).to_value(u.pc)
    return 5.0 * np.log10(dl / 10.0) - 2.5 * np.log10(1.0 + z)


def check_lines(lines, *, error: type[Exception] = EmulatorError, what: str = "lines") -> list[str]:
    """``lines`` (one name or a sequence of names of :data:`LINE_IDS`) as a list; an unknown
    name raises ``error`` naming ``what`` and listing the available lines."""
    names = [lines] if isinstance(lines, str) else list(lines)
    unknown = [n for n in names if n not in LINE_IDS]
    if unknown:
        raise error(f"{what}: unknown line(s) {unknown}; available: {sorted(LINE_IDS)}")
    return names


def spectrum(params, wavelength, *, lines=None):
    """Observed-frame flux density (uJy) of the models at ``wavelength`` (micron).

    ``wavelength`` must be 1-D and strictly increasing.  bagpipes resamples its model
    (R = 1000 over the requested range) onto these wavelengths, conserving flux; one
    model_galaxy is kept per wavelength grid.  Returns (N, W), or (W,) for one vector.

    With ``lines`` (names of :data:`LINE_IDS`) it returns ``(spectrum, line_flux)``:
    the same models' observed emission-line fluxes in erg/s/cm2, (N, L) or (L,) --
    bagpipes' own Cloudy line fluxes after the birth-cloud and diffuse dust, exact (the
    lines in the spectrum are unresolved spikes on the grid, which a fit of Gaussians
    cannot measure).
    """
    names = None if lines is None else check_lines(lines)
    arr, single = check_params(params)
    wl = np.asarray(wavelength, dtype=float)
    if wl.ndim != 1 or wl.size < 2 or not np.all(np.isfinite(wl)) or np.any(np.diff(wl) <= 0) \
            or wl[0] <= 0:
        raise EmulatorError("wavelength must be a 1-D, positive, strictly increasing array "
                            "(micron) with at least two values")
    aa = wl * 1e4
    key = ("spec", aa.tobytes())
    model = _MODELS.get(key)
    if model is None:
        model = _MODELS[key] = _Model(spec_wavs_aa=aa)
    out = np.empty((arr.shape[0], wl.size))
    lf = np.zeros((arr.shape[0], len(names or ())))
    for i, p in enumerate(arr):
        model.update(p)
        out[i] = model.model.spectrum[:, 1]
        if names:
            fluxes = model.model.line_fluxes
            lf[i] = [fluxes[LINE_IDS[n]] for n in names]
    if names is None:
        return out[0] if single else out
    return (out[0], lf[0]) if single else (out, lf)


_SFH = None


def _sfh_model():
    """The process's bagpipes ``star_formation_history`` and its components dict (built
    once, with the bounds' mid-point; :func:`_fill_components` and ``update`` reuse it)."""
    global _SFH
    if _SFH is None:
        _bagpipes()
        import importlib

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mod = importlib.import_module("bagpipes.models.star_formation_history")
            comps = _new_components(np.mean(BOUNDS, axis=1))
            _SFH = (comps, mod.star_formation_history(comps))
    return _SFH


def derived(params) -> dict[str, np.ndarray]:
    """Physical quantities of the models ``params``, each an (N,) array.

    ``log_stellar_mass`` (surviving stars and remnants as bagpipes counts them, log10
    Msun), ``log_mass_formed``, ``log_sfr100`` and ``log_sfr10`` (log10 Msun/yr, mean
    SFR over the last 100 and 10 Myr, integrated on bagpipes' SFH age grid),
    ``log_age_mw`` (log10 yr, mass-formed-weighted lookback age), ``av`` (the diffuse
    V-band attenuation parameter).  A single (P,) vector gives (1,) arrays.
    """
    arr, _ = check_params(params)
    der = {k: np.empty(arr.shape[0]) for k in _DERIVED_KEYS}
    comps, sfh = _sfh_model()
    for i, p in enumerate(arr):
        _fill_components(comps, p)
        sfh.update(comps)
        for k, v in _sfh_derived(sfh).items():
            der[k][i] = v
    der["av"][:] = arr[:, _IDX["av"]]
    return der


def sample_prior(n: int, seed=None) -> np.ndarray:
    """``n`` draws (n, P) from the fitting prior, deterministic for a given ``seed``.

    Uniform within :data:`BOUNDS` for every parameter except ``dsfr1..6``: Student-t
    with scale 0.3 and nu = 2 (Prospector's continuity prior), truncated to [-5, 5]
    (values outside are redrawn).
    """
    n = int(n)
    if n < 0:
        raise EmulatorError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(PARAM_NAMES)))
    for i, name in enumerate(PARAM_NAMES):
        lo, hi = BOUNDS[i]
        if name.startswith("dsfr"):
            col = rng.standard_t(DSFR_NU, size=n) * DSFR_SCALE
            bad = np.abs(col) > DSFR_LIMIT
            while bad.any():
                col[bad] = rng.standard_t(DSFR_NU, size=int(bad.sum())) * DSFR_SCALE
                bad = np.abs(col) > DSFR_LIMIT
            out[:, i] = col
        else:
            out[:, i] = rng.uniform(lo, hi, size=n)
    return out
