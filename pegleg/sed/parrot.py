"""Read Parrot's published emulator weights (Mathews et al. 2023, Prospector-beta).

Parrot (https://github.com/elijahmathews/Parrot.jl, networks trained in Julia/Flux) ships
its emulators as ``.npy`` files holding *pickled* numpy object arrays
(https://github.com/elijahmathews/MathewsEtAl2023, ``data/``).  Unpickling can execute
arbitrary code, so :func:`load_parrot` refuses unless ``trust=True``; this module is the
only place in pegleg that calls ``np.load(..., allow_pickle=True)``.

The layouts below were confirmed from that repository's ``data/README.md`` and the
reference evaluation code ``src/models.py`` (``JAXGELUEmulator``, ``PhotoMultiEmulator``)
and ``src/utils.py``; only synthetic files in these layouts were tested here (the real
weight files were not downloaded).

"Single" network (``parrot_v4_obsphot_<n>n_5l_05z30.npy``): an object array (or
list/tuple) of length 6::

    [0] filter_info  dict sedpy filter name -> output column, **1-based** (Julia)
    [1] (norm_mu, norm_sig)        input normalisation, (P,) each
    [2] (weights, biases)          lists; weights[i] has shape (n_out, n_in) (y = W x + b)
    [3] (denorm_mu, denorm_sig)    output de-normalisation, (F_native,) each
    [4] resid                      (F_native, 11) test-set residual statistics per filter:
                                   -4,-3,-2,-1 sigma quantiles, median, +1..+4 sigma, mean, std
    [5] parameter_ranges           P pairs (low, high) of the training set

    Its parameters are not named in the file; they are Prospector-beta's 18 in the order
    of ``src/models.py`` (:data:`PROSPECTOR_BETA_PARAMETERS`, redshift at index 14).

"Stitched" network (``parrot_v4_obsphot_512n_5l_24s_00z24.npy``): a dict (a 0-d object
array wrapping it)::

    filters              ordered list of sedpy filter names
    filter_redir         dict name -> output column, **0-based**
    parameters           ordered list of parameter names
    parameter_limits     P pairs (low, high)
    zred_index           index of redshift in ``parameters``
    emulator_limits      K tuples (z0l, dzl, z0r, dzr): centre and full width of the
                         left and right overlap of sub-network k
    nets                 K tuples (norm, denorm, weights, biases, act) with
                         norm = (mu, sig), denorm = (mu, sig) as above
    resid_quants         (F_native, S, K) residual statistics per filter, statistic, net
    resid_quants_labels  S labels, including "std"

Evaluation (identical for both; hidden layers GELU -- tanh approximation, as
``jax.nn.gelu`` used by the reference code -- last layer linear)::

    u = denorm_sig * (W_L ... gelu(W_0 (theta - norm_mu) / norm_sig + b_0) ... + b_L) + denorm_mu

Stitched blending (Mathews et al. 2023 eqs. 11-12): with t(z; z0, dz) =
pi / (2 dz) (z - z0 + dz/2), sub-network k has weight 0 for z <= z0l - dzl/2 or
z >= z0r + dzr/2; 1 for z0l + dzl/2 <= z <= z0r - dzr/2; sin^2 t(z; z0l, dzl) inside its
left overlap and cos^2 t(z; z0r, dzr) inside its right overlap (later conditions win,
as ``numpy.piecewise``).  The outputs ``u`` are blended as ``sum_k w_k u_k``; only the
sub-networks with a non-zero weight are evaluated for each row.

Outputs are asinh magnitudes (Lupton et al. 1999) with softening ``b = 10**(-0.4 u0)``
maggies, ``u0 = 35`` (``b`` = 3.6e-11 Jy), i.e. ``u = -a asinh(x / 2b) + u0`` with
``a = 2.5 log10(e)`` and ``x`` the flux in maggies.  pegleg converts them exactly to AB
magnitudes, ``m = u - a log1p(-exp(-2 (u0 - u) / a))`` (the difference is < 1e-4 mag for
m < 30; the reference code simply equates the two); ``u >= u0`` (zero or negative flux)
gives NaN.

``sigma`` is the test-set residual standard deviation per filter (column 10 of
``resid``; for stitched files the median over sub-networks of the "std" statistic,
as ``modify_obs_stitched`` does), in asinh mag (= mag for sources brighter than ~30).
The full tables are kept as ``residual_quantiles``.

Naming.  ``massmet_1`` (or ``logmass``) becomes ``"log_mass_formed"`` (Prospector's
``mass_units = "mformed"``), ``zred`` becomes ``"redshift"``, ``massmet_2`` becomes
``"logzsol"``; other names are kept.  sedpy filter names map to pegleg's (``jwst_f444w`` ->
``F444W``, ``acs_wfc_f814w`` -> ``F814W``, ``wfc3_uvis_f814w`` -> ``WFC3_F814W``,
``wfc3_ir_f160w`` -> ``F160W``); the sedpy names are accepted as aliases, unmatched names
are kept as they are.

Mass scaling.  With ``mass_scaling="exact"`` (default) the networks are evaluated at
``log_mass_formed = reference_log_mass`` (10, clipped into the training range) and
magnitudes are shifted by exactly ``-2.5 (log_mass_formed - reference_log_mass)``, the
convention of :class:`~pegleg.sed.emulator.MLPEmulator` (photometry is proportional to
the formed mass at fixed other parameters).  ``mass_scaling="network"`` feeds the mass to
the networks as Parrot does.

Derived quantities.  Parrot emulates photometry only.  ``derived`` computes
``log_sfr100``, ``log_sfr10`` and ``log_age_mw`` (mass-weighted lookback time of the mass
formed) analytically from Prospector-beta's continuity SFH (``logsfr_ratios_*``, 7 age
bins set by redshift with WMAP9 as in ``src/models.py::zred_to_agebins``) and
``av = 2.5 log10(e) dust2``; ``log_stellar_mass`` (surviving) needs the surviving-mass
fraction, which the files do not contain, and is NaN.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from ..exceptions import EmulatorError
from .emulator import BaseEmulator, activation_function, _forward

__all__ = ["load_parrot", "ParrotEmulator", "PROSPECTOR_BETA_PARAMETERS",
           "asinh_to_ab", "stitch_weights"]

#: Parameter order of Parrot's single networks (``src/models.py``, ``plist``).
PROSPECTOR_BETA_PARAMETERS = (
    "massmet_1", "massmet_2", "logsfr_ratios_1", "logsfr_ratios_2", "logsfr_ratios_3",
    "logsfr_ratios_4", "logsfr_ratios_5", "logsfr_ratios_6", "dust2", "dust_index",
    "dust1_fraction", "log_fagn", "log_agn_tau", "gas_logz", "zred", "duste_qpah",
    "duste_umin", "log_duste_gamma",
)
_RENAME = {"massmet_1": "log_mass_formed", "logmass": "log_mass_formed",
           "zred": "redshift", "massmet_2": "logzsol"}
#: Prospector-beta's priors for the non-uniform parameters (``build_model_emulator``).
_PRIOR = {
    "dust2": {"type": "normal", "loc": 0.3, "scale": 1.0},
    "dust1_fraction": {"type": "normal", "loc": 1.0, "scale": 0.3},
    "duste_qpah": {"type": "normal", "loc": 2.0, "scale": 2.0},
    "duste_umin": {"type": "normal", "loc": 1.0, "scale": 10.0},
    "log_duste_gamma": {"type": "normal", "loc": -2.0, "scale": 1.0},
}
A_U = 2.5 * np.log10(np.e)
U0 = 35.0
_RESID_STD_COLUMN = 10


def asinh_to_ab(u, u0: float = U0) -> np.ndarray:
    """Exact AB magnitude of asinh magnitude ``u`` (softening ``10**(-0.4 u0)`` maggies)."""
    u = np.asarray(u, dtype=np.float64)
    y = (u0 - u) / A_U
    with np.errstate(invalid="ignore", divide="ignore"):
        m = u - A_U * np.log1p(-np.exp(-2.0 * y))
    return np.where(y > 0, m, np.nan)


def stitch_weights(z, limits) -> np.ndarray:
    """Blending weights (N, K) of K sub-networks with ``limits`` (K, 4) at redshifts ``z``."""
    z = np.asarray(z, dtype=np.float64)[:, None]
    lim = np.asarray(limits, dtype=np.float64).reshape(-1, 4)
    z0l, dzl, z0r, dzr = (lim[:, i][None, :] for i in range(4))
    with np.errstate(invalid="ignore", divide="ignore"):
        sin2 = np.sin(np.pi / (2 * dzl) * (z - z0l + 0.5 * dzl)) ** 2
        cos2 = np.cos(np.pi / (2 * dzr) * (z - z0r + 0.5 * dzr)) ** 2
    w = np.zeros(np.broadcast_shapes(z.shape, z0l.shape))
    # numpy.piecewise semantics: the last true condition wins
    w = np.where((z <= z0l - 0.5 * dzl) | (z >= z0r + 0.5 * dzr), 0.0, w)
    w = np.where((z >= z0l + 0.5 * dzl) & (z <= z0r - 0.5 * dzr), 1.0, w)
    w = np.where((z > z0l - 0.5 * dzl) & (z < z0l + 0.5 * dzl), sin2, w)
    w = np.where((z > z0r - 0.5 * dzr) & (z < z0r + 0.5 * dzr), cos2, w)
    return w


def _pegleg_filter_name(sedpy_name: str) -> str:
    from ..filters import instrument

    s = str(sedpy_name).strip().lower()
    for pattern, inst in ((r"jwst_(f\d+[a-z0-9]*)$", None), (r"wfc3_ir_(f\d+[a-z0-9]*)$", "WFC3"),
                          (r"wfc3_uvis_(f\d+[a-z0-9]*)$", "WFC3"),
                          (r"acs_wfc_(f\d+[a-z0-9]*)$", "ACS")):
        m = re.match(pattern, s)
        if m:
            band = m.group(1).upper()
            known = instrument(band)
            if known is None:
                return str(sedpy_name)
            if inst is None:
                return band if known in ("NIRCAM", "MIRI") else str(sedpy_name)
            return band if known == inst else f"{inst}_{band}"
    return str(sedpy_name)


class ParrotEmulator(BaseEmulator):
    """Parrot single or stitched network with pegleg's emulator API (see module docstring)."""

    def __init__(self, nets, limits, native_params, param_bounds, columns, native_filters,
                 sigma, residual_quantiles, *, zred_index, name="parrot",
                 mass_scaling="exact", reference_log_mass=10.0, kind="single"):
        if mass_scaling not in ("exact", "network"):
            raise EmulatorError(f"mass_scaling must be 'exact' or 'network', got {mass_scaling!r}")
        self.name = name
        self.kind = kind
        self.native_param_names = tuple(str(p) for p in native_params)
        names = [_RENAME.get(p, p) for p in self.native_param_names]
        names[int(zred_index)] = "redshift"
        pegleg_names = [_pegleg_filter_name(f) for f in native_filters]
        if len(set(pegleg_names)) != len(pegleg_names):
            pegleg_names = [str(f) for f in native_filters]
        aliases = {}
        for f, p in zip(native_filters, pegleg_names):
            aliases[str(f)] = pegleg_names.index(p)
            if "_" in p:
                continue
            from ..filters import instrument

            inst = instrument(p)
            if inst:
                aliases[f"{inst}_{p}"] = pegleg_names.index(p)
        prior = {n: dict(_PRIOR[n]) for n in names if n in _PRIOR}
        for n in names:
            if n.startswith("logsfr_ratios"):
                prior[n] = {"type": "student_t", "scale": 0.3, "nu": 2, "clip": 5}
        self._init_common(names, param_bounds, pegleg_names, sigma, prior, aliases=aliases)
        self.native_filters = tuple(str(f) for f in native_filters)
        self.residual_quantiles = residual_quantiles
        self.columns = np.asarray(columns, dtype=np.intp)
        self.limits = None if limits is None else np.asarray(limits, dtype=np.float64).reshape(-1, 4)
        self.mass_scaling = mass_scaling
        lo, hi = self.bounds[self._imass]
        self.reference_log_mass = float(np.clip(reference_log_mass, lo, hi))
        self.nets = nets
        self.activation = "gelu_tanh"

    # ----------------------------------------------------------------- evaluation
    def _asinh_mags(self, theta, fidx):
        cols = self.columns[fidx]
        x = theta.copy()
        if self.mass_scaling == "exact":
            x[:, self._imass] = self.reference_log_mass
        n = x.shape[0]
        if self.limits is None:
            weights = np.ones((n, 1))
        else:
            weights = stitch_weights(theta[:, self._iz], self.limits)
        u = np.zeros((n, cols.size), dtype=np.float64)
        for k, net in enumerate(self.nets):
            rows = np.flatnonzero(weights[:, k] != 0.0)
            if rows.size == 0:
                continue
            u[rows] += weights[rows, k][:, None] * self._run_net(net, x[rows], cols)
        return u

    @staticmethod
    def _run_net(net, x, cols):
        xn = x.astype(np.float32)
        xn -= net["norm_mu"]
        xn /= net["norm_sig"]
        w_last = net["W"][-1][:, cols]
        b_last = net["b"][-1][cols]
        y = _forward(xn, net["W"][:-1] + [w_last], net["b"][:-1] + [b_last], net["act"])
        y *= net["denorm_sig"][cols]
        y += net["denorm_mu"][cols]
        return y

    def _predict_valid(self, theta, fidx):
        mags = asinh_to_ab(self._asinh_mags(theta, fidx))
        if self.mass_scaling == "exact":
            mags += (-2.5 * (theta[:, self._imass] - self.reference_log_mass))[:, None]
        return mags

    def _derived_valid(self, theta):
        out = {}
        names = self.param_names
        if "dust2" in names:
            out["av"] = A_U * theta[:, names.index("dust2")]
        ratio_idx = [names.index(f"logsfr_ratios_{i}") for i in range(1, 20)
                     if f"logsfr_ratios_{i}" in names]
        if ratio_idx:
            out.update(_continuity_sfh(theta[:, self._imass], theta[:, ratio_idx],
                                       theta[:, self._iz]))
        return out


