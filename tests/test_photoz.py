"""pegleg.sed.photo_z: redshift posteriors from the evidence on a grid, against known redshifts."""

from __future__ import annotations

import numpy as np
import pytest

from pegleg.exceptions import FitError
from pegleg.sed import photo_z
from pegleg.sed.fit import JOF_FILTERS
from pegleg.sed.simulate import simulate_photometry

GRID = np.round(np.arange(0.1, 7.0001, 0.1), 6)


@pytest.mark.parametrize("z_true", [1.0, 4.5])
def test_recovers_known_redshifts(emulator, z_true):
    """Prior draws at a known redshift, 19 JOF bands, S/N 10-30.  Measured (seed 5, 8 objects,
    0.1 grid, 1024 draws): z = 1.0: 7/8 peaks within 0.15 (1 + z), 7/8 truths inside the 68%
    interval (+-0.05); z = 4.5: 5/8 and 8/8 (the misses peak on a second mode at z ~ 6.5,
    which the interval includes)."""
    s = simulate_photometry(emulator, JOF_FILTERS, 8, redshift=z_true, snr=(10.0, 30.0), seed=5)
    r = photo_z(s["flux"], s["error"], JOF_FILTERS, z_grid=GRID, n_draws=1024, seed=1, emulator=emulator)
    near = np.abs(r["z_peak"].values - z_true) / (1 + z_true) < 0.15
    inside = (r["z_p16"].values <= z_true + 0.05) & (z_true - 0.05 <= r["z_p84"].values)
    assert near.sum() >= 5, r["z_peak"].values
    assert inside.sum() >= 4, (r["z_p16"].values, r["z_p84"].values)
    # a proper density on the grid, quantiles ordered
    np.testing.assert_allclose(np.trapezoid(r["pdf"].values, GRID, axis=1), 1.0, rtol=1e-9)
    assert np.all(r["z_p16"].values <= r["z_median"].values) and np.all(r["z_median"].values <= r["z_p84"].values)
    # deterministic for a seed
    r2 = photo_z(s["flux"][:2], s["error"][:2], JOF_FILTERS, z_grid=GRID, n_draws=1024, seed=1, emulator=emulator)
    assert np.isfinite(r2["log_evidence"].values).all()


def test_prior_moves_the_posterior(emulator):
    s = simulate_photometry(emulator, JOF_FILTERS, 1, redshift=2.0, snr=(5.0, 5.0), seed=3)
    flat = photo_z(s["flux"], s["error"], JOF_FILTERS, z_grid=GRID, n_draws=512, seed=0, emulator=emulator)
    low = photo_z(s["flux"], s["error"], JOF_FILTERS, z_grid=GRID, z_prior=np.exp(-GRID), n_draws=512, seed=0,
                  emulator=emulator)
    # same draws (same seed): the evidence is unchanged, the posterior mean moves down
    np.testing.assert_allclose(low["log_evidence"].values, flat["log_evidence"].values)
    assert float(low["z_mean"][0]) < float(flat["z_mean"][0])


def test_bad_input(emulator):
    f, e = np.ones(19), np.full(19, 0.1)
    with pytest.raises(FitError, match="increasing"):
        photo_z(f, e, JOF_FILTERS, z_grid=[2.0, 1.0], emulator=emulator)
    with pytest.raises(FitError, match="redshift range"):
        photo_z(f, e, JOF_FILTERS, z_grid=[1.0, 9.5], emulator=emulator)
    with pytest.raises(FitError, match="z_prior"):
        photo_z(f, e, JOF_FILTERS, z_grid=[1.0, 2.0], z_prior=[1.0], emulator=emulator)
    with pytest.raises(FitError, match="no valid band"):
        photo_z(np.full(19, np.nan), e, JOF_FILTERS, z_grid=[1.0, 2.0], emulator=emulator)
    with pytest.raises(Exception, match="F999W"):
        photo_z(np.ones(2), np.ones(2), ["F444W", "F999W"], emulator=emulator)


def test_accessor_on_a_synthetic_galaxy(emulator):
    """ds.pegleg.photo_z sums the stamp; the physical synthetic galaxy is at z = 2 (measured:
    peak 2.1, 16-84% 1.89-2.20 with 8 NIRCam bands at peak S/N 150)."""
    from pegleg import synth

    bands = ["F090W", "F115W", "F150W", "F200W", "F277W", "F356W", "F410M", "F444W"]
    obs, truth = synth.galaxy(bands, shape=(41, 41), redshift=2.0, physical=True, emulator=emulator, seed=3,
                              snr_peak=150.0)
    pz = obs.pegleg.photo_z(z_grid=GRID, n_draws=1024, emulator=emulator)
    from pegleg.schema import fit_region

    seg, how = fit_region(obs)                       # the source's segment by default
    assert how == "segment" and list(pz["band"].values) == bands and pz.attrs["n_pixels"] == seg.sum()
    img = obs["image"].where(seg & ~obs["mask"]).sum(("y", "x")).values
    np.testing.assert_allclose(pz["flux"].values, img, rtol=1e-12)
    whole = obs.pegleg.photo_z(region="all", z_grid=GRID[:5], n_draws=64, emulator=emulator)
    np.testing.assert_allclose(whole["flux"].values, obs["image"].where(~obs["mask"]).sum(("y", "x")).values)
    assert abs(float(pz["z_peak"][0]) - 2.0) < 0.3
    assert float(pz["z_p16"][0]) - 0.1 <= 2.0 <= float(pz["z_p84"][0]) + 0.1
    with pytest.raises(FitError, match="not in the Dataset"):
        obs.pegleg.photo_z(bands=["F770W"], emulator=emulator)


def test_object_no_model_describes_gives_nan(emulator, monkeypatch):
    """Every draw invalid at every redshift (here: the emulator returns NaN fluxes): NaN
    posterior summaries for that object, no error and no warning; the other object is fine."""
    s = simulate_photometry(emulator, JOF_FILTERS, 2, redshift=2.0, snr=(20.0, 20.0), seed=1)
    real = emulator.evaluate

    def broken(theta, filters=None, strict=True):
        f, d = real(theta, filters, strict=strict)
        f = f.copy()
        f[: f.shape[0] // 2] = np.nan          # the first object's draws come first
        return f, d

    monkeypatch.setattr(emulator, "evaluate", broken)
    r = photo_z(s["flux"], s["error"], JOF_FILTERS, z_grid=GRID[:6], n_draws=64, emulator=emulator)
    assert np.isnan(r["z_peak"][0]) and np.isnan(r["z_median"][0]) and np.isnan(r["pdf"][0]).all()
    assert np.isfinite(r["z_peak"][1]) and np.isfinite(r["z_median"][1])
