"""The SFH-bin decomposition (pegleg.sed.sfh, sps.bin_photometry) and SFHBinEmulator."""

import json

import numpy as np
import pytest

from pegleg.exceptions import EmulatorError
from pegleg.sed.emulator import load_emulator, save_emulator
from pegleg.sed.sfh import N_BINS, BinGrid
from pegleg.sed.sfh_emulator import SFHBinEmulator

PARAMS = ["log_mass_formed", "redshift", "log_metallicity", "av", "delta", "eta", "log_u"] + \
    [f"dsfr{k}" for k in range(1, 7)]
INPUTS = ["redshift", "log_metallicity", "av", "delta", "eta", "log_u"]
FILTERS = ["F150W", "F277W", "F444W"]
BOUNDS = [[6, 12.5], [0.01, 10], [-2, 0.2], [0, 4], [-1, 0.4], [1, 3], [-4, -1]] + [[-5, 5]] * 6


def toy_grid():
    """A small analytic SFH grid (log-spaced ages) and a matter-only age-redshift table."""
    ages = 10 ** np.arange(6.0, 10.15, 0.01)
    lhs = np.concatenate([[0.0], np.sqrt(ages[1:] * ages[:-1]), [ages[-1] * 1.01]])
    z = np.linspace(0.0, 11.0, 1101)
    age_gyr = 13.5 * (1 + z) ** -1.5
    return {"sfh_ages": ages, "sfh_widths": np.diff(lhs), "sfh_z": z, "sfh_age_gyr": age_gyr}


def toy_emulator(r_bins, log_surv, igm=None, dm_slope=5.0):
    """An SFHBinEmulator whose network is constant: per-bin magnitudes ``r_bins`` (7, F)."""
    F = len(FILTERS)
    n_out = N_BINS * F + N_BINS
    y_mean = np.concatenate([np.asarray(r_bins, float).ravel(), np.asarray(log_surv, float)])
    igm_z = np.arange(1001) * 0.01
    trans = np.ones((igm_z.size, F)) if igm is None else igm(igm_z)
    lnz = np.linspace(np.log(0.009), np.log(10.02), 500)
    tables = dict(toy_grid(), igm_z=igm_z, igm_trans=trans, dm_lnz=lnz, dm=40.0 + dm_slope * lnz)
    meta = dict(param_names=PARAMS, bounds=BOUNDS, prior={}, filters=FILTERS, activation="gelu_tanh",
                inputs=INPUTS, dsfr_names=PARAMS[7:], training={}, accuracy={})
    W = [np.zeros((6, 4)), np.zeros((4, n_out))]
    b = [np.zeros(4), np.zeros(n_out)]
    return SFHBinEmulator(W, b, np.zeros(6), np.ones(6), y_mean, np.ones(n_out), np.full(F, 0.02), tables, meta)


def theta(n=50, seed=0):
    rng = np.random.default_rng(seed)
    lo, hi = np.array(BOUNDS).T
    return lo + (hi - lo) * rng.uniform(size=(n, len(PARAMS)))


# --------------------------------------------------------------------------- BinGrid
def test_bin_masses_against_direct_sums():
    g = BinGrid.from_arrays(toy_grid())
    th = theta(40, seed=1)
    z, dsfr, logm = th[:, 1], th[:, 7:], th[:, 0]
    m = g.masses(dsfr, z, logm)
    for i in range(len(th)):
        edges = g.edges(z[i])[0]
        ls = np.concatenate([[0.0], -np.cumsum(dsfr[i])])
        rate = np.zeros_like(g.ages)
        for k in range(N_BINS):
            inside = (g.ages > edges[k]) & (g.ages < edges[k + 1])
            rate[inside] = 10 ** ls[k]
        rate *= 10 ** logm[i] / np.sum(rate * g.widths)
        direct = [np.sum((rate * g.widths)[(g.ages > edges[k]) & (g.ages < edges[k + 1])]) for k in range(N_BINS)]
        np.testing.assert_allclose(m[i], direct, rtol=1e-12)
        d = g.derived(dsfr[i:i + 1], z[i:i + 1], logm[i:i + 1])
        young = g.ages < 1e8
        assert d["log_sfr100"][0] == pytest.approx(np.log10(np.sum((rate * g.widths)[young]) / g.widths[young].sum()),
                                                   abs=1e-12)
        assert d["log_age_mw"][0] == pytest.approx(np.log10(np.sum(rate * g.widths * g.ages) / 10 ** logm[i]),
                                                   abs=1e-12)


