"""Exact emission lines and dust re-emission (pegleg.sed.components) against bagpipes."""

import numpy as np
import pytest

pytest.importorskip("bagpipes")

from pegleg.exceptions import EmulatorError  # noqa: E402
from pegleg.sed import components as C  # noqa: E402
from pegleg.sed import sps  # noqa: E402
from pegleg.sed.emulator import load_emulator, save_emulator  # noqa: E402
from pegleg.sed.sfh import N_BINS  # noqa: E402
from pegleg.sed.sfh_emulator import SFHBinEmulator  # noqa: E402

FILTERS = ["F090W", "F150W", "F250M", "F410M", "F460M", "F770W", "F1130W"]
INPUTS = ["redshift", "log_metallicity", "av", "delta", "eta", "log_u"]


@pytest.fixture(scope="module")
def all_lines():
    """Tables with every line that can reach a filter (no strength cut)."""
    return C.build_tables(FILTERS, min_fraction=0.0)


@pytest.fixture(scope="module")
def points():
    p = sps.sample_prior(6, seed=11)
    p[:, sps.PARAM_NAMES.index("redshift")] = [0.02, 0.38, 1.45, 2.1, 5.6, 9.7]
    p[:, sps.PARAM_NAMES.index("av")] = [0.3, 2.5, 1.0, 3.6, 0.7, 1.9]
    return p


def _no_lines(model):
    """bagpipes' nebular grid of ``model`` without its line spikes (the continuum only)."""
    import bagpipes.config as cfg

    wav = model.wavelengths
    grid = model.nebular.combined_grid
    saved = grid.copy()
    for i, lw in enumerate(cfg.line_wavs):
        ind = np.abs(wav - lw).argmin()
        if 0 < ind < wav.size - 1:
            grid[ind] -= model.nebular.line_grid[i] / ((wav[ind + 1] - wav[ind - 1]) / 2)
    return saved


def _cols(p):
    return {k: p[:, sps.PARAM_NAMES.index(k)] for k in INPUTS}


def test_lines_and_dust_emission_reproduce_bagpipes(all_lines, points):
    comp = C.Components(all_lines)
    assert comp.n_lines > 90                        # Lyman series to the mid-IR fine-structure lines
    flux_nodust, _, dust = sps.bin_photometry(points, FILTERS, split_dust=True)
    flux_all, _ = sps.bin_photometry(points, FILTERS)
    model = sps._model_for(FILTERS, dust_probe=True).model
    saved = _no_lines(model)
    try:
        flux_cont, _, _ = sps.bin_photometry(points, FILTERS, split_dust=True)
    finally:
        model.nebular.combined_grid[:] = saved
    to_obs = 10.0 ** (-0.4 * sps.distance_modulus(points[:, 1]))[:, None]
    fidx = np.arange(len(FILTERS))
    for k in range(2):
        onehot = np.zeros((len(points), 2))
        onehot[:, k] = 1.0
        lines = comp.lines(_cols(points), onehot, fidx) * to_obs
        rel = np.abs(flux_cont[:, k] + lines - flux_nodust[:, k]) / flux_nodust[:, k]
        assert rel.max() < 5e-4, (k, rel.max())
        if k == 0:  # the lines matter: up to most of a medium band's flux
            assert (lines / flux_nodust[:, 0]).max() > 0.3
    re = dust[:, :, None] * (comp.dust_response(points[:, 1], fidx) * to_obs)[:, None, :]
    rel = np.abs(flux_nodust + re - flux_all) / flux_all
    assert rel.max() < 1e-3, rel.max()
    assert (re / flux_all).max() > 0.5              # MIRI at low z is dust emission


def test_grouped_shifts_match_per_model_interpolation(all_lines, points):
    """The one-product-per-grid-shift evaluation equals bagpipes' np.interp of each line."""
    comp = C.Components(all_lines)
    rng = np.random.default_rng(3)
    z = np.concatenate([rng.uniform(0.01, 10, 300), np.full(50, 2.0)])
    s = rng.uniform(0, 1, (z.size, comp.n_lines)).astype(np.float32)
    fidx = np.array([1, 4, 6])
    got = comp.filter_sum(s, z, fidx)
    wav = all_lines["comp_filt_wav"]
    lw = all_lines["comp_line_wav"]
    want = np.zeros_like(got, dtype=np.float64)
    for j, f in enumerate(fidx):
        t = np.interp(np.outer(1 + z, lw), wav, all_lines["comp_filt"][:, f], left=0, right=0)
        want[:, j] = np.sum(s * t, axis=1)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6 * want.max())
    same = comp.filter_sum(s[-50:], z[-50:], fidx)     # one redshift: a single product
    np.testing.assert_allclose(same, got[-50:], rtol=1e-6)


