"""Exact SED reference (pegleg.sed.sps, bagpipes) and its filter route (pegleg.sed.filters)."""

import numpy as np
import pytest

pytest.importorskip("bagpipes")
pytest.importorskip("sedpy")

from pegleg.exceptions import EmulatorError  # noqa: E402
from pegleg.sed import filters as sfilters  # noqa: E402
from pegleg.sed import sps  # noqa: E402

BANDS = ("F090W", "F150W", "F200W", "F444W", "F814W", "F160W", "F770W")
IDX = {n: i for i, n in enumerate(sps.PARAM_NAMES)}


def make(**kw):
    """One parameter vector: constant SFH, z = 2, modest dust, overrides in ``kw``."""
    p = np.zeros(len(sps.PARAM_NAMES))
    base = dict(log_mass_formed=10.0, redshift=2.0, log_metallicity=-0.3, av=0.5,
                delta=0.0, eta=1.5, log_u=-2.5)
    base.update(kw)
    for k, v in base.items():
        p[IDX[k]] = v
    return p


@pytest.fixture(scope="module")
def phot():
    """Photometry in BANDS through the one cached model_galaxy (built once)."""
    sps.photometry(make(), BANDS)  # build
    return lambda params: sps.photometry(params, BANDS)


def test_param_table():
    assert len(sps.PARAM_NAMES) == 13
    assert sps.BOUNDS.shape == (13, 2)
    assert "log_mass_formed" in sps.PARAM_NAMES and "redshift" in sps.PARAM_NAMES
    assert np.all(sps.BOUNDS[:, 0] < sps.BOUNDS[:, 1])


def test_shapes(phot):
    p = np.stack([make(), make(redshift=1.0), make(av=2.0)])
    m = phot(p)
    assert m.shape == (3, len(BANDS))
    assert np.all(np.isfinite(m))
    single = phot(p[0])
    assert single.shape == (len(BANDS),)
    np.testing.assert_array_equal(single, m[0])
    # a different filter set gets its own model and the same values
    sub = sps.photometry(p, ["F444W", "F150W"])
    np.testing.assert_allclose(sub, m[:, [3, 1]], rtol=0, atol=1e-10)


def test_deterministic(phot):
    p = sps.sample_prior(5, seed=3)
    np.testing.assert_array_equal(phot(p), phot(p))
    np.testing.assert_array_equal(sps.sample_prior(5, seed=3), p)
    assert not np.array_equal(sps.sample_prior(5, seed=4), p)


def test_mass_scaling_exact(phot):
    m = phot(np.stack([make(log_mass_formed=9.0), make(log_mass_formed=10.0)]))
    np.testing.assert_allclose(m[1] - m[0], -2.5, atol=1e-9)


def test_dust_reddens(phot):
    m = phot(np.stack([make(av=0.0), make(av=2.0)]))
    col = m[:, BANDS.index("F150W")] - m[:, BANDS.index("F444W")]
    assert col[1] > col[0] + 0.5
    assert np.all(m[1] >= m[0] - 1e-9)


def test_magnitudes_sensible(phot):
    # 1e10 Msun formed at z = 2, constant SFH: F444W around 23-25 AB
    m = phot(make())
    assert 21 < m[BANDS.index("F444W")] < 27


def test_igm_lyman_break():
    # flat SFH: Lyman-alpha forest + Lyman limit (Inoue+14) remove the flux blueward of
    # 1216 A rest.  At z = 6 Ly-alpha (0.85 um) sits inside F090W, which only loses
    # ~0.25 mag; F070W is entirely blueward.  At z = 7 F090W is mostly blueward.
    bands = ["F070W", "F090W", "F200W"]
    m6, m7 = sps.photometry(np.stack([make(redshift=6.0, av=0.0), make(redshift=7.0, av=0.0)]),
                            bands)
    assert m6[0] - m6[2] > 2.0
    assert m6[1] - m6[2] > 0.1
    assert m7[1] - m7[2] > 2.0
    m3 = sps.photometry(make(redshift=3.0, av=0.0), bands)
    assert abs(m3[1] - m3[2]) < 1.0