# ------------------------------------------------------------------ continuity SFH
_AGE_TABLE = None


def _age_universe_yr(z):
    """Age of the universe (yr) at ``z`` in WMAP9, interpolated from a table."""
    global _AGE_TABLE
    if _AGE_TABLE is None:
        from astropy.cosmology import WMAP9

        zz = np.concatenate([np.linspace(0.0, 30.0, 3001)])
        _AGE_TABLE = (zz, WMAP9.age(zz).to_value("yr"))
    return np.interp(z, *_AGE_TABLE)


def _continuity_sfh(logm, ratios, z, amin=7.1295):
    """log SFR(100 Myr), log SFR(10 Myr), log mass-weighted age (yr) of Prospector's
    continuity SFH (``zred_to_agebins`` / ``logmass_to_masses`` of the Parrot repo)."""
    n, nr = ratios.shape
    nbins = nr + 1
    tuniv = _age_universe_yr(z)
    ltmax = np.log10(0.9 * tuniv)
    agelims = np.empty((n, nbins + 1))
    low = z <= 3.0
    # z <= 3: [0, 7.47712, linspace(8, log tbinmax, nbins-2), log tuniv]
    frac = np.linspace(0.0, 1.0, nbins - 2)
    agelims[:, 0] = 0.0
    agelims[:, 1] = np.where(low, 7.47712, 0.0)
    agelims[:, 2:nbins] = np.where(low[:, None], 8.0 + frac * (ltmax[:, None] - 8.0), 0.0)
    # z > 3: linspace(amin, log tbinmax, nbins), first edge 0
    frac2 = np.linspace(0.0, 1.0, nbins)
    hi_lims = amin + frac2 * (ltmax[:, None] - amin)
    agelims[~low, 1:nbins] = hi_lims[~low, 1:]
    agelims[:, nbins] = np.log10(tuniv)
    edges = 10.0 ** agelims
    dt = np.diff(edges, axis=1)
    # SFR_i / SFR_0 = prod_{j<i} 10**-ratio_j  (ratio_j = log SFR_j / SFR_{j+1})
    rel_sfr = np.concatenate([np.ones((n, 1)), 10.0 ** -np.cumsum(np.clip(ratios, -10, 10), axis=1)], axis=1)
    mass_rel = rel_sfr * dt
    sfr0 = 10.0 ** logm / mass_rel.sum(axis=1)
    sfr = sfr0[:, None] * rel_sfr
    out = {}
    for key, window in (("log_sfr100", 1e8), ("log_sfr10", 1e7)):
        overlap = np.clip(np.minimum(edges[:, 1:], window) - edges[:, :-1], 0.0, None)
        with np.errstate(divide="ignore"):
            out[key] = np.log10((sfr * overlap).sum(axis=1) / window)
    mid = 0.5 * (edges[:, 1:] + edges[:, :-1])
    out["log_age_mw"] = np.log10((mass_rel * mid).sum(axis=1) / mass_rel.sum(axis=1))
    return out


