"""SED-fit figures: ds.pegleg.plot.maps and ds.pegleg.plot.sed on a hand-made fitted Dataset."""

import numpy as np
import pytest
from matplotlib.figure import Figure

import pegleg
from pegleg import SchemaError
from pegleg import schema as S
from pegleg.plot import maps, sed

BANDS = ["F115W", "F150W", "F277W", "F444W"]
SHAPE = (21, 21)
NO_DATA = (0, 0)      # sedfit_flag 1: blank in the maps
LOW_ESS = (0, 1)      # sedfit_flag 2: still shown
PIX = (10, 12)


def fitted_ds():
    """A synthetic galaxy plus sedfit outputs with plausible numbers."""
    obs, _ = pegleg.synth.galaxy(BANDS, shape=SHAPE, seed=3)
    rng = np.random.default_rng(0)
    ny, nx = SHAPE
    mask = obs[S.MASK].values.copy()
    mask[1, PIX[0], PIX[1]] = True  # one masked band in the test pixel
    obs[S.MASK] = obs[S.MASK].copy(data=mask)

    def quantiles(median, sigma):
        med = median + rng.normal(0, 0.05, (ny, nx))
        return np.stack([med - sigma, med, med + sigma], axis=-1)

    sig = np.linspace(0.05, 0.3, nx)[None, :] * np.ones((ny, 1))
    phys = {S.LOG_STELLAR_MASS: quantiles(7.0, sig), S.LOG_SFR100: quantiles(-2.0, sig),
            S.LOG_SFR10: quantiles(-2.1, sig), S.LOG_SSFR: quantiles(-9.0, sig), S.AV: quantiles(0.4, sig),
            S.LOG_AGE_MW: quantiles(8.7, sig), S.LOG_METALLICITY: quantiles(-0.3, sig),
            S.LOG_MASS_FORMED: quantiles(7.2, sig), S.STELLAR_MASS_DENSITY: 10 ** quantiles(8.0, sig),
            S.SFR_DENSITY: 10 ** quantiles(-1.0, sig)}
    n_bands = np.full(SHAPE, len(BANDS), np.int32)
    n_bands[PIX] = len(BANDS) - 1
    chi2 = rng.chisquare(3, SHAPE) + 0.1
    flag = np.zeros(SHAPE, np.int32)
    flag[NO_DATA] = 1
    flag[LOW_ESS] = 2
    chi2[NO_DATA] = np.nan
    info = rng.uniform(0.1, 3.5, SHAPE + (3,))
    model = obs[S.IMAGE].values * (1 + rng.normal(0, 0.05, obs[S.IMAGE].shape))
    resid = (obs[S.IMAGE].values - model) / obs[S.ERROR].values
    resid[mask] = np.nan
    ds = obs.assign_coords({S.QUANTILE: [0.16, 0.5, 0.84], S.INFO_QUANTITY: ["log_mass_formed", "log_age_mw", "av"]})
    ds = ds.assign({name: S.variable(name, v, ds) for name, v in phys.items()})
    ds = ds.assign({
        S.CHI2: S.variable(S.CHI2, chi2), S.N_BANDS: S.variable(S.N_BANDS, n_bands),
        S.SNR: S.variable(S.SNR, rng.uniform(1, 50, SHAPE)), S.ESS: S.variable(S.ESS, rng.uniform(10, 500, SHAPE)),
        S.SEDFIT_FLAG: S.variable(S.SEDFIT_FLAG, flag), S.INFORMATION_GAIN: S.variable(S.INFORMATION_GAIN, info),
        S.MODEL_IMAGE: S.variable(S.MODEL_IMAGE, model, ds), S.SED_RESIDUAL: S.variable(S.SED_RESIDUAL, resid),
    })
    pegleg.validate(ds)
    return ds


@pytest.fixture(scope="module")
def ds():
    return fitted_ds()