def test_out_of_bounds_raises():
    with pytest.raises(EmulatorError, match="redshift"):
        sps.photometry(make(redshift=12.0), BANDS)
    with pytest.raises(EmulatorError, match="av"):
        sps.derived(make(av=-0.1))
    with pytest.raises(EmulatorError, match="shape"):
        sps.photometry(np.zeros(3), BANDS)


def test_unknown_filter_lists_names():
    with pytest.raises(EmulatorError, match="F444W") as info:
        sps.photometry(make(), ["F444W", "NOT_A_FILTER"])
    assert "F150W" in str(info.value)
    with pytest.raises(EmulatorError, match="F164N"):
        sfilters.transmission("F164N")  # pegleg knows it, sedpy has no curve


def test_filter_route(tmp_path, monkeypatch):
    assert sfilters.sedpy_name("F814W") == "acs_wfc_f814w"
    assert sfilters.sedpy_name("WFC3_F814W") == "wfc3_uvis_f814w"
    assert sfilters.sedpy_name("F160W") == "wfc3_ir_f160w"
    assert sfilters.sedpy_name("F770W") == "jwst_f770w"
    assert sfilters.sedpy_name("nircam_f444w") == "jwst_f444w"
    avail = sfilters.available_filters()
    assert {"F444W", "F814W", "WFC3_F814W", "F160W", "F770W", "F090W"} <= set(avail)
    wl, t = sfilters.transmission("F444W")
    assert 3.7 < wl[np.argmax(t)] < 5.1
    assert abs(sfilters.pivot_wavelength("F444W") - 4.40) < 0.03
    monkeypatch.setenv("PEGLEG_CACHE", str(tmp_path))
    (path,) = sfilters.filter_files(["F444W"])
    assert path.startswith(str(tmp_path))
    data = np.loadtxt(path)
    np.testing.assert_allclose(data[:, 0] * 1e-4, wl, rtol=1e-8)


def test_derived_consistency():
    p = np.stack([make(), make(**{"dsfr1": 1.0}), make(**{"dsfr1": -1.0, "dsfr2": 0.5})])
    d = sps.derived(p)
    for k in ("log_stellar_mass", "log_mass_formed", "log_sfr100", "log_sfr10", "log_age_mw", "av"):
        assert d[k].shape == (3,)
        assert np.all(np.isfinite(d[k]))
    assert np.all(d["log_stellar_mass"] < d["log_mass_formed"])
    np.testing.assert_allclose(d["log_mass_formed"], 10.0, atol=1e-6)
    np.testing.assert_allclose(d["av"], p[:, IDX["av"]])
    # constant SFH: the 10 and 100 Myr SFRs agree, and equal M / t_univ-edge
    assert abs(d["log_sfr10"][0] - d["log_sfr100"][0]) < np.log10(1.01)
    t_edge = sps.sfh_bin_edges(2.0)[-1] * 1e6
    assert abs(d["log_sfr100"][0] - (10.0 - np.log10(t_edge))) < 0.01
    # dsfr1 = log10(SFR_0-10Myr / SFR_10-100Myr) (Prospector order): SFR10 is 10x the
    # 10-100 Myr rate, so sfr100 = (10 + 90) / 100 of the second bin... check ratio
    sfr10, sfr100 = 10 ** d["log_sfr10"][1], 10 ** d["log_sfr100"][1]
    sfr_bin2 = (100 * sfr100 - 10 * sfr10) / 90
    assert abs(np.log10(sfr10 / sfr_bin2) - 1.0) < 0.02
    assert d["log_sfr10"][1] > d["log_sfr100"][1]
    assert d["log_sfr10"][2] < d["log_sfr100"][2]
    # younger SFH (positive ratios) -> younger mass-weighted age
    assert d["log_age_mw"][1] < d["log_age_mw"][0]
    assert 8.0 < d["log_age_mw"][0] < np.log10(t_edge)


def test_derived_matches_photometry_model(phot):
    p = sps.sample_prior(4, seed=11)
    mags, der = sps.evaluate(p, BANDS)
    np.testing.assert_allclose(mags, phot(p), rtol=0, atol=1e-10)
    d2 = sps.derived(p)
    for k in der:
        np.testing.assert_allclose(der[k], d2[k], rtol=1e-10)


