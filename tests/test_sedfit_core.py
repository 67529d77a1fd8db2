"""Building blocks of the pixel SED fitter: mixtures, features, priors, analytic mass."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pegleg.exceptions import EmulatorError, FitError
from pegleg.sed import fit as F
from pegleg.sed.npe import GaussianMixture, features

from network_helpers import random_network


def _random_mixture(rng, n=3, k=3, d=4):
    mean = rng.normal(0, 2, (n, k, d))
    A = rng.normal(0, 0.5, (n, k, d, d))
    L = np.tril(A, -1) + np.eye(d) * rng.uniform(0.3, 1.5, (n, k, 1, d))
    return GaussianMixture(rng.normal(0, 1, (n, k)), mean, L)


def test_mixture_logpdf_matches_scipy_and_sampling():
    rng = np.random.default_rng(1)
    mix = _random_mixture(rng)
    x = rng.normal(0, 2, (3, 50, 4))
    w = np.exp(mix.log_weights)
    for i in range(3):
        ref = sum(w[i, j] * stats.multivariate_normal(mix.mean[i, j], mix.scale_tril[i, j] @ mix.scale_tril[i, j].T).pdf(x[i])
                  for j in range(3))
        np.testing.assert_allclose(mix.logpdf(x)[i], np.log(ref), rtol=1e-10)
    # the defensive mixture equals an explicit 2K-component mixture
    wide = GaussianMixture(np.concatenate([mix.log_weights + np.log(0.9), mix.log_weights + np.log(0.1)], 1),
                           np.concatenate([mix.mean, mix.mean], 1),
                           np.concatenate([mix.scale_tril, 2 * mix.scale_tril], 1))
    np.testing.assert_allclose(mix.logpdf(x, widen=2.0, widen_weight=0.1), wide.logpdf(x), rtol=1e-10)
    # samples have the mixture's moments
    s = mix.sample(40000, rng, widen=2.0, widen_weight=0.1)
    m, c = wide.moments()
    np.testing.assert_allclose(s.mean(1), m, atol=0.08)
    np.testing.assert_allclose(np.cov(s[0].T), c[0], rtol=0.06, atol=0.1)


def test_mixture_marginal():
    rng = np.random.default_rng(2)
    mix = _random_mixture(rng, n=2, k=1, d=4)
    mar = mix.marginal([0, 2])
    cov = mix.scale_tril[0, 0] @ mix.scale_tril[0, 0].T
    sub = cov[np.ix_([0, 2], [0, 2])]
    x = rng.normal(0, 1, (2, 5, 2))
    ref = stats.multivariate_normal(mix.mean[0, 0, [0, 2]], sub).logpdf(x[0])
    np.testing.assert_allclose(mar.logpdf(x)[0], ref, rtol=1e-10)


def test_features_are_scale_free():
    rng = np.random.default_rng(3)
    f = rng.uniform(0.1, 2, (4, 6))
    e = rng.uniform(0.01, 0.1, (4, 6))
    v = rng.random((4, 6)) > 0.2
    X1, s1 = features(f, e, v, 2.0)
    X2, s2 = features(f * 1000, e * 1000, v, 2.0)
    np.testing.assert_allclose(X1, X2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s2 - s1, 3.0)
    # invalid bands carry no flux and a huge error
    assert np.all(X1[:, :6][~v] == 0) and np.all(X1[:, 6:12][~v] == 2.0) and np.all(X1[:, 12:18] == v)


def test_log_prior_is_normalised(emulator):
    i = emulator.param_names.index("dsfr1")
    lo, hi = emulator.bounds[i]
    grid = np.linspace(lo, hi, 200001)
    dens = np.exp(emulator.log_prior(grid[:, None], ["dsfr1"]))
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-4)
    ia = emulator.param_names.index("av")
    assert np.exp(emulator.log_prior(np.array([[1.0]]), ["av"]))[0] == pytest.approx(1 / np.ptp(emulator.bounds[ia]))
    assert emulator.log_prior(np.array([[99.0]]), ["av"])[0] == -np.inf
    # draws from sample_prior follow this density (KS test against its integral)
    from scipy.integrate import cumulative_trapezoid

    cdf = cumulative_trapezoid(dens, grid, initial=0.0)
    d = emulator.sample_prior(20000, seed=4)[:, i]
    assert stats.kstest(d, lambda x: np.interp(x, grid, cdf)).pvalue > 1e-3


def test_analytic_mass_terms_and_draws(emulator):
    rng = np.random.default_rng(5)
    filters = list(F.JOF_FILTERS)
    g = rng.uniform(0.5, 2.0, (1, 3, len(filters)))
    f = 3.0 * g[0, 0] + rng.normal(0, 0.1, len(filters))
    prob = F._Problem(f[None], np.full((1, len(filters)), 0.1), filters, 2.0, None, emulator, 0.0, False,
                      (0, 13), None)
    a_hat, sig_a, chi2 = prob.mass_terms(np.array([0]), g)
    for j in range(3):
        grid = np.linspace(a_hat[0, j] - 1, a_hat[0, j] + 1, 20001)
        c = ((f[None, :] - grid[:, None] * g[0, j]) ** 2 / 0.01).sum(1)
        assert grid[np.argmin(c)] == pytest.approx(a_hat[0, j], abs=2e-4)
        assert c.min() == pytest.approx(chi2[0, j], rel=1e-6)
        # chi2 rises by 1 at A_hat +- sigma_A
        assert ((f - (a_hat[0, j] + sig_a[0, j]) * g[0, j]) ** 2 / 0.01).sum() - chi2[0, j] == pytest.approx(1.0, rel=1e-6)
    # mass draws: N(A_hat, sigma_A) truncated at 0, also when the truncation bites
    a = np.array([[2.0, 0.3, -0.5]])
    s = np.array([[0.5, 0.5, 0.5]])
    draws = np.stack([10 ** prob.draw_mass(a, s, rng)[0][0] for _ in range(4000)])
    for j in range(3):
        tn = stats.truncnorm(-a[0, j] / s[0, j], np.inf, loc=a[0, j], scale=s[0, j])
        assert stats.kstest(draws[:, j], tn.cdf).pvalue > 1e-3


def test_weighted_quantiles():
    rng = np.random.default_rng(6)
    v = rng.normal(0, 1, (2, 20000))
    q = F.weighted_quantiles(v, np.zeros_like(v))
    np.testing.assert_allclose(q, [[-0.994, 0, 0.994]] * 2, atol=0.04)
    # importance weights: N(0,1) draws reweighted to N(1, 1)
    lw = -0.5 * (v - 1) ** 2 + 0.5 * v ** 2
    np.testing.assert_allclose(F.weighted_quantiles(v, lw), [[0.006, 1, 1.994]] * 2, atol=0.05)


def test_kl_estimator():
    rng = np.random.default_rng(7)
    # prior = uniform CDF space; posterior uniform on [0, 0.25] -> KL = ln 4
    c = rng.uniform(0, 0.25, (1, 4000))
    kl = F._kl_from_cdf(c, np.full((1, 4000), -np.log(4000)), np.array([4000.0]))
    assert kl[0] == pytest.approx(np.log(4), abs=0.03)
    c = rng.uniform(0, 1, (1, 4000))
    assert F._kl_from_cdf(c, np.full((1, 4000), -np.log(4000)), np.array([4000.0]))[0] < 0.02


def test_bad_inputs(emulator):
    f = np.ones((2, 3))
    with pytest.raises(FitError, match="outside the emulator's range"):
        F.fit_photometry(f, f * 0.1, ["F150W", "F277W", "F444W"], 25.0, emulator=emulator, method="nested")
    with pytest.raises(EmulatorError, match="available filters"):
        F.fit_photometry(f, f * 0.1, ["F150W", "NOPE", "F444W"], 2.0, emulator=emulator, method="nested")
    with pytest.raises(FitError, match="shape"):
        F.fit_photometry(f, f[:, :2], ["F150W", "F277W", "F444W"], 2.0, emulator=emulator, method="nested")
    with pytest.raises(FitError, match="method"):
        F.fit_photometry(f, f, ["F150W", "F277W", "F444W"], 2.0, emulator=emulator, method="mcmc")


def test_network_transforms_and_io(tmp_path):
    from pegleg.sed.npe import load_posterior_network, save_posterior_network

    net = random_network()
    rng = np.random.default_rng(1)
    u = rng.normal(0, 3, (5, 2))
    th, lj = net.from_unconstrained(u)
    assert np.all(th >= net.bounds[:, 0]) and np.all(th <= net.bounds[:, 1])
    np.testing.assert_allclose(net.to_unconstrained(th), u, rtol=1e-8, atol=1e-8)
    h = 1e-6
    num = sum(np.log((net.from_unconstrained(u + h * np.eye(2)[j])[0][:, j] -
                      net.from_unconstrained(u - h * np.eye(2)[j])[0][:, j]) / (2 * h)) for j in range(2))
    np.testing.assert_allclose(lj, num, rtol=1e-5)
    path = save_posterior_network(net, tmp_path / "net.npz")
    back = load_posterior_network(str(path))
    f = rng.uniform(0.1, 1, (4, 3))
    p1, s1, l1 = net(f, f * 0.1, np.ones_like(f, bool), 2.0)
    p2, s2, l2 = back(f, f * 0.1, np.ones_like(f, bool), 2.0)
    np.testing.assert_allclose(p1.mean, p2.mean, rtol=1e-6)
    np.testing.assert_allclose(s1.scale_tril, s2.scale_tril, rtol=1e-6)
    with pytest.raises(EmulatorError, match="not trained on filters"):
        net.filter_index(["F150W", "F090W"])
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(EmulatorError, match="not a readable"):
        load_posterior_network(str(tmp_path / "bad.npz"))
    with pytest.raises(EmulatorError, match="does not exist"):
        load_posterior_network(str(tmp_path / "missing.npz"))


PRIORS = {"uniform": {}, "student_t": {"type": "student_t", "loc": 0.0, "scale": 0.3, "nu": 2.0, "clip": 5.0},
          "student_t3": {"type": "student_t", "loc": 0.5, "scale": 0.7, "nu": 3.0},
          "normal": {"type": "normal", "loc": -1.0, "scale": 0.5}}


@pytest.mark.parametrize("kind", list(PRIORS))
def test_normal_transform_maps_the_prior_to_a_standard_normal(kind):
    """ParameterTransform('normal'): prior draws become N(0, 1); the inverse is exact, its
    Jacobian matches finite differences, and log prior + log Jacobian = log N(u; 0, 1)."""
    from scipy import stats

    from pegleg.sed.emulator import MLPEmulator
    from pegleg.sed.npe import ParameterTransform

    bounds = [[-5.0, 5.0]]
    spec = PRIORS[kind]
    emu = MLPEmulator([np.zeros((2, 2)), np.zeros((2, 1))], [np.zeros(2), np.zeros(1)], np.zeros(2), np.ones(2),
                      np.zeros(1), np.ones(1), np.zeros(1),
                      dict(param_names=["log_mass_formed", "redshift", "x"], bounds=[[6, 12], [0.01, 10]] + bounds,
                           prior={"x": spec} if spec else {}, filters=["F444W"], reference_filter="F444W",
                           reference_log_mass=10.0, outputs=["mag:F444W"], activation="tanh", training={}, accuracy={}))
    T = ParameterTransform("normal", ["x"], bounds, {"x": spec} if spec else {})
    x = emu.sample_prior(20000, seed=2)[:, 2:]
    u = T.forward(x)
    assert stats.kstest(u[:, 0], "norm").pvalue > 1e-3
    back, lj = T.inverse(u)
    np.testing.assert_allclose(back, x, atol=1e-9)
    np.testing.assert_allclose(emu.log_prior(back, ["x"]) + lj, -0.5 * u[:, 0] ** 2 - 0.5 * np.log(2 * np.pi),
                               atol=1e-8)
    uu = np.linspace(-4, 4, 17)[:, None]           # (beyond, 1 - Phi(u) loses digits to finite differences)
    h = 1e-6
    num = np.log((T.inverse(uu + h, False)[0] - T.inverse(uu - h, False)[0]) / (2 * h))[:, 0]
    np.testing.assert_allclose(T.inverse(uu)[1], num, rtol=1e-5, atol=1e-5)
    far = T.inverse(np.array([[-40.0], [40.0]]))[0][:, 0]      # Phi(u) rounds to 0 / 1: clipped to the support
    assert np.all(np.isfinite(far)) and -5.0 <= far[0] <= far[1] <= 5.0
    import pickle                                               # worker processes receive it pickled

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(T)).forward(x[:10]), u[:10])


def test_unknown_transform_is_refused():
    from pegleg.sed.npe import ParameterTransform

    with pytest.raises(EmulatorError, match="unknown parameter transform"):
        ParameterTransform("probit", ["x"], [[0, 1]])
    with pytest.raises(EmulatorError, match="unknown parameter transform"):
        random_network(transform="probit")


def _toy_emulator(filters):
    """A random smooth 3-band 'SED model' with two shape parameters (an MLPEmulator)."""
    from pegleg.sed.emulator import MLPEmulator

    rng = np.random.default_rng(42)
    names = ["log_mass_formed", "redshift", "log_metallicity", "av"]
    outputs = ["mag:F444W", "color:F150W", "color:F277W"]
    W = [rng.normal(0, 1.0, (3, 8)), rng.normal(0, 0.4, (8, 3))]
    b = [rng.normal(0, 0.3, 8), np.zeros(3)]
    meta = dict(param_names=names, bounds=[[6, 12.5], [0.01, 10], [-2, 0.2], [0, 4]], prior={},
                filters=list(filters), reference_filter="F444W", reference_log_mass=10.0, outputs=outputs,
                activation="tanh", training={}, accuracy={})
    return MLPEmulator(W, b, np.array([2.0, -0.9, 2.0]), np.array([1.0, 0.6, 1.2]), np.array([24.0, 0.5, 0.2]),
                       np.array([1.0, 1.0, 1.0]), np.zeros(3), meta)


@pytest.mark.parametrize("transform", ["logit", "normal"])
def test_importance_sampling_matches_a_brute_force_posterior(transform):
    """An untrained, broad proposal + many draws: the weighted posterior equals a grid posterior
    (with either proposal parametrisation)."""
    filters = ["F150W", "F277W", "F444W"]
    emu = _toy_emulator(filters)
    net = random_network(filters=filters, seed=5, diag_bias=1.5, transform=transform)   # ~1.7 wide
    truth = np.array([[9.0, 2.0, -0.6, 1.3]])
    f0, _ = emu.evaluate(truth, filters)
    err = 0.04 * f0
    obs = f0 + err * np.random.default_rng(8).standard_normal(f0.shape)
    # brute force: (Z, A_V) grid, log-mass grid, uniform priors, Gaussian likelihood
    zg, ag = np.linspace(-2, 0.2, 111), np.linspace(0, 4, 101)
    Zm, Am = np.meshgrid(zg, ag, indexing="ij")
    th = np.column_stack([np.full(Zm.size, 10.0), np.full(Zm.size, 2.0), Zm.ravel(), Am.ravel()])
    g, _ = emu.evaluate(th, filters)                      # flux at log M = 10
    lm = np.linspace(8.5, 9.5, 401)
    A = 10 ** (lm - 10.0)
    chi2 = (((obs[0] - A[:, None, None] * g[None]) / err[0]) ** 2).sum(-1)   # (mass, grid)
    post = np.exp(-0.5 * (chi2 - chi2.min()))
    def q(p, x):
        c = (np.cumsum(p) - 0.5 * p) / p.sum()       # mass of each grid cell at its centre
        return np.interp([0.16, 0.5, 0.84], c, x)
    p_z = post.sum(0).reshape(Zm.shape).sum(1)
    p_a = post.sum(0).reshape(Zm.shape).sum(0)
    p_m = post.sum(1)
    r = F.fit_photometry(obs, err, filters, 2.0, emulator=emu, network=net, n_draws=50000, ess_target=0,
                         error_floor=0.0, emulator_sigma=False, seed=3)
    assert r["ess"][0] > 1000
    np.testing.assert_allclose(r["log_metallicity"][0], q(p_z, zg), atol=0.04)
    np.testing.assert_allclose(r["av"][0], q(p_a, ag), atol=0.04)
    np.testing.assert_allclose(r["log_mass_formed"][0], q(p_m, lm), atol=0.01)