def panels(fig):
    """The visible map panels (axes with an image, not colour bars), in order."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_images()]


def colorbar_label(ax):
    return ax.get_images()[0].colorbar.ax.get_ylabel()


def flat(text):
    return " ".join(text.split())


def test_maps_default(ds):
    fig = ds.pegleg.plot.maps()
    assert isinstance(fig, Figure)
    axes = panels(fig)
    assert len(axes) == 6
    cbars = [ax for ax in fig.axes if ax.get_visible() and not ax.get_images()]
    assert len(cbars) == 6
    assert [ax.get_title() for ax in axes] == [
        "log_stellar_mass (median)", "log_sfr100 (median)", "av (median)", "log_age_mw (median)",
        "reduced chi2", "information_gain (log_mass_formed)"]
    names = [S.LOG_STELLAR_MASS, S.LOG_SFR100, S.AV, S.LOG_AGE_MW, S.CHI2, S.INFORMATION_GAIN]
    for ax, name in zip(axes, names):
        label = flat(colorbar_label(ax))
        assert f"[{ds[name].attrs['units']}]" in label
        assert flat(ds[name].attrs["long_name"]) in label
    # medians, blank where sedfit_flag & 1 (and only there)
    shown = np.ma.getdata(axes[0].get_images()[0].get_array())
    expect = ds[S.LOG_STELLAR_MASS].sel(quantile=0.5).values.copy()
    expect[NO_DATA] = np.nan
    np.testing.assert_array_equal(shown, expect)
    assert np.isnan(shown[NO_DATA]) and np.isfinite(shown[LOW_ESS])
    for ax in axes:
        assert np.isnan(np.ma.getdata(ax.get_images()[0].get_array())[NO_DATA])
    # reduced chi2 on a log scale
    im = axes[4].get_images()[0]
    assert im.norm.__class__.__name__ == "LogNorm"
    chi2r = np.ma.getdata(im.get_array())
    np.testing.assert_allclose(chi2r[PIX], ds[S.CHI2].values[PIX] / (len(BANDS) - 2))
    np.testing.assert_allclose(chi2r[5, 5], ds[S.CHI2].values[5, 5] / (len(BANDS) - 1))
    # information gain: the first info_quantity
    np.testing.assert_array_equal(np.ma.getdata(axes[5].get_images()[0].get_array())[3:, 3:],
                                  ds[S.INFORMATION_GAIN].values[3:, 3:, 0])


def test_maps_options(ds):
    fig2 = Figure()
    assert maps(ds, [S.AV, S.LOG_SFR100], width=True, fig=fig2) is fig2
    axes = panels(fig2)
    assert [ax.get_title() for ax in axes] == ["av (median)", "av (84-16 width)", "log_sfr100 (median)",
                                               "log_sfr100 (84-16 width)"]
    w = np.ma.getdata(axes[1].get_images()[0].get_array())
    expect = (ds[S.AV].sel(quantile=0.84) - ds[S.AV].sel(quantile=0.16)).values
    np.testing.assert_allclose(w[5:, 5:], expect[5:, 5:])
    assert np.isnan(w[NO_DATA])
    assert "mag" in colorbar_label(axes[1])
    # a chosen info_quantity; a single string is one quantity; unflagged view keeps the pixel
    fig = ds.pegleg.plot.maps(S.INFORMATION_GAIN, info_quantity="av", mask_flagged=False)
    (ax,) = panels(fig)
    assert ax.get_title() == "information_gain (av)" and "[nat]" in colorbar_label(ax)
    np.testing.assert_array_equal(np.ma.getdata(ax.get_images()[0].get_array()),
                                  ds[S.INFORMATION_GAIN].sel(info_quantity="av").values)
    # plain (y, x) variables are shown as they are
    (ax,) = panels(maps(ds, [S.SNR]))
    np.testing.assert_array_equal(np.ma.getdata(ax.get_images()[0].get_array())[1:], ds[S.SNR].values[1:])


def test_maps_errors(ds):
    with pytest.raises(SchemaError, match=r"'log_nope'.*available: .*'log_stellar_mass'"):
        ds.pegleg.plot.maps(["log_stellar_mass", "log_nope"])
    with pytest.raises(SchemaError, match="not in the Dataset"):
        ds.drop_vars(S.INFORMATION_GAIN).pegleg.plot.maps()
    with pytest.raises(SchemaError, match="info_quantity 'redshift'.*available"):
        ds.pegleg.plot.maps([S.INFORMATION_GAIN], info_quantity="redshift")
    with pytest.raises(SchemaError, match="expected dims"):
        ds.pegleg.plot.maps([S.IMAGE])
    with pytest.raises(SchemaError, match="empty"):
        ds.pegleg.plot.maps([])


def sorted_points(lines):
    """(x, y) of the given Line2D objects, merged and sorted by x."""
    x = np.concatenate([ln.get_xdata() for ln in lines]).astype(float)
    y = np.concatenate([ln.get_ydata() for ln in lines]).astype(float)
    o = np.argsort(x)
    return x[o], y[o]


def test_sed_figure(ds):
    y, x = PIX
    fig = ds.pegleg.plot.sed(y, x)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    top, bottom = fig.axes
    assert top.get_xscale() == "log" and bottom.get_xscale() == "log"
    px = ds.isel(y=y, x=x)
    wl = px[S.WAVELENGTH].values
    o = np.argsort(wl)
    mask = px[S.MASK].values
    assert mask[1] and mask.sum() == 1
    # observed points: filled for valid bands, hollow for the masked one; together = the image
    cont = {c.get_label(): c for c in top.containers}
    assert set(cont) == {"observed", "observed (masked)"}
    assert cont["observed"].lines[0].get_markerfacecolor() != "none"
    assert cont["observed (masked)"].lines[0].get_markerfacecolor() == "none"
    np.testing.assert_array_equal(cont["observed (masked)"].lines[0].get_ydata(), px[S.IMAGE].values[mask])
    xs, ys = sorted_points([cont["observed"].lines[0], cont["observed (masked)"].lines[0]])
    np.testing.assert_array_equal(xs, wl[o])
    np.testing.assert_array_equal(ys, px[S.IMAGE].values[o])
    # model line in wavelength order
    (model,) = [ln for ln in top.get_lines() if ln.get_label() == "model"]
    np.testing.assert_array_equal(model.get_ydata(), px[S.MODEL_IMAGE].values[o])
    # residuals (in sigma) equal sed_residual, with 0 and +-1 lines
    res = [ln for ln in bottom.get_lines() if ln.get_label().startswith("residual")]
    assert {ln.get_label() for ln in res} == {"residual", "residual (masked)"}
    xs, ys = sorted_points(res)
    np.testing.assert_array_equal(ys, px[S.SED_RESIDUAL].values[o])
    levels = sorted(ln.get_ydata()[0] for ln in bottom.get_lines() if not ln.get_label().startswith("residual"))
    assert levels == [-1, 0, 1]
    assert "sigma" in bottom.get_ylabel() and "uJy" in top.get_ylabel()
    # title: median log M*, log SFR100, A_V and reduced chi2 (n_bands = 3 here -> chi2 / 2)
    title = top.get_title()
    assert f"log M*={float(px[S.LOG_STELLAR_MASS].sel(quantile=0.5)):.2f}" in title
    assert f"log SFR100={float(px[S.LOG_SFR100].sel(quantile=0.5)):.2f}" in title
    assert f"A_V={float(px[S.AV].sel(quantile=0.5)):.2f}" in title
    assert f"chi2_red={float(px[S.CHI2]) / 2:.2f}" in title


def test_sed_axes_and_errors(ds):
    fig = Figure()
    a, b = fig.subplots(2, 1)
    assert ds.pegleg.plot.sed(3, 4, ax=(a, b)) is fig
    assert a.containers and any(ln.get_label() == "residual" for ln in b.get_lines())
    fig1 = Figure()
    ax = fig1.subplots()
    assert sed(ds, 3, 4, ax=ax) is fig1 and len(fig1.axes) == 1
    fig2 = Figure()
    assert sed(ds, 0, 0, fig=fig2) is fig2 and "flag=1" in fig2.axes[0].get_title()
    # an unfitted Dataset: the data alone
    obs = ds[[S.IMAGE, S.ERROR, S.MASK, S.PSF]]
    f = sed(obs, 5, 5)
    assert not [ln for ln in f.axes[0].get_lines() if ln.get_label() == "model"]
    assert "log M*" not in f.axes[0].get_title()
    for yx in [(21, 0), (0, 21), (-1, 3)]:
        with pytest.raises(SchemaError, match="outside the image"):
            ds.pegleg.plot.sed(*yx)
    with pytest.raises(SchemaError, match="integer pixel index"):
        ds.pegleg.plot.sed(2.5, 3)
    with pytest.raises(SchemaError, match="'error' not in the Dataset"):
        sed(ds.drop_vars(S.ERROR), 3, 3)