def test_sample_prior():
    s = sps.sample_prior(4000, seed=0)
    assert s.shape == (4000, len(sps.PARAM_NAMES))
    assert np.all(s >= sps.BOUNDS[:, 0]) and np.all(s <= sps.BOUNDS[:, 1])
    dsfr = s[:, IDX["dsfr1"]]
    # Student-t(nu=2, scale 0.3): median |x| = 0.3 * 0.816
    assert abs(np.median(np.abs(dsfr)) - 0.3 * 0.8165) < 0.03
    # every prior draw is a physical model (oldest bin inside the age of the universe)
    sps.derived(s[:50])


def test_spectrum():
    wl = np.linspace(1.0, 5.0, 400)
    f = sps.spectrum(make(), wl)
    assert f.shape == (400,)
    assert np.all(np.isfinite(f)) and np.all(f > 0)
    # consistent with the photometry: F444W flux within a few per cent
    m = sps.photometry(make(), ["F444W"])[0]
    fl, t = sfilters.transmission("F444W")
    sel = (wl > fl.min()) & (wl < fl.max())
    tt = np.interp(wl[sel], fl, t)
    fnu = np.trapezoid(f[sel] * tt / wl[sel], wl[sel]) / np.trapezoid(tt / wl[sel], wl[sel])
    m_spec = -2.5 * np.log10(fnu * 1e-29) - 48.6
    assert abs(m_spec - m) < 0.05
    with pytest.raises(EmulatorError, match="wavelength"):
        sps.spectrum(make(), wl[::-1])


def test_spectrum_line_fluxes():
    """``lines=``: bagpipes' own line fluxes, equal to the flux of the unresolved spikes in the
    spectrum (excess over the neighbouring continuum, integrated in frequency; measured
    0.2% for [OIII]5008)."""
    from pegleg.spectrum import LINES

    wl = np.exp(np.arange(np.log(1.0), np.log(2.2), 1e-3))
    names = ["Hbeta", "[OIII]5008", "Halpha", "[OII]3727"]
    p = np.array([make(log_u=-2.0), make(log_u=-3.0, av=1.0), make(log_mass_formed=11.0, log_u=-2.0)])
    spec, lf = sps.spectrum(p, wl, lines=names)
    np.testing.assert_array_equal(spec, sps.spectrum(p, wl))
    assert lf.shape == (3, 4) and np.all(lf > 0)
    # linear in mass; a lower ionisation parameter and more dust weaken [OIII]/Hbeta and [OIII]
    np.testing.assert_allclose(lf[2], 10 * lf[0], rtol=1e-6)
    assert lf[1, 1] / lf[1, 0] < 0.5 * lf[0, 1] / lf[0, 0]
    c_hz = 2.99792458e14                                        # micron / s
    edges = np.concatenate([[wl[0]], 0.5 * (wl[1:] + wl[:-1]), [wl[-1]]])
    dnu = c_hz / edges[:-1] - c_hz / edges[1:]
    # [OIII]5008 (Hbeta and Halpha sit in stellar absorption and next to [NII])
    lam = LINES["[OIII]5008"] * 3.0 / 1e4
    i = np.argmin(np.abs(wl - lam))
    win = slice(i - 2, i + 3)
    cont = np.median(np.r_[spec[0, i - 12:i - 4], spec[0, i + 5:i + 13]])
    spike = np.sum((spec[0, win] - cont) * dnu[win]) * 1e-29       # uJy Hz -> erg/s/cm2
    assert abs(spike / lf[0, 1] - 1) < 0.01, (spike, lf[0, 1])
    # the [OIII] doublet's atomic ratio
    oiii = sps.spectrum(make(), wl, lines=["[OIII]5008", "[OIII]4960"])[1]
    assert 2.9 < oiii[0] / oiii[1] < 3.05
    one_spec, one = sps.spectrum(make(), wl, lines="Halpha")
    assert one_spec.shape == wl.shape and one.shape == (1,)
    with pytest.raises(EmulatorError, match="Paalpha"):
        sps.spectrum(make(), wl, lines=["Hdelta"])