# ------------------------------------------------------------------ loading
def _as_net(norm, denorm, weights, biases, act, where, label):
    try:
        norm_mu, norm_sig = (np.asarray(a, dtype=np.float32).ravel() for a in norm)
        denorm_mu, denorm_sig = (np.asarray(a, dtype=np.float32).ravel() for a in denorm)
        W = [np.ascontiguousarray(np.asarray(w, dtype=np.float32).T) for w in weights]
        b = [np.asarray(v, dtype=np.float32).ravel() for v in biases]
    except (TypeError, ValueError) as exc:
        raise EmulatorError(f"{where}: {label}: cannot read the network arrays: {exc}") from None
    if len(W) != len(b) or not W:
        raise EmulatorError(f"{where}: {label}: {len(W)} weight matrices but {len(b)} bias vectors")
    n_in = norm_mu.size
    if norm_sig.size != n_in:
        raise EmulatorError(f"{where}: {label}: normalisation mean/std sizes differ")
    for i, (w, v) in enumerate(zip(W, b)):
        if w.ndim != 2 or w.shape[0] != n_in or v.shape != (w.shape[1],):
            raise EmulatorError(
                f"{where}: {label}: layer {i} weights {w.T.shape} / bias {v.shape} do not "
                f"match an input of size {n_in}")
        n_in = w.shape[1]
    if denorm_mu.shape != (n_in,) or denorm_sig.shape != (n_in,):
        raise EmulatorError(f"{where}: {label}: de-normalisation does not match {n_in} outputs")
    act_name = "gelu_tanh"
    if act is not None:
        text = str(getattr(act, "__name__", act)).lower()
        for key, name in (("gelu", "gelu_tanh"), ("silu", "silu"), ("swish", "silu"),
                          ("relu", "relu"), ("tanh", "tanh")):
            if key in text:
                act_name = name
                break
        else:
            warnings.warn(f"{where}: {label}: unrecognised activation {act!r}; using GELU "
                          f"(the activation of Parrot's published networks)", stacklevel=3)
    return {"norm_mu": norm_mu, "norm_sig": norm_sig, "denorm_mu": denorm_mu,
            "denorm_sig": denorm_sig, "W": W, "b": b, "act": activation_function(act_name),
            "activation": act_name}


