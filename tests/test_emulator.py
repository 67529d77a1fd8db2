"""Tests of pegleg.sed.emulator (MLPEmulator, file format) and pegleg.sed.parrot."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from pegleg.exceptions import EmulatorError, PeglegError
from pegleg.sed.emulator import MLPEmulator, load_emulator, save_emulator
from pegleg.sed.parrot import load_parrot

PARAMS = ("log_mass_formed", "redshift", "dust2", "logsfr_ratios_1")
BOUNDS = [[6.0, 12.5], [0.0, 10.0], [0.0, 4.0], [-5.0, 5.0]]
FILTERS = ("F115W", "F200W", "F444W")


def make_emulator(hidden=(16, 16), seed=0, activation="gelu_tanh", filters=FILTERS, ref="F444W"):
    rng = np.random.default_rng(seed)
    outputs = [f"mag:{ref}"] + [f"color:{f}" for f in filters if f != ref] + \
        ["log_stellar_mass", "log_sfr100", "log_age_mw", "av"]
    sizes = [len(PARAMS) - 1, *hidden, len(outputs)]
    W = [rng.normal(0, 1 / np.sqrt(a), (a, b)).astype(np.float32) for a, b in zip(sizes[:-1], sizes[1:])]
    b = [rng.normal(0, 0.1, s).astype(np.float32) for s in sizes[1:]]
    meta = dict(param_names=list(PARAMS), bounds=BOUNDS,
                prior={"logsfr_ratios_1": {"type": "student_t", "scale": 0.3, "nu": 2, "clip": 5}},
                filters=list(filters), reference_filter=ref, reference_log_mass=10.0,
                outputs=outputs, activation=activation, training={"note": "random test net"},
                accuracy={})
    return MLPEmulator(W, b, np.array([5.0, 2.0, 0.0], np.float32), np.array([3.0, 1.0, 2.0], np.float32),
                       rng.normal(0, 1, len(outputs)).astype(np.float32) + np.float32(25.0),
                       np.abs(rng.normal(1, 0.1, len(outputs))).astype(np.float32),
                       np.full(len(filters), 0.05, np.float32), meta)


@pytest.fixture
def emu():
    return make_emulator()


@pytest.fixture
def saved(tmp_path, emu):
    return save_emulator(emu, tmp_path / "emu.npz")


def rewrite(path, out, *, drop=(), meta_update=None, arrays_update=None):
    """Copy a saved emulator to ``out`` with changes (never unpickling anything)."""
    with np.load(path, allow_pickle=False) as f:
        arrs = {k: f[k] for k in f.files}
    meta = json.loads(arrs["metadata"].tobytes())
    meta.update(meta_update or {})
    for k in drop:
        meta.pop(k, None)
        arrs.pop(k, None)
    arrs["metadata"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    arrs.update(arrays_update or {})
    np.savez(out, **arrs)
    return out


# ----------------------------------------------------------------------------- MLP
def test_shapes(emu):
    x = emu.sample_prior(7, seed=1)
    assert emu.predict(x).shape == (7, 3)
    assert emu.predict(x[0]).shape == (3,)
    assert emu.predict(x, filters=["F444W", "F115W"]).shape == (7, 2)
    assert emu.predict(x, filters="F200W").shape == (7, 1)
    d = emu.derived(x)
    assert set(d) >= {"log_stellar_mass", "log_sfr100", "log_sfr10", "log_age_mw", "av"}
    assert all(v.shape == (7,) for v in d.values())
    assert np.all(np.isnan(d["log_sfr10"]))  # not provided by this network
    assert emu.predict(x).dtype == np.float64
    np.testing.assert_array_equal(emu.predict(x, filters=["F115W"])[:, 0], emu.predict(x)[:, 0])


def test_filter_order_and_reference(emu):
    x = emu.sample_prior(5, seed=2)
    full = emu.predict(x)
    np.testing.assert_array_equal(emu.predict(x, filters=["F444W", "F115W"]), full[:, [2, 0]])


def test_mass_scaling_exact(emu):
    x = emu.sample_prior(50, seed=3)
    x2 = x.copy()
    x2[:, 0] = np.clip(x[:, 0] + 1.3, 6, 12.5)
    dm = x2[:, 0] - x[:, 0]
    diff = emu.predict(x2) - emu.predict(x)
    np.testing.assert_allclose(diff, -2.5 * dm[:, None] * np.ones((1, 3)), rtol=0, atol=1e-12)
    d1, d2 = emu.derived(x), emu.derived(x2)
    np.testing.assert_allclose(d2["log_stellar_mass"] - d1["log_stellar_mass"], dm, atol=1e-12)
    np.testing.assert_allclose(d2["log_sfr100"] - d1["log_sfr100"], dm, atol=1e-12)
    np.testing.assert_array_equal(d2["av"], d1["av"])
    np.testing.assert_array_equal(d2["log_age_mw"], d1["log_age_mw"])


def test_matches_float64_reference(emu):
    x = emu.sample_prior(20, seed=4)
    h = (np.delete(x, 0, axis=1) - emu.x_mean.astype(float)) / emu.x_std.astype(float)
    for W, b in zip(emu.weights[:-1], emu.biases[:-1]):
        h = h @ W.astype(float) + b
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
    y = (h @ emu.weights[-1].astype(float) + emu.biases[-1]) * emu.y_std + emu.y_mean
    ref = y[:, 0] - 2.5 * (x[:, 0] - 10.0)
    expect = np.stack([ref + y[:, 1], ref + y[:, 2], ref], axis=1)
    np.testing.assert_allclose(emu.predict(x), expect, atol=2e-4)


@pytest.mark.parametrize("act", ["gelu_tanh", "gelu", "silu", "relu", "tanh"])
def test_activations_run(act):
    e = make_emulator(activation=act)
    assert np.all(np.isfinite(e.predict(e.sample_prior(10, seed=0))))


@pytest.mark.parametrize("act", ["gelu_tanh", "gelu", "silu", "relu", "tanh"])
def test_activations_extreme_inputs(act):
    """No overflow warning (pytest turns warnings into errors) and the right limits for huge
    pre-activations: a posterior network met SiLU inputs below -88 on real data (JOF-36)."""
    from pegleg.sed import emulator as E

    x = np.array([-1e6, -500.0, -89.0, -80.0, 0.0, 80.0, 500.0], dtype=np.float32)
    y = E._ACTIVATIONS[act](x.copy())
    assert np.all(np.isfinite(y)), y
    assert np.all(np.abs(y[:3]) < 1e-6) or act == "tanh", y
    np.testing.assert_allclose(y[-1], 500.0 if act != "tanh" else 1.0, rtol=1e-6)


@pytest.mark.parametrize("act", ["gelu_tanh", "gelu", "silu", "relu", "tanh"])
def test_evaluate_folded_matches_predict(act):
    """evaluate() runs a folded network (standardisation, biases, GELU's argument scale and
    1/2, colours + reference and -0.4 (m - 23.9) moved into the weights): same fluxes and derived values as
    predict()/derived(), across chunk boundaries, for rows out of bounds and a single row."""
    e = make_emulator(hidden=(24, 24, 24), activation=act)
    e.chunk_size = 7                                          # several chunks and a short last one
    x = e.sample_prior(40, seed=9)
    x[[3, 17], 2] = 99.0                                      # out of bounds -> NaN rows
    for filters in (None, ["F444W", "F115W"], "F200W"):
        flux, der = e.evaluate(x, filters, strict=False)
        mags = e.predict(x, filters, strict=False)
        if mags.ndim == 1:
            mags = mags[:, None]
        np.testing.assert_allclose(flux, 10 ** (-0.4 * (mags - 23.9)), rtol=2e-5)
        assert np.isnan(flux[[3, 17]]).all() and np.isfinite(np.delete(flux, [3, 17], 0)).all()
        ref = e.derived(x, strict=False)
        for k in ("log_stellar_mass", "log_sfr100", "log_age_mw", "av"):
            np.testing.assert_allclose(der[k], ref[k], atol=2e-5, equal_nan=True)
        assert np.isnan(der["log_sfr10"]).all()              # not an output of this network
    f1, d1 = e.evaluate(x[0], ["F115W", "F444W"])
    assert f1.shape == (2,) and np.ndim(d1["av"]) == 0
    np.testing.assert_allclose(f1, e.evaluate(x[:1], ["F115W", "F444W"])[0][0], rtol=1e-6)


def test_scaled_gelu_identity():
    """The six-pass activation of the folded network: s/2 * act(x / s) is GELU (tanh form)."""
    from pegleg.sed.emulator import _GELU_SCALE, _gelu_tanh, _gelu_tanh_scaled

    x = np.linspace(-8, 8, 4001)
    expect = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    got = 0.5 * _GELU_SCALE * _gelu_tanh_scaled((x / _GELU_SCALE).astype(np.float32)).astype(float)
    np.testing.assert_allclose(got, expect, atol=2e-6)
    np.testing.assert_allclose(_gelu_tanh(x.astype(np.float32)), expect, atol=2e-6)


def test_roundtrip_bitwise(emu, saved):
    loaded = load_emulator(saved)
    x = emu.sample_prior(1000, seed=5)
    np.testing.assert_array_equal(loaded.predict(x), emu.predict(x))
    for k, v in emu.derived(x).items():
        np.testing.assert_array_equal(loaded.derived(x)[k], v)
    assert loaded.param_names == emu.param_names and loaded.filters == emu.filters
    np.testing.assert_array_equal(loaded.bounds, emu.bounds)
    np.testing.assert_array_equal(loaded.sigma, emu.sigma)
    assert loaded.metadata["training"] == {"note": "random test net"}
    np.testing.assert_array_equal(loaded.sample_prior(100, seed=9), emu.sample_prior(100, seed=9))
    with np.load(saved, allow_pickle=False) as f:
        assert all(f[k].dtype == np.float32 for k in f.files if k != "metadata")
        assert f["metadata"].dtype == np.uint8


def test_out_of_bounds(emu):
    x = emu.sample_prior(4, seed=6)
    x[2, 2] = 7.0  # dust2 above 4
    with pytest.raises(EmulatorError, match="dust2") as info:
        emu.predict(x)
    assert "row 2" in str(info.value) and isinstance(info.value, PeglegError)
    out = emu.predict(x, strict=False)
    assert np.all(np.isnan(out[2])) and np.all(np.isfinite(np.delete(out, 2, axis=0)))
    np.testing.assert_array_equal(np.delete(out, 2, axis=0), emu.predict(np.delete(x, 2, axis=0)))
    x[1, 1] = np.nan
    with pytest.raises(EmulatorError, match="redshift"):
        emu.predict(x)
    assert np.isnan(emu.derived(x, strict=False)["av"][1])
    with pytest.raises(EmulatorError, match="shape"):
        emu.predict(np.zeros((3, 5)))


def test_unknown_filter(emu):
    with pytest.raises(EmulatorError) as info:
        emu.predict(emu.sample_prior(1, seed=0), filters=["F444W", "F999W"])
    msg = str(info.value)
    assert "F999W" in msg and all(f in msg for f in FILTERS)
    # case-insensitive match is accepted
    assert emu.predict(emu.sample_prior(1, seed=0)[0], filters=["f444w"]).shape == (1,)


def test_sample_prior(emu):
    a = emu.sample_prior(20000, seed=1)
    assert a.shape == (20000, 4)
    assert np.all(a >= emu.bounds[:, 0]) and np.all(a <= emu.bounds[:, 1])
    np.testing.assert_array_equal(a, emu.sample_prior(20000, seed=1))
    r = a[:, 3]  # Student-t(nu=2, scale 0.3), clipped at +-5
    assert abs(np.median(r)) < 0.02 and np.abs(r).max() <= 5
    q75 = np.quantile(r, 0.75)
    assert 0.2 < q75 < 0.25  # t_2 quartile 0.8165 * 0.3 = 0.245 (slightly less after truncation)
    assert abs(a[:, 1].mean() - 5.0) < 0.1  # uniform redshift


def test_speed_sanity(emu):
    big = make_emulator(hidden=(128, 128, 128, 128))
    x = big.sample_prior(20000, seed=0)
    out = big.predict(x)
    assert out.shape == (20000, 3) and np.all(np.isfinite(out))


# ----------------------------------------------------------------------------- bad files
def test_default_not_bundled(tmp_path, monkeypatch):
    """A checkout without the bundled file gets a clear error (the real file is tested elsewhere)."""
    import pegleg.sed.emulator as em

    monkeypatch.setattr(em, "_DATA_DIR", tmp_path)
    with pytest.raises(EmulatorError, match="no bundled emulator yet"):
        load_emulator()


def test_missing_file(tmp_path):
    with pytest.raises(EmulatorError, match="nothere.npz"):
        load_emulator(tmp_path / "nothere.npz")


def test_corrupt_file(tmp_path, saved):
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(saved.read_bytes()[:300])
    with pytest.raises(EmulatorError, match="corrupt.npz"):
        load_emulator(bad)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file at all")
    with pytest.raises(EmulatorError, match="junk.npz"):
        load_emulator(junk)


def test_wrong_version_and_format(tmp_path, saved):
    p = rewrite(saved, tmp_path / "v2.npz", meta_update={"version": 2})
    with pytest.raises(EmulatorError, match=r"v2\.npz.*version"):
        load_emulator(p)
    p = rewrite(saved, tmp_path / "fmt.npz", meta_update={"format": "something-else"})
    with pytest.raises(EmulatorError, match=r"fmt\.npz.*format"):
        load_emulator(p)


def test_missing_keys(tmp_path, saved):
    p = rewrite(saved, tmp_path / "nometa.npz", drop=["reference_filter"])
    with pytest.raises(EmulatorError, match=r"nometa\.npz.*reference_filter"):
        load_emulator(p)
    p = rewrite(saved, tmp_path / "noarr.npz", drop=["y_std"])
    with pytest.raises(EmulatorError, match=r"noarr\.npz.*y_std"):
        load_emulator(p)
    p = rewrite(saved, tmp_path / "nojson.npz", drop=["metadata"])
    with np.load(saved) as f:
        np.savez(p, **{k: f[k] for k in f.files if k != "metadata"})
    with pytest.raises(EmulatorError, match=r"nojson\.npz.*metadata"):
        load_emulator(p)


def test_shape_mismatch(tmp_path, saved):
    with np.load(saved) as f:
        w1 = f["W1"]
    p = rewrite(saved, tmp_path / "shape.npz", arrays_update={"W1": w1[:-1]})
    with pytest.raises(EmulatorError, match=r"shape\.npz.*W1"):
        load_emulator(p)
    p = rewrite(saved, tmp_path / "sig.npz", arrays_update={"sigma": np.zeros(5, np.float32)})
    with pytest.raises(EmulatorError, match=r"sig\.npz"):
        load_emulator(p)
    p = rewrite(saved, tmp_path / "outs.npz", meta_update={"outputs": ["mag:F444W"]})
    with pytest.raises(EmulatorError, match=r"outs\.npz"):
        load_emulator(p)


def test_pickled_object_array_refused(tmp_path, saved):
    """A pickled object array inside the .npz is refused (allow_pickle=False is used)."""
    p = rewrite(saved, tmp_path / "pickled.npz",
                arrays_update={"W0": np.array([{"evil": 1}], dtype=object)})
    with zipfile.ZipFile(p) as z:  # the file really contains a pickle
        assert b"evil" in z.read("W0.npy")
    with pytest.raises(EmulatorError, match=r"pickled\.npz.*unpickling"):
        load_emulator(p)
    with pytest.raises(EmulatorError, match=r"pickled\.npz"):
        load_emulator(p, trust=True)  # trust never enables pickles in pegleg's own format


# ----------------------------------------------------------------------------- Parrot
A = 2.5 * np.log10(np.e)
U0 = 35.0
PARROT_PARAMS = ["massmet_1", "massmet_2", "dust2", "zred"]
PARROT_FILTERS = ["jwst_f444w", "acs_wfc_f814w", "wfc3_ir_f160w", "sdss_u0"]
LIMITS = [(-1.0, 0.5, 2.0, 1.0), (2.0, 1.0, 13.0, 0.5)]  # net 1 fully covers z <= 12


def _parrot_net(rng, n_in, n_out, hidden=8):
    sizes = [n_in, hidden, hidden, n_out]
    W = [rng.normal(0, 1 / np.sqrt(a), (b, a)) for a, b in zip(sizes[:-1], sizes[1:])]  # (out, in)
    b = [rng.normal(0, 0.1, s) for s in sizes[1:]]
    norm = (rng.normal(0, 1, n_in), np.abs(rng.normal(1, 0.2, n_in)))
    denorm = (24 + rng.normal(0, 1, n_out), np.full(n_out, 0.5))  # (mu, sig)
    return norm, denorm, W, b


def write_stitched(path, seed=0):
    rng = np.random.default_rng(seed)
    nout = 6  # native outputs; our filters sit in columns 4, 0, 2, 5
    cols = {"jwst_f444w": 4, "acs_wfc_f814w": 0, "wfc3_ir_f160w": 2, "sdss_u0": 5}
    nets = [(*_parrot_net(rng, 4, nout), "gelu") for _ in range(2)]
    labels = ["q-4", "q-3", "q-2", "q-1", "median", "q+1", "q+2", "q+3", "q+4", "mean", "std"]
    rq = rng.uniform(0.01, 0.1, (nout, len(labels), 2))
    d = {"filters": PARROT_FILTERS, "filter_redir": cols, "parameters": PARROT_PARAMS,
         "parameter_limits": [np.array([6.0, 12.5]), np.array([-2.0, 0.2]), np.array([0.0, 4.0]),
                              np.array([0.0, 12.0])],
         "zred_index": 3, "emulator_limits": LIMITS, "nets": nets,
         "resid_quants": rq, "resid_quants_labels": labels}
    np.save(path, np.array(d, dtype=object))  # a pickle, as Parrot's files are
    return d


def hand_stitched(d, theta):
    """Independent float64 evaluation of the stitched Parrot file (plain numpy)."""
    out = []
    for t in np.atleast_2d(theta):
        z = t[3]
        # net 0 covers z < 2.5 with its right overlap [1.5, 2.5]; net 1 z > 1.5
        if z <= 1.5:
            w = [1.0, 0.0]
        elif z >= 2.5:
            w = [0.0, 1.0]
        else:
            ang = np.pi / 2 * (z - 2.0 + 0.5)
            w = [np.cos(ang) ** 2, np.sin(ang) ** 2]
        u = np.zeros(6)
        for wk, (norm, denorm, W, b, _) in zip(w, d["nets"]):
            h = (t - norm[0]) / norm[1]
            for Wi, bi in zip(W[:-1], b[:-1]):
                h = Wi @ h + bi
                h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
            u += wk * ((W[-1] @ h + b[-1]) * denorm[1] + denorm[0])
        flux = 2 * 10 ** (-0.4 * U0) * np.sinh((U0 - u) / A)  # maggies from asinh mags
        m = -2.5 * np.log10(flux)
        out.append([m[d["filter_redir"][f]] for f in PARROT_FILTERS])
    return np.array(out), w


def test_parrot_requires_trust(tmp_path):
    p = tmp_path / "stitched.npy"
    write_stitched(p)
    with pytest.raises(EmulatorError, match="trust=True"):
        load_parrot(p)
    with pytest.raises(EmulatorError, match="trust=True"):
        load_emulator(p)


def test_parrot_stitched_blending(tmp_path):
    from pegleg.sed.parrot import stitch_weights

    p = tmp_path / "stitched.npy"
    d = write_stitched(p)
    emu = load_parrot(p, trust=True, mass_scaling="network")
    assert emu.param_names == ("log_mass_formed", "logzsol", "dust2", "redshift")
    assert emu.filters == ("F444W", "F814W", "F160W", "sdss_u0")
    zs = np.array([0.5, 1.5, 1.6, 2.0, 2.3, 2.5, 3.0, 11.9])
    w = stitch_weights(zs, LIMITS)
    for z, wk in zip(zs, w):
        np.testing.assert_allclose(wk, hand_stitched(d, [10, -0.5, 1, z])[1], atol=1e-12)
        np.testing.assert_allclose(wk.sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(w[3], [0.5, 0.5], atol=1e-12)
    theta = np.array([[9.0 + 0.3 * i, -0.5, 0.2 * i, z] for i, z in enumerate(zs)])
    expect, _ = hand_stitched(d, theta)
    got = emu.predict(theta)
    np.testing.assert_allclose(got, expect, atol=3e-4)  # float32 network
    # the blend really mixes the two networks: neither alone reproduces the overlap
    assert np.all(np.isfinite(got))
    # filter aliases: sedpy and qualified names
    np.testing.assert_array_equal(emu.predict(theta, filters=["jwst_f444w", "ACS_F814W"]), got[:, :2])
    # sigma is the median over sub-networks of the "std" statistic
    std = d["resid_quants"][:, 10, :]
    np.testing.assert_allclose(emu.sigma, np.median(std[[4, 0, 2, 5]], axis=1))
    with pytest.raises(EmulatorError, match="F444W"):
        emu.predict(theta, filters=["F999W"])
    with pytest.raises(EmulatorError, match="redshift"):
        emu.predict([10, -0.5, 1, 13.0])


def test_parrot_exact_mass_scaling(tmp_path):
    p = tmp_path / "stitched.npy"
    d = write_stitched(p)
    emu = load_parrot(p, trust=True)  # exact mass scaling by default
    theta = np.array([[8.0, -0.5, 0.3, 1.0], [11.0, -1.0, 2.0, 2.2]])
    at10 = theta.copy()
    at10[:, 0] = 10.0
    expect = hand_stitched(d, at10)[0] - 2.5 * (theta[:, :1] - 10.0)
    np.testing.assert_allclose(emu.predict(theta), expect, atol=3e-4)
    dd = emu.derived(theta)
    np.testing.assert_allclose(dd["av"], A * theta[:, 2])
    assert np.all(np.isnan(dd["log_stellar_mass"]))


def test_parrot_single(tmp_path):
    rng = np.random.default_rng(3)
    P = 18
    norm, denorm, W, b = _parrot_net(rng, P, 5)
    redir = {"jwst_f200w": 3, "jwst_f444w": 1}  # 1-based (Julia)
    resid = rng.uniform(0.01, 0.1, (5, 11))
    ranges = [np.array([-1.0, 1.0])] * P
    ranges[0] = np.array([6.0, 12.5])
    ranges[14] = np.array([0.5, 3.0])
    obj = np.empty(6, dtype=object)
    obj[:] = [redir, norm, (W, b), denorm, resid, ranges]
    p = tmp_path / "single.npy"
    np.save(p, obj)
    emu = load_emulator(p, trust=True)
    assert emu.param_names[0] == "log_mass_formed" and emu.param_names[14] == "redshift"
    assert emu.filters == ("F444W", "F200W")
    np.testing.assert_allclose(emu.sigma, resid[[0, 2], 10])
    theta = np.zeros(P)
    theta[0], theta[14] = 10.0, 1.0
    h = (theta - norm[0]) / norm[1]
    for Wi, bi in zip(W[:-1], b[:-1]):
        h = Wi @ h + bi
        h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h ** 3)))
    u = (W[-1] @ h + b[-1]) * denorm[1] + denorm[0]
    m = -2.5 * np.log10(2 * 10 ** (-0.4 * U0) * np.sinh((U0 - u) / A))
    np.testing.assert_allclose(emu.predict(theta), m[[0, 2]], atol=3e-4)
    assert emu.derived(theta)["log_sfr100"].shape == ()
