"""bagpipes' emission lines and dust re-emission in photometry, exactly and in numpy.

The SFH-bin emulator's network learns what is smooth in redshift: each bin's stellar
and nebular continuum.  Two parts of bagpipes' photometry are not smooth, and a small
network cannot follow them as they sweep through medium bands and MIRI filters:

* **emission lines** -- Cloudy line luminosities that bagpipes adds to one pixel of its
  wavelength grid each (only stars younger than ``t_bc`` = 10 Myr ionise gas: SFH bin 0
  and the 10-11 Myr sliver of bin 1 that shares bagpipes' age cell with it);
* **dust re-emission** -- the luminosity absorbed by dust, re-emitted with one
  Draine & Li (2007) template (q_PAH = 2, U_min = 1, gamma = 0.01) whose PAH features
  cross the long-wavelength bands.

Both are computed here as bagpipes computes them, from tables in the emulator file:

* a line's observed flux is ``L (Z, log U) * 10**(-0.4 eta A_V A(lambda_p; delta)) *
  T_IGM(lambda_p, z) * lambda_p w_p / width_p * T_f(lambda_p (1 + z)) * K_f(z)``:
  luminosities bilinear in metallicity (linear in Z/Zsun, as bagpipes weighs its grid)
  and log U between bagpipes' grid nodes; the Salim et al. (2018) curve at the line's
  pixel ``lambda_p`` (birth cloud and diffuse ISM together, ``eta A_V``); the IGM at
  that pixel on bagpipes' redshift nodes; the filter curve as bagpipes resamples it
  onto its own wavelength grid and interpolates it at ``lambda_p (1 + z)``;
* dust re-emission is ``L_abs * D_f(z)``, with the template's band response ``D_f``
  tabulated against ``ln(1 + z)`` and ``L_abs`` (absorbed luminosity per solar mass,
  smooth in all parameters) a network output.

``K_f(z)`` (tabulated with ``D_f``) holds bagpipes' band normalisation, the luminosity
distance and the pivot-wavelength f_nu conversion, in the emulator's distance-free
units: uJy at distance modulus 0 (:class:`~pegleg.sed.sfh_emulator.SFHBinEmulator`).
The decomposition reproduces bagpipes' photometry to 3e-4 relative (lines 1e-4, dust
re-emission 3e-4: the ln(1 + z) interpolation of the response tables;
``tests/test_components.py``).

:func:`build_tables` (needs bagpipes) makes the tables; :class:`Components` evaluates
them (numpy only).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..exceptions import EmulatorError

__all__ = ["Components", "build_tables", "TABLES", "salim_curve", "LINE_MIN_FRACTION"]

#: arrays of the emulator file that describe the components
TABLES = ("comp_u", "comp_line_resp", "comp_dust_resp", "comp_filt_wav", "comp_filt", "comp_line_wav",
          "comp_line_fac", "comp_line_acalz", "comp_line_lum", "comp_zmet", "comp_logu", "comp_igm_z",
          "comp_line_igm")
#: a line is treated exactly when, at some metallicity and log U, its luminosity exceeds this
#: fraction of bin 0's unattenuated continuum over a band of width lambda / 10 (R = 10, the
#: narrowest medium band); fainter lines stay in the network's smooth part
LINE_MIN_FRACTION = 1e-3
_DU = 5e-4          # ln(1 + z) step of the response tables
_LN10_04 = 0.4 * np.log(10.0)


def _salim_scale(delta):
    """R_V of the modified curve and the bump strength over it, for (N,) ``delta``."""
    rv = 4.05 / ((4.05 + 1.0) * (4400.0 / 5500.0) ** delta - 4.05)
    return rv, np.maximum(0.0, 0.85 - 1.9 * delta) / rv


def _drude(wav):
    """The 2175 A bump profile (unit strength) at ``wav`` (A)."""
    return wav ** 2 * 350.0 ** 2 / ((wav ** 2 - 2175.0 ** 2) ** 2 + wav ** 2 * 350.0 ** 2)


def _interp_even(tab, x):
    """Rows of ``tab`` (M, ...) interpolated linearly at fractional row positions ``x`` (N,),
    clamped to the table; float32 weights."""
    i0 = np.clip(np.floor(x).astype(np.intp), 0, tab.shape[0] - 2)
    w = (x - i0).astype(np.float32)[:, None]
    lo = tab[i0]
    return lo + w * (tab[i0 + 1] - lo)


def salim_curve(acalz, wav_aa, delta):
    """bagpipes' Salim et al. (2018) A(lambda)/A_V with the bump tied to the slope
    (``B = max(0, 0.85 - 1.9 delta)``): (N, K) for (N,) ``delta`` and (K,) wavelengths
    with Calzetti values ``acalz``."""
    delta = np.asarray(delta, dtype=np.float64)[:, None]
    wav = np.asarray(wav_aa, dtype=np.float64)[None, :]
    _, bump = _salim_scale(delta)
    return np.asarray(acalz)[None, :] * np.exp(delta * np.log(wav / 5500.0)) + bump * _drude(wav)


class Components:
    """Emission lines and dust re-emission of the SFH bins from the emulator's tables.

    Parameters
    ----------
    tables : mapping with the arrays :data:`TABLES` (``comp_line_resp``,
        ``comp_dust_resp`` and ``comp_filt`` with one column per emulator filter).
    """

    chunk_size = 65536

    def __init__(self, tables: Mapping[str, np.ndarray]):
        missing = [k for k in TABLES if k not in tables]
        if missing:
            raise EmulatorError(f"component tables missing {missing}")
        t = {k: np.asarray(tables[k], dtype=np.float64) for k in TABLES}
        u = t["comp_u"]
        if u.ndim != 1 or u.size < 2 or not np.allclose(np.diff(u), u[1] - u[0], rtol=1e-6, atol=0):
            raise EmulatorError("comp_u must be an evenly spaced ln(1 + z) grid")
        F = t["comp_line_resp"].shape[1]
        K = t["comp_line_wav"].size
        shapes = {"comp_line_resp": (u.size, F), "comp_dust_resp": (u.size, F),
                  "comp_filt": (t["comp_filt_wav"].size, F), "comp_line_fac": (K,), "comp_line_acalz": (K,),
                  "comp_line_lum": (2, K, t["comp_zmet"].size, t["comp_logu"].size),
                  "comp_line_igm": (t["comp_igm_z"].size, K)}
        for k, shp in shapes.items():
            if t[k].shape != shp:
                raise EmulatorError(f"{k} has shape {t[k].shape}; expected {shp}")
        w = t["comp_filt_wav"]
        lnw = np.log(w)
        dl = lnw[1] - lnw[0]
        if not np.allclose(np.diff(lnw), dl, rtol=1e-6, atol=0):
            raise EmulatorError("comp_filt_wav must be a geometric wavelength grid")
        self.tables = t
        self.n_filters, self.n_lines = F, K
        self._u0, self._du = float(u[0]), float(u[1] - u[0])
        self._lnw0, self._dlnw = float(lnw[0]), float(dl)
        # filter curves with a zero row at both ends, so out-of-range wavelengths read 0
        self._filt = np.concatenate([np.zeros((1, F)), t["comp_filt"], np.zeros((1, F))]).astype(np.float32)
        row = (np.log(t["comp_line_wav"]) - self._lnw0) / self._dlnw
        if np.any(np.abs(row - np.round(row)) > 1e-3) or row.min() < 0 or row.max() > w.size - 1:
            raise EmulatorError("comp_line_wav must be points of the comp_filt_wav grid")
        self._line_row = np.round(row).astype(np.intp) + 1      # rows of the zero-padded curves
        self._igm_z0 = float(t["comp_igm_z"][0])
        self._igm_dz = float(t["comp_igm_z"][1] - t["comp_igm_z"][0])
        self._zmet, self._logu = t["comp_zmet"], t["comp_logu"]
        # lines bluer than 1250 A see the IGM; the others are always transmitted
        self._igm_lines = np.flatnonzero(np.any(t["comp_line_igm"] < 1.0, axis=0))
        self._line_igm = t["comp_line_igm"][:, self._igm_lines]
        nzu = t["comp_zmet"].size * t["comp_logu"].size
        # (2 nZ nU, K) luminosities, bin-major, and times lambda_p w_p / width_p
        self._lum = np.ascontiguousarray(t["comp_line_lum"].transpose(0, 2, 3, 1).reshape(2 * nzu, K),
                                         dtype=np.float32)
        self._lum_fac = self._lum * t["comp_line_fac"].astype(np.float32)
        lw = t["comp_line_wav"]
        self._lnw_line = np.log(lw / 5500.0).astype(np.float32)
        self._acalz = t["comp_line_acalz"].astype(np.float32)
        self._drude = _drude(lw).astype(np.float32)
        self._slices: dict = {}
        self._n_shift = int(np.ceil(np.log1p(10.5) / self._dlnw)) + 2

    # ------------------------------------------------------------------ helpers
    def _z_table(self, name, redshift, fidx):
        """(N, F') table ``name`` interpolated linearly in ln(1 + z)."""
        key = (name, tuple(int(i) for i in fidx))
        tab = self._slices.get(key)
        if tab is None:
            tab = self._slices[key] = np.ascontiguousarray(self.tables[name][:, fidx], dtype=np.float32)
        return _interp_even(tab, (np.log1p(np.asarray(redshift, dtype=np.float64)) - self._u0) / self._du)

    def _shift(self, z):
        """Fractional and whole numbers of grid steps, ``ln(1 + z) / dln``, by which redshift
        moves the lines."""
        d = np.log1p(z) / self._dlnw
        return d, np.clip(np.floor(d).astype(np.intp), 0, self._n_shift - 1)

    @staticmethod
    def _bracket(grid, x):
        """Lower node index and weight of linear interpolation on ``grid`` (clamped)."""
        i = np.clip(np.searchsorted(grid, x, side="left") - 1, 0, grid.size - 2)
        w = (x - grid[i]) / (grid[i + 1] - grid[i])
        return i, np.clip(w, 0.0, 1.0)

    def _node_rows(self, log_metallicity, log_u, bin_mass):
        """Rows of the (2 nZ nU, K) luminosity table and their weights (N, 8): bilinear in
        Z/Zsun and log U, times the formed masses of bins 0 and 1."""
        zmet = 10.0 ** np.asarray(log_metallicity, dtype=np.float64)
        iz, wz = self._bracket(self._zmet, zmet)
        iu, wu = self._bracket(self._logu, np.asarray(log_u, dtype=np.float64))
        m = np.asarray(bin_mass, dtype=np.float64)
        nz, nu = self._zmet.size, self._logu.size
        rows, wts = [], []
        for b in range(2):
            for dz, fz in ((0, 1.0 - wz), (1, wz)):
                for du, fu in ((0, 1.0 - wu), (1, wu)):
                    rows.append((b * nz + iz + dz) * nu + iu + du)
                    wts.append(m[:, b] * fz * fu)
        return np.stack(rows, axis=1), np.stack(wts, axis=1).astype(np.float32)

    def line_luminosity(self, log_metallicity, log_u, bin_mass) -> np.ndarray:
        """(N, K) unattenuated line luminosities (Lsun) of bins 0 and 1 with formed masses
        ``bin_mass`` (N, 2): bagpipes' grid, bilinear in Z/Zsun and log U."""
        rows, wts = self._node_rows(log_metallicity, log_u, bin_mass)
        return np.einsum("nc,nck->nk", wts, self._lum[rows])

    # ------------------------------------------------------------------ API
    def lines(self, theta_cols, bin_mass, fidx) -> np.ndarray:
        """(N, F') observed flux of the emission lines (uJy at distance modulus 0).

        ``theta_cols``: mapping with (N,) ``redshift``, ``log_metallicity``, ``av``,
        ``delta``, ``eta``, ``log_u``; ``bin_mass`` (N, 2): formed mass of bins 0 and 1.
        Models are grouped by their shift on bagpipes' grid, one matrix product each."""
        z = np.asarray(theta_cols["redshift"], dtype=np.float64)
        out = np.empty((z.size, len(fidx)), dtype=np.float32)
        for a in range(0, z.size, self.chunk_size):
            sl = slice(a, a + self.chunk_size)
            d, j = self._shift(z[sl])
            same = j.size == 0 or bool(np.all(j == j[0]))
            order = slice(None) if same else np.argsort(j, kind="stable")
            cols = {k: np.asarray(v)[sl][order] for k, v in theta_cols.items()}
            res = self._lines(cols, np.asarray(bin_mass)[sl][order], j[order], d[order], fidx)
            if same:
                out[sl] = res
            else:
                out[a + order] = res
        return out

    def _lines(self, c, bin_mass, j, d, fidx):
        """Lines of models sorted by grid shift ``j``."""
        z = np.asarray(c["redshift"], dtype=np.float64)
        # luminosity x lambda_p w_p / width_p (folded into the table)
        rows, wts = self._node_rows(c["log_metallicity"], c["log_u"], bin_mass)
        s = np.einsum("nc,nck->nk", wts, self._lum_fac[rows])
        # Salim curve at the line pixels, birth cloud and ISM together: eta A_V
        delta = np.asarray(c["delta"], dtype=np.float64)
        _, bump = _salim_scale(delta)
        k = (-_LN10_04 * np.asarray(c["eta"]) * np.asarray(c["av"]))
        tau = np.exp(delta.astype(np.float32)[:, None] * self._lnw_line)
        tau *= self._acalz
        tau += bump.astype(np.float32)[:, None] * self._drude
        tau *= k.astype(np.float32)[:, None]
        s *= np.exp(tau, out=tau)
        if self._igm_lines.size:
            s[:, self._igm_lines] *= _interp_even(self._line_igm, (z - self._igm_z0) / self._igm_dz)
        return self._shifted(s, j, d, fidx) * self._z_table("comp_line_resp", z, fidx)

    def _shift_table(self, fidx):
        """(J, K, 2F') filter curves at every line's pixel shifted by j and j + 1 grid steps:
        the lines sit on bagpipes' geometric grid, so redshift moves them all by
        ln(1 + z) / dln steps."""
        key = ("shift", tuple(int(i) for i in fidx))
        tab = self._slices.get(key)
        if tab is None:
            filt = self._filt[:, fidx]
            idx = np.minimum(self._line_row[None, :] + np.arange(self._n_shift + 1)[:, None], filt.shape[0] - 1)
            one = filt[idx]                                                   # (J + 1, K, F')
            tab = self._slices[key] = np.ascontiguousarray(np.concatenate([one[:-1], one[1:]], axis=2))
        return tab

    def filter_sum(self, s, redshift, fidx) -> np.ndarray:
        """(N, F') ``sum_l s[n, l] T_f(lambda_l (1 + z_n))`` for line strengths ``s`` (N, K),
        with bagpipes' resampled filter curves (any order of redshifts)."""
        z = np.asarray(redshift, dtype=np.float64)
        d, j = self._shift(z)
        order = np.argsort(j, kind="stable")
        out = np.empty((z.size, len(fidx)), dtype=np.float32)
        out[order] = self._shifted(np.asarray(s, dtype=np.float32)[order], j[order], d[order], fidx)
        return out

    def _shifted(self, s, j, d, fidx):
        """(N, F') sum over lines of ``s`` (N, K) times the filter curves at
        ``lambda_p (1 + z)``, for models sorted by grid shift ``j`` (``d`` the fractional
        shift): one matrix product per distinct shift."""
        tab = self._shift_table(fidx)
        nf = tab.shape[2] // 2
        cut = np.flatnonzero(np.diff(j)) + 1
        starts = np.concatenate([[0], cut])
        stops = np.concatenate([cut, [j.size]])
        both = np.empty((j.size, 2 * nf), dtype=np.float32)
        for a, b in zip(starts, stops):
            both[a:b] = s[a:b] @ tab[j[a]]
        # bagpipes interpolates linearly in wavelength between its geometric grid points
        w = (np.expm1((d - j) * self._dlnw) / np.expm1(self._dlnw)).astype(np.float32)[:, None]
        lo = both[:, :nf]
        return lo + w * (both[:, nf:] - lo)

    def dust_response(self, redshift, fidx) -> np.ndarray:
        """(N, F') observed flux (uJy at distance modulus 0) of 1 Lsun re-emitted by dust."""
        return self._z_table("comp_dust_resp", redshift, fidx)


# ---------------------------------------------------------------------- building
def build_tables(filters, *, min_fraction: float = LINE_MIN_FRACTION,
                 max_lines: int | None = None) -> dict[str, np.ndarray]:
    """The component tables for ``filters`` (in that column order), from bagpipes.

    Lines are kept when they can reach a filter and exceed ``min_fraction`` of bin 0's
    continuum in an R = 10 band (:data:`LINE_MIN_FRACTION`); ``max_lines`` keeps the
    strongest ones only (the rest stay in the network's part).

    Uses pegleg's photometric bagpipes model (:mod:`pegleg.sed.sps`; all filters, so one
    wavelength grid) and the emulator's distance modulus (the distance-free units)."""
    import warnings

    from . import sps

    names = sps._resolve_filters(filters)
    model = sps._model_for(sps._filters.available_filters())
    mg = model.model
    bp = sps._bagpipes()
    cfg = bp.config
    wav = np.asarray(mg.wavelengths, dtype=np.float64)
    model.use(names)
    fs = mg.filter_set
    filt = np.asarray(fs.filt_array, dtype=np.float64)                   # (W, F) on the rest grid
    lam_w = np.asarray(fs.widths) * wav                                   # bagpipes' lambda * dlambda
    pivot = np.array([sps._filters.pivot_wavelength(n) * 1e4 for n in names])   # A

    # the geometric (R_phot) segment that holds every filter curve
    r = wav[1:] / wav[:-1]
    seg = np.flatnonzero(np.abs(r - (1.0 + 0.5 / cfg.R_phot)) < 1e-9)
    a, b = seg[0], seg[-1] + 1
    nz = np.flatnonzero(filt.any(axis=1))
    if nz[0] <= a or nz[-1] >= b:
        raise EmulatorError("a filter curve reaches outside bagpipes' photometric wavelength segment")
    u = np.arange(0.0, np.log1p(10.0) + 2 * _DU, _DU)
    z = np.expm1(u)
    zc = np.maximum(z, 1e-4)
    dm = sps.distance_modulus(zc)
    ldist = 3.086e24 * np.interp(zc, bp.utils.z_array, bp.utils.ldist_at_z)
    lum_flux = 4.0 * np.pi * ldist ** 2
    norm = np.empty((u.size, len(names)))
    dust_int = np.empty((u.size, len(names)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dust_tmpl = np.asarray(mg.dust_emission.spectrum(2.0, 1.0, 0.01), dtype=np.float64)
    for i, zi in enumerate(z):
        tz = np.stack([np.interp(wav * (1.0 + zi), wav, filt[:, f], left=0, right=0)
                       for f in range(len(names))], axis=1)
        norm[i] = lam_w @ tz
        dust_int[i] = (dust_tmpl * lam_w) @ tz
    # flux (uJy at DM = 0) per unit of  sum_i L_i lambda_i dlambda_i T_f  (L in Lsun / A)
    K = (sps._L_SUN_CGS * 1e29 * pivot[None, :] ** 2 / sps._C_AA / norm
         / (lum_flux * (1.0 + zc))[:, None] * 10.0 ** (0.4 * dm)[:, None])

    # lines: bagpipes' pixels and Cloudy luminosities of bins 0 and 1 at the grid nodes
    line_wavs = np.asarray(cfg.line_wavs, dtype=np.float64)
    pix = np.array([np.abs(wav - lw).argmin() for lw in line_wavs])
    neb_width = (wav[pix + 1] - wav[pix - 1]) / 2.0
    fac = wav[pix] * np.asarray(fs.widths)[pix] / neb_width
    zmet = np.asarray(cfg.metallicities, dtype=np.float64)
    logu = np.asarray(cfg.logU, dtype=np.float64)
    lum = np.zeros((2, line_wavs.size, zmet.size, logu.size))
    cont = np.zeros((zmet.size, logu.size, wav.size))
    comps, sfh = sps._sfh_model()
    p = np.mean(sps.BOUNDS, axis=1)
    p[sps._IDX["log_mass_formed"]] = 0.0
    for k in range(2):
        for i, zm in enumerate(zmet):
            sps._fill_components(comps, p)
            comps["continuity"]["metallicity"] = float(zm)
            c = comps["continuity"]
            log_sfr = np.full(sps.N_SFH_BINS, -sps._ISOLATE_DEX)
            log_sfr[k] = 0.0
            step = log_sfr[:-1] - log_sfr[1:]
            for j in range(1, sps.N_SFH_BINS):
                c[f"dsfr{j}"] = float(step[sps.N_SFH_BINS - 1 - j])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sfh.update(comps)
                if k == 0:   # bin 0's young stars without their ionising photons (as bagpipes)
                    young, _ = mg.stellar.spectrum(np.copy(sfh.ceh.grid), sps.T_BC_GYR)
                    young = np.where(wav < 912.0, 0.0, young)
                for j, lu in enumerate(logu):
                    lum[k, :, i, j] = mg.nebular.line_fluxes(np.copy(sfh.ceh.grid), sps.T_BC_GYR, float(lu))
                    if k == 0:
                        neb = mg.nebular.spectrum(np.copy(sfh.ceh.grid), sps.T_BC_GYR, float(lu))
                        np.subtract.at(neb, pix, lum[k, :, i, j] / neb_width)   # the continuum alone
                        cont[i, j] = young + neb
    # which lines matter: luminosity vs the unattenuated continuum over lambda / 10
    cont_at = cont[:, :, pix] * (wav[pix] / 10.0)                         # (nZ, nU, K)
    frac = np.max(lum[0].transpose(1, 2, 0) / np.maximum(cont_at, 1e-300), axis=(0, 1))
    reach = (wav[pix] * (1.0 + 10.0) > wav[nz[0]]) & (wav[pix] < wav[nz[-1]])   # can enter a filter
    keep = np.flatnonzero((frac > min_fraction) & reach)
    if max_lines is not None and keep.size > max_lines:   # the strongest ones, in wavelength order
        keep = np.sort(keep[np.argsort(-frac[keep])[:max_lines]])
    igm_z = np.asarray(cfg.igm_redshifts, dtype=np.float64)
    line_igm = np.asarray(mg.igm.grid, dtype=np.float64)[pix[keep], :].T  # (nz_igm, K)
    return {
        "comp_u": u, "comp_line_resp": K, "comp_dust_resp": K * dust_int,
        "comp_filt_wav": wav[a:b], "comp_filt": filt[a:b],
        "comp_line_wav": wav[pix[keep]], "comp_line_fac": fac[keep],
        "comp_line_acalz": np.asarray(mg.dust_atten.A_cont_calz, dtype=np.float64)[pix[keep]],
        "comp_line_lum": lum[:, keep], "comp_zmet": zmet, "comp_logu": logu,
        "comp_igm_z": igm_z, "comp_line_igm": line_igm,
    }