def _bounds(ranges, where):
    try:
        b = np.array([np.asarray(r, dtype=np.float64).ravel()[:2] for r in ranges])
    except (TypeError, ValueError) as exc:
        raise EmulatorError(f"{where}: parameter ranges unreadable: {exc}") from None
    if b.ndim != 2 or b.shape[1] != 2:
        raise EmulatorError(f"{where}: parameter ranges must be (low, high) pairs")
    return b


def _sigma_single(resid, nfilt, where):
    r = np.asarray(resid, dtype=np.float64)
    if r.ndim == 2 and r.shape[0] == nfilt and r.shape[1] > _RESID_STD_COLUMN:
        return r[:, _RESID_STD_COLUMN], r
    if r.ndim == 2 and r.shape[1] == nfilt and r.shape[0] > _RESID_STD_COLUMN:
        return r[_RESID_STD_COLUMN, :], r.T
    raise EmulatorError(f"{where}: residual table has shape {r.shape}; expected ({nfilt}, 11)")


def load_parrot(path, *, trust: bool = False, mass_scaling: str = "exact",
                reference_log_mass: float = 10.0) -> ParrotEmulator:
    """Load a Parrot ``.npy`` weights file (single or stitched network; module docstring).

    The file is a pickle: reading it can run arbitrary code, so ``trust=True`` is
    required (only pass it for files from a source you trust, e.g. the published
    Mathews et al. 2023 release).
    """
    path = Path(path)
    where = f"Parrot file {str(path)!r}"
    if not trust:
        raise EmulatorError(
            f"{where} is a pickled numpy object array, and unpickling a file can execute "
            f"arbitrary code; pass trust=True only if you trust its source")
    try:
        raw = np.load(path, allow_pickle=True)  # the only allow_pickle=True in pegleg
    except FileNotFoundError:
        raise EmulatorError(f"{where} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - unpickling can raise anything
        raise EmulatorError(f"{where} could not be read: {type(exc).__name__}: {exc}") from None
    if isinstance(raw, np.lib.npyio.NpzFile):
        raw.close()
        raise EmulatorError(f"{where} is an .npz archive, not a Parrot .npy file")
    obj = raw
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj.item()
    try:
        if isinstance(obj, dict):
            return _load_stitched(obj, where, path, mass_scaling, reference_log_mass)
        if len(obj) == 6:
            return _load_single(list(obj), where, path, mass_scaling, reference_log_mass)
    except EmulatorError:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise EmulatorError(f"{where}: unexpected content ({type(exc).__name__}: {exc})") from None
    raise EmulatorError(
        f"{where}: neither a single-network (length-6 array) nor a stitched (dict) Parrot file")


def _load_single(items, where, path, mass_scaling, ref_mass):
    redir, norm, layers, denorm, resid, ranges = items
    if not isinstance(redir, dict):
        raise EmulatorError(f"{where}: element 0 must be the filter -> column dict")
    filters = list(redir)
    columns = np.array([int(redir[f]) - 1 for f in filters])  # 1-based (Julia)
    weights, biases = layers
    net = _as_net(norm, denorm, weights, biases, None, where, "network")
    nout = net["denorm_mu"].size
    if columns.min() < 0 or columns.max() >= nout:
        raise EmulatorError(f"{where}: filter columns outside 1..{nout}")
    order = np.argsort(columns, kind="stable")
    filters = [filters[i] for i in order]
    columns = columns[order]
    bounds = _bounds(ranges, where)
    P = bounds.shape[0]
    if P != len(PROSPECTOR_BETA_PARAMETERS) or net["norm_mu"].size != P:
        raise EmulatorError(
            f"{where}: {net['norm_mu'].size} network inputs and {P} parameter ranges; "
            f"single Parrot networks take Prospector-beta's {len(PROSPECTOR_BETA_PARAMETERS)}")
    sig_native, table = _sigma_single(resid, nout, where)
    return ParrotEmulator([net], None, PROSPECTOR_BETA_PARAMETERS, bounds, columns, filters,
                          sig_native[columns], table[columns], zred_index=14, name=str(path),
                          mass_scaling=mass_scaling, reference_log_mass=ref_mass, kind="single")


def _load_stitched(d, where, path, mass_scaling, ref_mass):
    need = ["filters", "filter_redir", "parameters", "parameter_limits", "zred_index",
            "emulator_limits", "nets", "resid_quants", "resid_quants_labels"]
    missing = [k for k in need if k not in d]
    if missing:
        raise EmulatorError(f"{where}: stitched Parrot dict lacks {missing}")
    filters = [str(f) for f in d["filters"]]
    redir = d["filter_redir"]
    columns = np.array([int(redir[f]) for f in filters])  # 0-based
    params = [str(p) for p in d["parameters"]]
    bounds = _bounds(d["parameter_limits"], where)
    if bounds.shape[0] != len(params):
        raise EmulatorError(f"{where}: {len(params)} parameters but {bounds.shape[0]} limits")
    limits = np.asarray(d["emulator_limits"], dtype=np.float64)
    nets = []
    for k, item in enumerate(d["nets"]):
        item = list(item)
        act = item[4] if len(item) > 4 else None
        net = _as_net(item[0], item[1], item[2], item[3], act, where, f"sub-network {k}")
        if net["norm_mu"].size != len(params):
            raise EmulatorError(f"{where}: sub-network {k} takes {net['norm_mu'].size} inputs, "
                                f"file lists {len(params)} parameters")
        if columns.max() >= net["denorm_mu"].size:
            raise EmulatorError(f"{where}: filter columns exceed sub-network {k}'s outputs")
        nets.append(net)
    if limits.shape != (len(nets), 4):
        raise EmulatorError(f"{where}: emulator_limits has shape {limits.shape}; "
                            f"expected ({len(nets)}, 4)")
    labels = [str(s) for s in d["resid_quants_labels"]]
    rq = np.asarray(d["resid_quants"], dtype=np.float64)
    if "std" not in labels or rq.ndim != 3 or rq.shape[1] != len(labels) or rq.shape[2] != len(nets):
        raise EmulatorError(f"{where}: resid_quants {rq.shape} / labels {labels} unusable "
                            f"(need (F, {len(labels)}, {len(nets)}) with a 'std' row)")
    sigma = np.median(rq[columns, labels.index("std"), :], axis=1)
    emu = ParrotEmulator(nets, limits, params, bounds, columns, filters, sigma, rq[columns],
                         zred_index=int(d["zred_index"]), name=str(path),
                         mass_scaling=mass_scaling, reference_log_mass=ref_mass, kind="stitched")
    emu.residual_quantile_labels = tuple(labels)
    return emu