def test_salim_curve_matches_bagpipes():
    import bagpipes.config as cfg  # noqa: F401

    model = sps._model_for(FILTERS).model
    wav = np.asarray(model.wavelengths)
    pick = np.searchsorted(wav, [1300.0, 2175.0, 4861.0, 6563.0, 18751.0])
    for delta in (-0.9, -0.3, 0.0, 0.35):
        model.dust_atten.update({"delta": delta, "B": max(0.0, 0.85 - 1.9 * delta), "Av": 1.0})
        got = C.salim_curve(model.dust_atten.A_cont_calz[pick], wav[pick], [delta])[0]
        np.testing.assert_allclose(got, model.dust_atten.A_cont[pick], rtol=1e-12)


def _exact_network_emulator(p, max_lines=None):
    """An SFHBinEmulator whose (constant) network outputs the exact targets of point ``p``."""
    g = sps.sfh_age_grid()
    keep = g["z"] <= 11.0
    igm_z = np.round(np.arange(1001) * 0.01, 6)
    lnz = np.linspace(np.log(0.009), np.log(10.02), 2000)
    tables = {"sfh_ages": g["ages"], "sfh_widths": g["widths"], "sfh_z": g["z"][keep],
              "sfh_age_gyr": g["age_gyr"][keep], "igm_z": igm_z,
              "igm_trans": sps.igm_band_transmission(FILTERS, np.maximum(igm_z, 1e-4)),
              "dm_lnz": lnz, "dm": sps.distance_modulus(np.exp(lnz))}
    tables.update(C.build_tables(FILTERS, max_lines=max_lines))
    F = len(FILTERS)
    n_out = 2 * N_BINS + N_BINS * F
    meta = dict(param_names=list(sps.PARAM_NAMES), bounds=sps.BOUNDS.tolist(), prior={}, filters=FILTERS,
                activation="gelu_tanh", inputs=INPUTS, dsfr_names=[f"dsfr{k}" for k in range(1, 7)],
                training={}, accuracy={})
    W, b = [np.zeros((6, 4)), np.zeros((4, n_out))], [np.zeros(4), np.zeros(n_out)]
    emu = SFHBinEmulator(W, b, np.zeros(6), np.ones(6), np.zeros(n_out), np.ones(n_out), np.full(F, 0.01),
                         tables, meta)
    flux, surv, dust = sps.bin_photometry(p, FILTERS, split_dust=True)
    r, q, _ = emu.targets(p[None], flux[None], dust[None])
    emu.y_mean = np.concatenate([r[0].ravel(), np.log10(surv), q[0]]).astype(np.float32)
    emu.__dict__.pop("_slice_cache", None)
    return emu


@pytest.mark.parametrize("z", [0.41, 2.3, 6.1])
def test_emulator_with_exact_network_reproduces_bagpipes(z, tmp_path):
    """Given the exact per-bin targets, the emulator's lines, dust and bin sums are bagpipes'
    photometry for any SFH and mass (only the network is approximate)."""
    p = sps.sample_prior(1, seed=int(z * 100))[0]
    p[sps.PARAM_NAMES.index("redshift")] = z
    p[sps.PARAM_NAMES.index("av")] = 2.2
    emu = _exact_network_emulator(p, max_lines=12 if z > 2 else None)
    assert emu.version == 3 and emu.components is not None
    many = np.repeat(p[None], 8, axis=0)
    rng = np.random.default_rng(5)
    many[:, 7:] = np.clip(rng.standard_t(2, size=(8, 6)) * 0.6, -4, 4)   # rising and falling histories
    many[:, 0] = rng.uniform(7, 11, 8)
    want = sps.photometry(many, FILTERS)
    got = emu.predict(many)
    assert np.abs(got - want).max() < 2e-3
    path = tmp_path / "v3.npz"
    save_emulator(emu, path)
    back = load_emulator(str(path))
    assert back.version == 3
    np.testing.assert_allclose(back.predict(many), got, atol=1e-5)


def test_component_tables_are_checked(all_lines):
    bad = dict(all_lines)
    bad["comp_line_fac"] = bad["comp_line_fac"][:-1]
    with pytest.raises(EmulatorError, match="comp_line_fac"):
        C.Components(bad)
    bad = dict(all_lines)
    del bad["comp_dust_resp"]
    with pytest.raises(EmulatorError, match="comp_dust_resp"):
        C.Components(bad)
    bad = dict(all_lines)
    bad["comp_line_wav"] = bad["comp_line_wav"] * 1.001
    with pytest.raises(EmulatorError, match="grid"):
        C.Components(bad)
