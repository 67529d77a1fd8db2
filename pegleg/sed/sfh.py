"""The continuity star-formation history in numpy, exactly as bagpipes samples it.

pegleg's SFH has 7 bins of lookback time (:data:`pegleg.sed.sps.N_SFH_BINS`): 0-10 Myr,
10-100 Myr, then 5 bins log-spaced from 100 Myr to the age of the universe at the
redshift (less a relative margin of 1e-5).  ``dsfr{k} = log10(SFR_k / SFR_{k+1})`` with
bin 1 the youngest.  bagpipes samples every SFH on a fixed fine grid of ages
(``log10 age`` step 0.0025 from 1 Myr) with cell widths; a bin holds the grid points
strictly inside its edges, and the formed mass is normalised on that grid.  So the mass
each bin forms, the mean SFR over 10 or 100 Myr and the mass-weighted age are sums over
grid cells -- :class:`BinGrid` computes them with cumulative sums and ``searchsorted``,
vectorised over models, and reproduces bagpipes to rounding error.

Because bagpipes' spectra are linear in the SFH (:func:`pegleg.sed.sps.bin_photometry`),
these bin masses times per-bin photometry give a model's photometry exactly; the SFH-bin
emulator (:class:`pegleg.sed.emulator.SFHBinEmulator`) relies on that.
"""

from __future__ import annotations

import numpy as np

from ..exceptions import EmulatorError
from .sps import _EDGE_MARGIN
from .sps import N_SFH_BINS as N_BINS

__all__ = ["BinGrid", "N_BINS"]

_FIXED_EDGES_MYR = (0.0, 10.0, 100.0)   # as sps.sfh_bin_edges: 0, 10 Myr, then log bins from 100 Myr