def test_edge_on_a_grid_point_belongs_to_neither_bin():
    """bagpipes' masks are strict on both sides: a grid age equal to an edge forms nothing."""
    grid = toy_grid()
    g = BinGrid.from_arrays(grid)
    w, _ = g.bin_sums(np.array([1.0]))
    i7 = np.searchsorted(g.ages, 1e7)
    exact = g.ages[i7] == 1e7
    total_young = g.widths[g.ages < 1e8].sum() - (g.widths[i7] if exact else 0.0)
    assert w[0, :2].sum() == pytest.approx(total_young, rel=1e-12)


def test_bingrid_rejects_bad_tables():
    grid = toy_grid()
    with pytest.raises(EmulatorError, match="ages must increase"):
        BinGrid(grid["sfh_ages"][::-1], grid["sfh_widths"], grid["sfh_z"], grid["sfh_age_gyr"])
    with pytest.raises(EmulatorError, match="redshift table"):
        BinGrid(grid["sfh_ages"], grid["sfh_widths"], grid["sfh_z"][::-1], grid["sfh_age_gyr"])


# --------------------------------------------------------------------------- emulator algebra
def test_flux_is_the_mass_weighted_sum_of_bins():
    rng = np.random.default_rng(2)
    r = rng.uniform(2.0, 8.0, (N_BINS, len(FILTERS)))
    surv = np.log10(rng.uniform(0.5, 1.0, N_BINS))
    emu = toy_emulator(r, surv, igm=lambda z: np.clip(1.5 - 0.25 * z[:, None] * np.array([1.0, 0.5, 0.1]), 0.05, 1))
    th = theta(30, seed=3)
    flux, der = emu.evaluate(th)
    m = emu.bin_masses(th)
    z = th[:, 1]
    T = np.clip(1.5 - 0.25 * z[:, None] * np.array([1.0, 0.5, 0.1]), 0.05, 1)
    dm = 40.0 + 5.0 * np.log(z)
    expect = T * np.einsum("nk,kf->nf", m, 10 ** (-0.4 * (r - 23.9))) * 10 ** (-0.4 * dm)[:, None]
    np.testing.assert_allclose(flux, expect, rtol=2e-5)
    np.testing.assert_allclose(der["log_stellar_mass"], np.log10(m @ 10 ** surv), atol=1e-6)
    np.testing.assert_allclose(np.log10(m.sum(1)), th[:, 0], atol=1e-12)
    np.testing.assert_allclose(emu.predict(th), -2.5 * np.log10(expect) + 23.9, atol=2e-5)
    # a filter subset is the same columns, in the order asked
    sub, _ = emu.evaluate(th, ["F444W", "F150W"])
    np.testing.assert_allclose(sub, flux[:, [2, 0]], rtol=1e-6)
    # derived() agrees with evaluate()
    d2 = emu.derived(th)
    for k in ("log_stellar_mass", "log_sfr100", "log_sfr10", "log_age_mw", "av"):
        np.testing.assert_allclose(d2[k], der[k], rtol=1e-12)
    np.testing.assert_array_equal(der["av"], th[:, 3])


def test_mass_scaling_is_exact():
    emu = toy_emulator(np.full((N_BINS, 3), 5.0), np.zeros(N_BINS))
    th = theta(10, seed=4)
    th2 = th.copy()
    th2[:, 0] = np.clip(th[:, 0] + 1.0, 6, 12.5)
    f1, d1 = emu.evaluate(th)
    f2, d2 = emu.evaluate(th2)
    np.testing.assert_allclose(f2 / f1, np.broadcast_to(10 ** (th2[:, :1] - th[:, :1]), f1.shape), rtol=1e-5)
    np.testing.assert_allclose(d2["log_sfr100"] - d1["log_sfr100"], th2[:, 0] - th[:, 0], atol=1e-12)


def test_out_of_bounds_and_unknown_filter():
    emu = toy_emulator(np.full((N_BINS, 3), 5.0), np.zeros(N_BINS))
    th = theta(5, seed=5)
    th[2, 3] = 9.0  # av
    with pytest.raises(EmulatorError, match="'av' = 9.0"):
        emu.evaluate(th)
    flux, der = emu.evaluate(th, strict=False)
    assert np.all(np.isnan(flux[2])) and np.isnan(der["log_stellar_mass"][2])
    assert np.all(np.isfinite(np.delete(flux, 2, axis=0)))
    with pytest.raises(EmulatorError, match="F999W.*available filters: F150W, F277W, F444W"):
        emu.evaluate(theta(2), ["F999W"])


