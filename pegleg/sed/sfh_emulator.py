"""The SFH-bin emulator: a network per star-formation-history bin, combined exactly.

bagpipes' photometry is linear in the star-formation history
(:func:`pegleg.sed.sps.bin_photometry`): a model whose 7 continuity bins formed masses
``m_k`` has flux ``F_f = sum_k m_k F_kf``, where ``F_kf`` is the flux in filter ``f`` of
one solar mass formed at constant rate in bin ``k`` alone.  ``F_kf`` depends only on
redshift, metallicity, A_V, delta, eta and log U -- six smooth inputs -- while the SFH's
six heavy-tailed ``dsfr`` parameters (the origin of the worst errors of a network fed all
twelve parameters: rising histories whose young stars and emission lines dominate) only
enter through the masses ``m_k``, which :class:`pegleg.sed.sfh.BinGrid` computes exactly
as bagpipes does.  So the network learns the per-bin photometry and pegleg adds it up:

    r_kf = network(z, Z, A_V, delta, eta, log U)             # per-bin magnitude residual
    F_kf = T_f(z) 10**(-0.4 (r_kf + DM(z) - 23.9))            # uJy per solar mass formed
    F_f  = sum_k m_k(dsfr, z, M_formed) F_kf

``DM(z)`` is the distance modulus (``5 log10(d_L / 10 pc) - 2.5 log10(1 + z)``) and
``T_f(z)`` the band's IGM transmission for a flat-f_nu source
(:func:`pegleg.sed.sps.igm_band_transmission`), both tabulated in the file and
interpolated linearly (in ``ln z`` for ``DM``), so the network sees neither the
distance nor the Lyman-alpha-forest and Lyman-limit cliffs.  Per-bin surviving mass
fractions are network outputs too; formed masses, SFR over 10 and 100 Myr and the
mass-weighted age are exact.

File format: the ``"pegleg-emulator"`` ``.npz`` of :mod:`pegleg.sed.emulator`, version
2, ``kind = "sfh_bins"``; arrays ``W*``, ``b*``, ``x_mean``, ``x_std`` (over the
metadata list ``inputs``), ``y_mean``, ``y_std`` (``7 F + 7`` outputs: ``r_kf`` at column
``k F + f``, then the 7 log10 surviving fractions), ``sigma``, ``sfh_ages``,
``sfh_widths``, ``sfh_z``, ``sfh_age_gyr`` (:class:`~pegleg.sed.sfh.BinGrid`),
``igm_z`` (Z,), ``igm_trans`` (Z, F), ``dm_lnz``, ``dm``; metadata as version 1 plus
``inputs`` and ``dsfr_names`` (youngest first) and without ``reference_filter``,
``reference_log_mass`` and ``outputs``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..exceptions import EmulatorError
from . import components as _comp
from . import emulator as _emu
from .sfh import N_BINS, BinGrid

__all__ = ["SFHBinEmulator", "KIND", "VERSION", "VERSIONS", "TABLES", "COMPONENT_TABLES"]

KIND = "sfh_bins"
#: version written for files with exact line and dust-emission components (version 2: without)
VERSION = 3
VERSIONS = (2, 3)
#: arrays of a version-3 file besides :data:`TABLES` (:mod:`pegleg.sed.components`)
COMPONENT_TABLES = _comp.TABLES
#: arrays besides the network that the file must hold
TABLES = ("sfh_ages", "sfh_widths", "sfh_z", "sfh_age_gyr", "igm_z", "igm_trans", "dm_lnz", "dm")
_REQUIRED = ("param_names", "bounds", "prior", "filters", "activation", "inputs", "dsfr_names",
             "training", "accuracy")
_K_LN = -0.4 * np.log(10.0)
_LN_MAX = np.float32(80.0)  # exp(80) = 5.5e34 uJy: beyond any galaxy


class SFHBinEmulator(_emu.BaseEmulator):
    """pegleg's default SED emulator (see the module docstring).

    Parameters
    ----------
    weights, biases, x_mean, x_std, y_mean, y_std
        The network, as :class:`~pegleg.sed.emulator.MLPEmulator` (inputs: ``metadata
        ["inputs"]``).
    sigma : (F,) emulator uncertainty per filter (mag).
    tables : mapping with the arrays :data:`TABLES`.
    metadata : dict (see the module docstring).
    """

    chunk_size = 1024
    block_size = 4096

    def __init__(self, weights, biases, x_mean, x_std, y_mean, y_std, sigma,
                 tables: Mapping[str, np.ndarray], metadata: Mapping[str, Any], *, name: str = "emulator"):
        has_comp = all(k in tables for k in COMPONENT_TABLES)
        meta = _emu._init_network_emulator(self, metadata, {"version": 3 if has_comp else 2, "kind": KIND},
                                           _REQUIRED, name,
                                           (weights, biases, x_mean, x_std, y_mean, y_std), sigma)
        if meta["version"] not in VERSIONS:
            raise EmulatorError(f"SFH-bin emulator version {meta['version']!r}; this pegleg reads {VERSIONS}")
        self.version = int(meta["version"])
        self.inputs = tuple(str(n) for n in meta["inputs"])
        self.dsfr_names = tuple(str(n) for n in meta["dsfr_names"])
        for n in self.inputs + self.dsfr_names:
            if n not in self.param_names:
                raise EmulatorError(f"{n!r} (inputs / dsfr_names) is not a parameter; parameters: "
                                    f"{self.param_names}")
        if len(self.dsfr_names) != N_BINS - 1:
            raise EmulatorError(f"dsfr_names must name {N_BINS - 1} parameters, got {self.dsfr_names}")
        missing = [k for k in TABLES if k not in tables]
        if missing:
            raise EmulatorError(f"missing arrays {missing}")
        self.tables = {k: np.ascontiguousarray(tables[k], dtype=np.float64) for k in TABLES}
        self.components = None
        if self.version >= 3:
            absent = [k for k in COMPONENT_TABLES if k not in tables]
            if absent:
                raise EmulatorError(f"missing arrays {absent} (version 3: line and dust-emission components)")
            self.components = _comp.Components({k: tables[k] for k in COMPONENT_TABLES})
            if self.components.n_filters != len(self.filters):
                raise EmulatorError(f"the component tables have {self.components.n_filters} filters; the "
                                    f"emulator has {len(self.filters)}")
        self._input_idx = np.array([self.param_names.index(n) for n in self.inputs])
        self._dsfr_idx = np.array([self.param_names.index(n) for n in self.dsfr_names])
        self._validate()
        self.grid = BinGrid.from_arrays(self.tables)
        t = self.tables
        self._igm_z0 = float(t["igm_z"][0])
        self._igm_dz = float(t["igm_z"][1] - t["igm_z"][0])
        # bands absorbed below the training's IGM threshold carry no flux: the network was not
        # asked for their magnitudes there (they are < igm_min of the band's unabsorbed flux)
        igm_min = float(meta.get("training", {}).get("igm_min", 0.0))
        self._igm = np.ascontiguousarray(np.where(t["igm_trans"] < igm_min, 0.0, t["igm_trans"]), dtype=np.float32)
        lnz = t["dm_lnz"]
        self._dm_even = bool(np.allclose(np.diff(lnz), lnz[1] - lnz[0], rtol=1e-9, atol=0))
        self._dm_x0, self._dm_dx = float(lnz[0]), float(lnz[1] - lnz[0])

    @property
    def n_outputs(self) -> int:
        """Network outputs: 7 x F per-bin magnitudes, 7 surviving fractions and, with
        components, 7 absorbed luminosities."""
        return N_BINS * len(self.filters) + N_BINS * (2 if self.components is not None else 1)

    def _validate(self) -> None:
        F = len(self.filters)
        extra = " + 7" if self.components is not None else ""
        _emu._validate_network(self, len(self.inputs), self.n_outputs,
                               lambda got, want: f"the network must end with {want} outputs (7 bins x {F} "
                                                 f"filters + 7{extra}), got {got}", extra=self.tables.items())
        t = self.tables
        nz = t["igm_z"].size
        if t["igm_z"].ndim != 1 or nz < 2 or not np.allclose(np.diff(t["igm_z"]), t["igm_z"][1] - t["igm_z"][0]) \
                or t["igm_z"][1] <= t["igm_z"][0]:
            raise EmulatorError("igm_z must be an evenly spaced, increasing 1-d grid")
        if t["igm_trans"].shape != (nz, F):
            raise EmulatorError(f"igm_trans has shape {t['igm_trans'].shape}; expected ({nz}, {F})")
        zlo, zhi = self.bounds[self._iz]
        if t["igm_z"][0] > zlo or t["igm_z"][-1] < zhi or np.exp(t["dm_lnz"][0]) > zlo * (1 + 1e-9) \
                or np.exp(t["dm_lnz"][-1]) < zhi * (1 - 1e-9):
            raise EmulatorError("the igm and distance-modulus tables must cover the redshift bounds")
        if t["dm_lnz"].shape != t["dm"].shape or np.any(np.diff(t["dm_lnz"]) <= 0):
            raise EmulatorError("dm_lnz must increase and match dm in shape")

    # ----------------------------------------------------------------- tables
    def igm_transmission(self, redshift, fidx=None, *, _table=None) -> np.ndarray:
        """(N, F) tabulated IGM transmission of the filters ``fidx`` (float32)."""
        z = np.asarray(redshift, dtype=np.float64)
        u = (z - self._igm_z0) / self._igm_dz
        i0 = np.clip(np.floor(u).astype(np.intp), 0, self._igm.shape[0] - 2)
        w = (u - i0).astype(np.float32)[:, None]
        tab = _table if _table is not None else (self._igm if fidx is None else self._igm[:, fidx])
        lo = tab[i0]
        return lo + w * (tab[i0 + 1] - lo)

    def distance_modulus(self, redshift) -> np.ndarray:
        """(N,) tabulated ``5 log10(d_L / 10 pc) - 2.5 log10(1 + z)`` (mag), linear in ln z."""
        lnz = np.log(np.asarray(redshift, dtype=np.float64))
        dm = self.tables["dm"]
        if not self._dm_even:
            return np.interp(lnz, self.tables["dm_lnz"], dm)
        u = (lnz - self._dm_x0) / self._dm_dx
        i0 = np.clip(u.astype(np.intp), 0, dm.size - 2)
        lo = dm[i0]
        return lo + (u - i0) * (dm[i0 + 1] - lo)

    def bin_masses(self, theta) -> np.ndarray:
        """(N, 7) formed mass of each SFH bin (Msun), youngest first (exact)."""
        theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
        return self.grid.masses(theta[:, self._dsfr_idx], theta[:, self._iz], theta[:, self._imass])

    # ----------------------------------------------------------------- network
    def _sliced(self, fidx: np.ndarray):
        """Folded layers whose last layer gives ``ln`` of the per-bin flux (uJy per solar
        mass at ``DM = 0`` and no IGM) of the filters ``fidx``, bin-major, then the ``ln`` of
        the 7 surviving fractions, and the IGM table of ``fidx`` (cached per filter set)."""
        key = tuple(int(i) for i in fidx)
        cache = self.__dict__.setdefault("_slice_cache", {})
        if key not in cache:
            Ws, bs, act, _ = _emu._fold_inputs(self)
            F = len(self.filters)
            A = Ws[-1] * self.y_std.astype(np.float64)
            c = bs[-1] * self.y_std.astype(np.float64) + self.y_mean.astype(np.float64)
            cols = np.array([k * F + f for k in range(N_BINS) for f in fidx], dtype=np.intp)
            surv = N_BINS * F + np.arange(N_BINS)
            dust = N_BINS * F + N_BINS + np.arange(N_BINS if self.components is not None else 0)
            ln10 = np.log(10.0)
            Ws[-1] = np.concatenate([_K_LN * A[:, cols], ln10 * A[:, surv], A[:, dust]], axis=1)
            bs[-1] = np.concatenate([_K_LN * (c[cols] - 23.9), ln10 * c[surv], c[dust]])
            cache[key] = (_emu._fold_biases(Ws, bs, act), act, np.ascontiguousarray(self._igm[:, fidx]))
        return cache[key]

    def _run(self, th: np.ndarray, fidx: np.ndarray, want_flux: bool = True):
        """Fluxes (n, F') float64 and derived quantities of valid rows ``th``.

        Rows go through in blocks of ``block_size`` so the network outputs are combined
        while they are still in cache."""
        n, nf = th.shape[0], fidx.size
        z = th[:, self._iz]
        der = self.grid.derived(th[:, self._dsfr_idx], z, th[:, self._imass])
        m = der.pop("masses")
        if want_flux:
            ln_dm = (-0.4 * np.log(10.0)) * self.distance_modulus(z)
            ln_scale = np.log(m) + ln_dm[:, None]
        else:
            nf = 0
        Ws, act, igm = self._sliced(fidx if want_flux else np.arange(0))
        x = np.ones((n, len(self._input_idx) + 1), dtype=np.float32)
        x[:, :-1] = th[:, self._input_idx]
        flux = np.empty((n, nf), dtype=np.float64)
        ln_surv = np.empty((n, N_BINS), dtype=np.float32)
        comp = self.components if nf else None
        if comp is not None:
            dust = np.empty(n, dtype=np.float32)
            av = th[:, self.param_names.index("av")].astype(np.float32)
        bs = self.block_size
        for a in range(0, n, bs):
            b = min(n, a + bs)
            y = _emu._forward(x[a:b], Ws, None, act, self.chunk_size)
            ln_surv[a:b] = y[:, N_BINS * nf:N_BINS * nf + N_BINS]
            if not nf:
                continue
            if comp is not None:  # absorbed luminosity: A_V exp(q_k) per solar mass, times bin masses
                q = np.exp(np.minimum(y[:, N_BINS * nf + N_BINS:], _LN_MAX))
                dust[a:b] = av[a:b] * np.einsum("nk,nk->n", q, m[a:b].astype(np.float32))
            e = y[:, :N_BINS * nf]
            e += np.repeat(ln_scale[a:b].astype(np.float32), nf, axis=1)
            np.minimum(e, _LN_MAX, out=e)       # float32 exp stays finite whatever the network says
            np.exp(e, out=e)
            acc = e[:, :nf].copy()
            for k in range(1, N_BINS):
                acc += e[:, k * nf:(k + 1) * nf]
            acc *= self.igm_transmission(z[a:b], _table=igm)
            flux[a:b] = acc
        if comp is not None:  # lines and dust re-emission, exact, at distance modulus 0
            cols = {k: th[:, self.param_names.index(k)] for k in self.inputs}
            extra = comp.lines(cols, m[:, :2], fidx)
            extra += dust[:, None] * comp.dust_response(z, fidx)
            flux += extra * np.exp(ln_dm)[:, None]
        surv = np.exp(ln_surv, out=ln_surv)
        der["log_stellar_mass"] = np.log10(np.einsum("nk,nk->n", m, surv.astype(np.float64)))
        der["av"] = th[:, self.param_names.index("av")] if "av" in self.param_names else np.full(n, np.nan)
        return (flux if want_flux else None), der

    # ----------------------------------------------------------------- training
    def targets(self, params, bin_flux, dust_lum=None):
        """The network's targets for bagpipes' per-bin photometry (training and tests).

        ``params`` (N, P); ``bin_flux`` (N, 7, F) uJy per solar mass formed in each bin
        (:func:`pegleg.sed.sps.bin_photometry`, with ``split_dust=True`` -- i.e. without
        dust re-emission -- when the emulator has components) in this emulator's filters;
        ``dust_lum`` (N, 7) the absorbed luminosities (components only).  Returns ``r``
        (N, 7, F): per-bin magnitudes without distance, IGM and (components) the exact
        lines; ``q`` (N, 7): ``ln(L_abs / A_V)`` or None; ``lines`` (N, 2, F) uJy at
        distance modulus 0 of bins 0 and 1 per solar mass, or None."""
        th = np.atleast_2d(np.asarray(params, dtype=np.float64))
        z = th[:, self._iz]
        T = self.igm_transmission(z).astype(np.float64)
        flux0 = np.asarray(bin_flux, dtype=np.float64) * 10.0 ** (0.4 * self.distance_modulus(z))[:, None, None]
        q = lines = None
        if self.components is not None:
            if dust_lum is None:
                raise EmulatorError("an emulator with components needs dust_lum (bin_photometry(split_dust=True))")
            cols = {k: th[:, self.param_names.index(k)] for k in self.inputs}
            lines = np.zeros((len(th), 2, len(self.filters)))
            for k in range(2):
                onehot = np.zeros((len(th), 2))
                onehot[:, k] = 1.0
                lines[:, k] = self.components.lines(cols, onehot, np.arange(len(self.filters)))
            flux0 = flux0.copy()
            flux0[:, :2] -= lines
            with np.errstate(divide="ignore"):
                q = np.log(np.asarray(dust_lum, dtype=np.float64) / th[:, [self.param_names.index("av")]])
        with np.errstate(divide="ignore", invalid="ignore"):
            r = -2.5 * np.log10(flux0) + 23.9 + 2.5 * np.log10(np.maximum(T, 1e-30))[:, None, :]
        return r, q, lines

    # ----------------------------------------------------------------- API
    def _predict_valid(self, theta, fidx):
        flux, _ = self._run(theta, fidx)
        with np.errstate(divide="ignore"):
            return -2.5 * np.log10(flux) + 23.9

    def _derived_valid(self, theta):
        return self._run(theta, np.arange(0), want_flux=False)[1]

    def evaluate(self, params, filters=None, *, strict: bool = True) -> tuple[np.ndarray, dict]:
        fidx = self.filter_index(filters)
        theta, valid, single = self._check_params(params, strict)
        n = theta.shape[0]
        if valid.all():
            flux, result = self._run(theta, fidx)
        else:
            flux = np.full((n, fidx.size), np.nan)
            result = {k: np.full(n, np.nan) for k in _emu.DERIVED_NAMES}
            if valid.any():
                f, d = self._run(theta[valid], fidx)
                flux[valid] = f
                for k, v in d.items():
                    result.setdefault(k, np.full(n, np.nan))[valid] = v
        return _emu._finish(flux, result, n, single)

    # ----------------------------------------------------------------- I/O
    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the file format (without ``metadata``)."""
        out = dict(_emu._network_arrays(self), **self.tables)
        if self.components is not None:   # float32 is ample for the response tables (float64 in memory)
            out.update({k: (v.astype(np.float32) if v.size > 10000 else v)
                        for k, v in self.components.tables.items()})
        return out

    def file_metadata(self) -> dict:
        meta = dict(self.metadata)
        meta.update(format=_emu.FORMAT_NAME, version=self.version, kind=KIND, param_names=list(self.param_names),
                    bounds=self.bounds.tolist(), prior=self.prior, filters=list(self.filters),
                    activation=self.activation, inputs=list(self.inputs), dsfr_names=list(self.dsfr_names))
        return meta