class BinGrid:
    """bagpipes' SFH age grid and age-redshift table.

    Parameters
    ----------
    ages, widths : (A,) arrays
        Grid ages and cell widths (yr), increasing.
    z, age_gyr : (Z,) arrays
        Redshift table (increasing) and the age of the universe there (Gyr).
    """

    def __init__(self, ages, widths, z, age_gyr):
        self.ages = np.ascontiguousarray(ages, dtype=np.float64)
        self.widths = np.ascontiguousarray(widths, dtype=np.float64)
        self.z = np.ascontiguousarray(z, dtype=np.float64)
        self.age_gyr = np.ascontiguousarray(age_gyr, dtype=np.float64)
        if self.ages.ndim != 1 or self.ages.shape != self.widths.shape or self.ages.size < 2 \
                or np.any(np.diff(self.ages) <= 0) or not np.all(np.isfinite(self.widths)):
            raise EmulatorError("SFH grid: ages must increase and match widths (finite) in shape")
        if self.z.ndim != 1 or self.z.shape != self.age_gyr.shape or np.any(np.diff(self.z) <= 0):
            raise EmulatorError("SFH grid: the redshift table must increase and match age_gyr")
        zero = np.zeros(1)
        self._cw = np.concatenate([zero, np.cumsum(self.widths)])             # sum of widths
        self._cwa = np.concatenate([zero, np.cumsum(self.widths * self.ages)])  # ... x age
        # bagpipes' grid is uniform in log10(age): then the search is arithmetic
        la = np.log10(self.ages)
        step = np.diff(la)
        self._log_uniform = bool(np.allclose(step, step[0], rtol=1e-6, atol=0))
        self._la0, self._lstep = float(la[0]), float(step[0])
        self._one_z: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        fixed = np.array(_FIXED_EDGES_MYR) * 1e6
        self._fixed_right, self._fixed_left = self._sides(fixed[None, :])

    @classmethod
    def from_arrays(cls, arrays) -> "BinGrid":
        """From a mapping with ``sfh_ages``, ``sfh_widths``, ``sfh_z``, ``sfh_age_gyr``."""
        return cls(arrays["sfh_ages"], arrays["sfh_widths"], arrays["sfh_z"], arrays["sfh_age_gyr"])

    def arrays(self) -> dict[str, np.ndarray]:
        return {"sfh_ages": self.ages, "sfh_widths": self.widths, "sfh_z": self.z,
                "sfh_age_gyr": self.age_gyr}

    def edges(self, redshift) -> np.ndarray:
        """(N, 8) bin edges in yr, youngest first (as :func:`pegleg.sed.sps.sfh_bin_edges`)."""
        z = np.atleast_1d(np.asarray(redshift, dtype=np.float64))
        t_univ = 1e3 * np.interp(z, self.z, self.age_gyr) * (1.0 - _EDGE_MARGIN)  # Myr
        lo = 2.0
        hi = np.log10(t_univ)
        step = np.arange(N_BINS - 1) / (N_BINS - 2)
        old = 10.0 ** (lo + (hi - lo)[:, None] * step[None, :])
        old[:, 0] = 100.0
        fixed = np.broadcast_to(np.array(_FIXED_EDGES_MYR[:2]), (z.size, 2))
        return np.concatenate([fixed, old], axis=1) * 1e6

    def bin_sums(self, redshift) -> tuple[np.ndarray, np.ndarray]:
        """(N, 7) summed cell widths (yr) of each bin and (N, 7) their mass-weighted ages (yr)."""
        z = np.atleast_1d(np.asarray(redshift, dtype=np.float64))
        if z.size == 1:                          # one model at a time (nested sampling): cached per z
            key = float(z[0])
            hit = self._one_z.get(key)
            if hit is None:
                if len(self._one_z) >= 256:
                    self._one_z.clear()
                hit = self._one_z[key] = self._bin_sums(z)
            return hit[0].copy(), hit[1].copy()
        if z.size > 1 and np.all(z == z[0]):     # one redshift (a galaxy's fit): one row, repeated
            w, age = self.bin_sums(z[:1])
            return np.repeat(w, z.size, axis=0), np.repeat(age, z.size, axis=0)
        return self._bin_sums(z)

    def _bin_sums(self, z):
        e = self.edges(z)[:, 3:]                 # the first three edges do not depend on z
        n = e.shape[0]
        right, left = np.empty((n, 8), np.intp), np.empty((n, 8), np.intp)
        right[:, :3], left[:, :3] = self._fixed_right, self._fixed_left
        right[:, 3:], left[:, 3:] = self._sides(e)
        # grid points strictly inside (lo, hi): indices [right(lo), left(hi))
        a, b = right[:, :-1], np.maximum(right[:, :-1], left[:, 1:])
        w = self._cw[b] - self._cw[a]
        with np.errstate(invalid="ignore", divide="ignore"):
            age = (self._cwa[b] - self._cwa[a]) / w
        return w, age

    def _sides(self, e):
        """searchsorted of ``e`` on the grid ages, right and left sides (exact)."""
        ages = self.ages
        if self._log_uniform and np.all(e > 0):
            # first guess from log10, then one exact correction step each way
            with np.errstate(invalid="ignore"):
                guess = np.floor((np.log10(e) - self._la0) / self._lstep) + 1.0
            right = np.clip(np.nan_to_num(guess, nan=0.0), 0, ages.size).astype(np.intp)
            below = np.maximum(right - 1, 0)
            right -= (right > 0) & (ages[below] > e)
            right += (right < ages.size) & (ages[np.minimum(right, ages.size - 1)] <= e)
            ok = ((right == 0) | (ages[np.maximum(right - 1, 0)] <= e)) & \
                ((right == ages.size) | (ages[np.minimum(right, ages.size - 1)] > e))
            if not ok.all():                     # pragma: no cover - more than one step off
                right = np.searchsorted(ages, e, side="right")
        else:
            right = np.searchsorted(ages, e, side="right")
        at = (right > 0) & (ages[np.maximum(right - 1, 0)] == e)
        return right, right - at

    def _window_total(self, t_yr: float) -> float:
        """Summed widths of the grid cells younger than ``t_yr`` (bagpipes' SFR window)."""
        return float(self._cw[np.searchsorted(self.ages, t_yr, side="left")])

    @staticmethod
    def log_sfr(dsfr) -> np.ndarray:
        """(N, 7) log10 SFR of each bin relative to the youngest, from (N, 6) ``dsfr``."""
        d = np.asarray(dsfr, dtype=np.float64)
        out = np.zeros((d.shape[0], N_BINS))
        out[:, 1:] = -np.cumsum(d, axis=1)
        return out

    def masses(self, dsfr, redshift, log_mass_formed=0.0) -> np.ndarray:
        """(N, 7) formed mass of each bin (Msun), summing to ``10**log_mass_formed``."""
        return self.derived(dsfr, redshift, log_mass_formed)["masses"]

    def derived(self, dsfr, redshift, log_mass_formed=0.0) -> dict[str, np.ndarray]:
        """``masses`` (N, 7) of the bins (Msun), ``log_sfr100`` and ``log_sfr10`` (log10
        Msun/yr, mean over the grid cells younger than 100 / 10 Myr, as bagpipes) and
        ``log_age_mw`` (log10 yr, formed-mass weighted).

        The two youngest bins end at 10 and 100 Myr and the older ones start at 100 Myr,
        so the SFR windows hold the whole of bins 1 (10 Myr) or 1-2 (100 Myr) and nothing
        else: the mean SFR is their mass over the window's summed widths.
        """
        w, age = self.bin_sums(redshift)
        m = 10.0 ** self.log_sfr(dsfr)
        m *= w
        total = m.sum(axis=1)
        m *= (10.0 ** np.asarray(log_mass_formed, dtype=np.float64) / total).reshape(-1, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            age_mw = np.sum(np.where(w > 0, m * age, 0.0), axis=1)
            msum = m.sum(axis=1)
            return {"masses": m,
                    "log_sfr100": np.log10((m[:, 0] + m[:, 1]) / self._window_total(1e8)),
                    "log_sfr10": np.log10(m[:, 0] / self._window_total(1e7)),
                    "log_age_mw": np.log10(age_mw / msum)}