def test_roundtrip_and_format_errors(tmp_path):
    emu = toy_emulator(np.random.default_rng(6).uniform(2, 8, (N_BINS, 3)), np.full(N_BINS, -0.1))
    path = save_emulator(emu, tmp_path / "sfh.npz")
    back = load_emulator(str(path))
    assert isinstance(back, SFHBinEmulator)
    th = theta(20, seed=7)
    np.testing.assert_array_equal(back.evaluate(th)[0], emu.evaluate(th)[0])
    with np.load(path) as z:
        arrays = dict(z)
    meta = json.loads(arrays["metadata"].tobytes())

    def rewrite(name, meta_changes=(), drop=()):
        m = dict(meta, **dict(meta_changes))
        a = {k: v for k, v in arrays.items() if k not in drop}
        a["metadata"] = np.frombuffer(json.dumps(m).encode(), np.uint8)
        np.savez(tmp_path / name, **a)
        return str(tmp_path / name)

    with pytest.raises(EmulatorError, match="kind"):
        load_emulator(rewrite("kind.npz", {"kind": "other"}))
    with pytest.raises(EmulatorError, match="version 4 is not supported"):
        load_emulator(rewrite("v4.npz", {"version": 4}))
    with pytest.raises(EmulatorError, match=r"missing arrays \['comp_u'"):   # version 3 needs components
        load_emulator(rewrite("v3.npz", {"version": 3}))
    with pytest.raises(EmulatorError, match=r"missing arrays \['igm_trans'\]"):
        load_emulator(rewrite("noigm.npz", drop=["igm_trans"]))
    with pytest.raises(EmulatorError, match="dsfr_names"):
        load_emulator(rewrite("nodsfr.npz", {"dsfr_names": PARAMS[7:12]}))
    short = dict(arrays, igm_z=arrays["igm_z"][:500], igm_trans=arrays["igm_trans"][:500])
    np.savez(tmp_path / "short.npz", **short)
    with pytest.raises(EmulatorError, match="cover the redshift bounds"):
        load_emulator(str(tmp_path / "short.npz"))


# --------------------------------------------------------------------------- exact decomposition
@pytest.mark.parametrize("seed", [11, 12])
def test_bagpipes_is_linear_in_the_bins(seed):
    """bagpipes' photometry is the bin-mass-weighted sum of single-bin photometry (to 1e-10
    mag), and BinGrid's masses and SFRs are bagpipes' own."""
    pytest.importorskip("bagpipes")
    pytest.importorskip("sedpy")
    from pegleg.sed import sps

    filters = ["F115W", "F200W", "F356W", "F444W", "F770W"]
    p = sps.sample_prior(2, seed=seed)
    g = BinGrid(**sps.sfh_age_grid())
    flux, surv = sps.bin_photometry(p, filters)
    m = g.masses(p[:, 7:], p[:, 1], p[:, 0])
    combined = -2.5 * np.log10(np.einsum("nk,nkf->nf", m, flux)) + 23.9
    np.testing.assert_allclose(combined, sps.photometry(p, filters), atol=1e-10)
    der = sps.derived(p)
    np.testing.assert_allclose(np.log10(np.sum(m * surv, axis=1)), der["log_stellar_mass"], atol=1e-10)
    gd = g.derived(p[:, 7:], p[:, 1], p[:, 0])
    for k in ("log_sfr100", "log_sfr10", "log_age_mw"):
        np.testing.assert_allclose(gd[k], der[k], atol=1e-10)


def test_network_shape_errors():
    emu = toy_emulator(np.full((N_BINS, 3), 5.0), np.zeros(N_BINS))
    W, b = [w.copy() for w in emu.weights], [x.copy() for x in emu.biases]
    with pytest.raises(EmulatorError, match=r"must end with 28 outputs \(7 bins x 3 filters \+ 7\), got 27"):
        SFHBinEmulator([W[0], W[1][:, :-1]], [b[0], b[1][:-1]], emu.x_mean, emu.x_std, emu.y_mean[:-1],
                       emu.y_std[:-1], emu.sigma, emu.tables, emu.metadata)
    with pytest.raises(EmulatorError, match="as many weight matrices as bias vectors"):
        SFHBinEmulator(W, b[:1], emu.x_mean, emu.x_std, emu.y_mean, emu.y_std, emu.sigma, emu.tables, emu.metadata)
    bad = dict(emu.tables, dm=np.full_like(emu.tables["dm"], np.nan))
    with pytest.raises(EmulatorError, match="dm contains non-finite values"):
        SFHBinEmulator(W, b, emu.x_mean, emu.x_std, emu.y_mean, emu.y_std, emu.sigma, bad, emu.metadata)
