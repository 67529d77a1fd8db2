"""Profile figures: pegleg.plot.profiles / ml_colour on hand-made mass_profile, profiles and ml_colour Datasets."""

import io

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

import pegleg  # noqa: F401  (registers the accessor)
import pegleg.plot
from pegleg import SchemaError
from pegleg.plot import ml_colour, profiles

N_R = 20
N_RELIABLE = 12
WIDTH = 0.1            # arcsec per annulus
KPC = 8.0              # kpc per arcsec
R = (np.arange(N_R) + 0.5) * WIDTH
R_RELIABLE = N_RELIABLE * WIDTH
DENS = 1e9 * np.exp(-R / 0.5)
ML = 2.0
BANDS = ["F150W", "F277W", "F444W"]
SLOPE, INTERCEPT = 0.8, -0.5


def radius_coords(kpc=True):
    c = {"radius": ("radius", R, {"units": "arcsec"}),
         "radius_inner": ("radius", R - WIDTH / 2), "radius_outer": ("radius", R + WIDTH / 2)}
    if kpc:
        c["radius_kpc"] = ("radius", R * KPC, {"units": "kpc"})
    return c


def mass_ds():
    reliable = np.arange(N_R) < N_RELIABLE
    light = DENS / ML
    return xr.Dataset(
        {"mass_density": ("radius", DENS, {"units": "Msun/kpc2"}),
         "mass_density_error": ("radius", 0.1 * DENS, {"units": "Msun/kpc2"}),
         "light_density": ("radius", light, {"units": "uJy/kpc2"}),
         "ml": ("radius", np.full(N_R, ML), {"units": "Msun/uJy", "long_name": "stellar mass-to-light ratio in F444W"}),
         "ml_measured": ("radius", np.where(reliable, ML * (1 + 0.05 * np.sin(R * 7)), np.nan), {"units": "Msun/uJy"}),
         "ml_error": ("radius", np.full(N_R, 0.1 * ML), {"units": "Msun/uJy"}),
         "reliable": ("radius", reliable), "extrapolated": ("radius", ~reliable),
         "cumulative_mass": ("radius", np.cumsum(DENS)), "cumulative_light": ("radius", np.cumsum(light)),
         "snr": ("radius", np.linspace(40, 1, N_R)), "fitted_fraction": ("radius", np.where(reliable, 1.0, 0.2))},
        coords=radius_coords(),
        attrs={"r50_mass": np.array([0.70, 0.80, 0.90]), "r50_light": np.array([0.85, 0.95, 1.05]),
               "r_reliable": R_RELIABLE, "log_mass_total": np.array([9.9, 10.0, 10.1]), "band": "F444W",
               "ml_method": "constant", "source_id": "test-galaxy"},
    )


def light_profiles(bands):
    scales = np.linspace(0.3, 0.6, len(bands))[:, None]
    return 3.0 * np.exp(-R[None, :] / scales)


def prof_ds(bands=BANDS):
    light = light_profiles(bands)
    colour = -2.5 * np.log10(light[0] / light[-1])
    return xr.Dataset(
        {"light": (("band", "radius"), light, {"units": "uJy"}),
         f"colour_{bands[0]}_{bands[-1]}": ("radius", colour, {"units": "mag", "long_name": f"{bands[0]} - {bands[-1]}"}),
         "av": ("radius", np.linspace(1.0, 0.2, N_R), {"units": "mag", "long_name": "mean value in the elliptical annulus"}),
         "log_age_mw": ("radius", np.linspace(9.5, 9.0, N_R), {"units": "log10(yr)", "long_name": "mass-weighted age"})},
        coords={"band": bands, **radius_coords(kpc=False)},
    )


def ml_ds():
    from scipy import stats

    rng = np.random.default_rng(1)
    col = rng.uniform(0.0, 2.0, 200)
    logml = INTERCEPT + SLOPE * col + rng.normal(0, 0.05, 200)
    edges = np.quantile(col, np.linspace(0, 1, 9))
    which = np.clip(np.searchsorted(edges, col, side="right") - 1, 0, 7)
    med = np.array([np.median(logml[which == k]) for k in range(8)])
    cen = np.array([np.median(col[which == k]) for k in range(8)])
    resid = logml - np.interp(col, cen, med)
    scat = np.array([np.std(resid[which == k]) for k in range(8)])
    fit = stats.linregress(col, logml)
    return xr.Dataset(
        {"colour": ("pixel", col, {"units": "mag", "long_name": "F150W - F444W"}),
         "log_ml": ("pixel", logml, {"units": "log10(Msun/uJy)", "long_name": "log M*/L in F444W"}),
         "y": ("pixel", rng.integers(0, 30, 200)), "x": ("pixel", rng.integers(0, 30, 200)),
         "running_median": ("colour_bin", med), "running_scatter": ("colour_bin", scat)},
        coords={"colour_bin": ("colour_bin", cen)},
        attrs={"slope": float(fit.slope), "slope_error": float(fit.stderr), "intercept": float(fit.intercept),
               "scatter": float(np.std(resid)), "spearman": 1.0, "colour": "F150W-F444W", "band": "F444W"},
    )


def line(ax, label):
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, [ln.get_label() for ln in ax.get_lines()]
    return found[0]


def line_starting(ax, prefix):
    found = [ln for ln in ax.get_lines() if ln.get_label().startswith(prefix)]
    assert len(found) == 1, [ln.get_label() for ln in ax.get_lines()]
    return found[0]


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


# -- profiles ----------------------------------------------------------------------------------------------------------
def test_exported_functions():
    assert pegleg.plot.profiles is profiles and callable(profiles)
    assert pegleg.plot.ml_colour is ml_colour
    assert {"profiles", "ml_colour"} <= set(pegleg.plot.__all__)


def test_mass_profile_alone():
    mass = mass_ds()
    fig = mass.pegleg.plot.profiles()
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2                        # densities + M/L
    ax, ax_ml = fig.axes
    assert ax.get_yscale() == "log" and ax_ml.get_yscale() == "log"
    # measured part: solid over the reliable annuli, all inside r_reliable
    meas = line(ax, "stellar mass (resolved fit)")
    assert meas.get_linestyle() == "-"
    np.testing.assert_allclose(meas.get_xdata(), R[:N_RELIABLE])
    np.testing.assert_allclose(meas.get_ydata(), DENS[:N_RELIABLE])
    assert np.all(np.asarray(meas.get_xdata()) < R_RELIABLE)
    # extrapolated part: dashed, from the last measured annulus outwards
    ext = line(ax, "stellar mass (M/L x F444W light)")
    assert ext.get_linestyle() == "--"
    np.testing.assert_allclose(ext.get_xdata(), R[N_RELIABLE - 1:])
    np.testing.assert_allclose(ext.get_ydata(), DENS[N_RELIABLE - 1:])
    assert np.all(np.asarray(ext.get_xdata())[1:] > R_RELIABLE)
    # r50 lines at the medians
    assert line_starting(ax, "r50_mass").get_xdata()[0] == pytest.approx(0.80)
    assert line_starting(ax, "r50_light").get_xdata()[0] == pytest.approx(0.95)
    # shading beyond r_reliable, to the outer edge of the last annulus
    spans = [p for p in ax.patches if isinstance(p, Rectangle) and p.get_label().startswith("beyond r_reliable")]
    assert len(spans) == 1
    assert spans[0].get_x() == pytest.approx(R_RELIABLE)
    assert spans[0].get_x() + spans[0].get_width() == pytest.approx(R[-1] + WIDTH / 2)
    assert ax.get_xlim() == pytest.approx((0.0, R[-1] + WIDTH / 2))
    # error band present; light_density scaled to the central mass
    assert ax.collections
    light = line(ax, "F444W light")
    np.testing.assert_allclose(light.get_ydata(), DENS, rtol=1e-12)
    # M/L panel
    np.testing.assert_allclose(line(ax_ml, "M/L used").get_xdata(), R[:N_RELIABLE])
    np.testing.assert_allclose(line(ax_ml, "M/L extrapolated").get_xdata(), R[N_RELIABLE - 1:])
    assert "stellar mass-to-light ratio in F444W [Msun/uJy]" in " ".join(ax_ml.get_ylabel().split())
    # kpc axis on top
    tops = [c for c in ax.child_axes if c.get_xlabel() == "radius [kpc]"]
    assert len(tops) == 1
    assert "log M* = 10.00" in fig.get_suptitle() and "test-galaxy" in fig.get_suptitle()


def test_profiles_with_mass():
    prof, mass = prof_ds(), mass_ds()
    fig = profiles(prof, mass=mass)
    assert len(fig.axes) == 5                        # densities, colour, M/L, av, log_age_mw
    ax, ax_col, ax_ml, ax_av, ax_age = fig.axes
    assert ax.get_yscale() == "log"
    assert ax_av.get_yscale() == "linear"
    np.testing.assert_allclose(line(ax, "stellar mass (resolved fit)").get_xdata(), R[:N_RELIABLE])
    # one light line per band, same shape as the input, scaled to the central mass
    light = light_profiles(BANDS)
    for i, b in enumerate(BANDS):
        y = np.asarray(line(ax, f"{b} light").get_ydata())
        assert y[0] == pytest.approx(DENS[0])
        np.testing.assert_allclose(y / light[i], DENS[0] / light[i, 0], rtol=1e-12)
    assert legend_texts(ax).count("F150W light") == 1
    assert ax.get_legend().get_title().get_text() == "light scaled to the central mass"
    # colour, av and age panels show the input arrays with long_name [units]
    col = ax_col.get_lines()[0]
    np.testing.assert_allclose(col.get_xdata(), R)
    np.testing.assert_allclose(col.get_ydata(), prof["colour_F150W_F444W"].values)
    assert ax_col.get_ylabel() == "F150W - F444W [mag]"
    np.testing.assert_allclose(ax_av.get_lines()[0].get_ydata(), prof["av"].values)
    # generic annulus long_name replaced by the schema's name of the quantity
    assert " ".join(ax_av.get_ylabel().split()) == "V-band attenuation of the diffuse dust [mag]"
    assert " ".join(ax_age.get_ylabel().split()) == "mass-weighted age [log10(yr)]"
    np.testing.assert_allclose(ax_age.get_lines()[0].get_ydata(), prof["log_age_mw"].values)
    # shared radius axis, r_reliable shaded on every panel
    assert all(a.get_shared_x_axes().joined(ax, a) for a in fig.axes)
    assert all(any(isinstance(p, Rectangle) and p.get_x() == pytest.approx(R_RELIABLE) for p in a.patches)
               for a in fig.axes)
    # kpc from the mass profile's radius_kpc
    top = ax.child_axes[0]
    assert top.get_xlabel() == "radius [kpc]"
    fig.savefig(io.BytesIO(), format="png")          # draws without warnings (filterwarnings = error)
    assert top.get_xlim() == pytest.approx((0.0, (R[-1] + WIDTH / 2) * KPC))


def test_profiles_alone_and_many_bands():
    prof = prof_ds()
    fig = prof.pegleg.plot.profiles()
    assert len(fig.axes) == 4                        # light, colour, av, log_age_mw
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert ax.get_ylabel() == "surface brightness [uJy]"     # no mass: unscaled light
    np.testing.assert_allclose(line(ax, "F444W light").get_ydata(), light_profiles(BANDS)[-1])
    assert not ax.child_axes                         # no radius_kpc, no redshift
    assert not any(ln.get_label().startswith("r50") for ln in ax.get_lines())

    bands6 = ["F090W", "F115W", "F150W", "F200W", "F356W", "F444W"]
    fig = profiles(prof_ds(bands6))
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["F444W light"]
    fig = profiles(prof_ds(bands6), bands=["F115W", "F200W"])
    assert [ln.get_label() for ln in fig.axes[0].get_lines()] == ["F115W light", "F200W light"]
    # kpc axis derived from a redshift attribute
    fig = profiles(prof.assign_attrs(redshift=1.0))
    assert [c.get_xlabel() for c in fig.axes[0].child_axes] == ["radius [kpc]"]
    # sfr_density gets its own log panel
    sfr = 0.3 * np.exp(-R / 0.4)
    fig = profiles(prof.assign(sfr_density=("radius", sfr, {"units": "Msun/yr/kpc2"})))
    assert len(fig.axes) == 5
    ax_sfr = fig.axes[2]
    assert ax_sfr.get_yscale() == "log"
    np.testing.assert_allclose(ax_sfr.get_lines()[0].get_ydata(), sfr)
    assert "[Msun/yr/kpc2]" in ax_sfr.get_ylabel()


def test_profiles_fig_reuse():
    fig = Figure()
    out = profiles(mass_ds(), fig=fig)
    assert out is fig and len(fig.axes) == 2
    out = profiles(prof_ds(), mass=mass_ds(), fig=fig)
    assert out is fig and len(fig.axes) == 5        # cleared, not stacked on top


def test_profiles_errors():
    bad = xr.Dataset({"foo": ("radius", R)}, coords={"radius": R})
    with pytest.raises(SchemaError, match="nothing to draw"):
        profiles(bad)
    with pytest.raises(SchemaError, match="nothing to draw"):
        bad.pegleg.plot.profiles()
    with pytest.raises(SchemaError, match="radius"):
        profiles(xr.Dataset({"av": ("pixel", R)}))
    with pytest.raises(SchemaError, match="two mass_profile"):
        profiles(mass_ds(), mass=mass_ds())
    with pytest.raises(SchemaError, match="mass_density"):
        profiles(prof_ds(), mass=prof_ds())
    with pytest.raises(SchemaError, match="not in the light"):
        profiles(prof_ds(), bands=["F999W"])


# -- ml_colour ---------------------------------------------------------------------------------------------------------
def test_ml_colour():
    mlc = ml_ds()
    fig = mlc.pegleg.plot.ml_colour()
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    pts = [c for c in ax.collections if c.get_label().startswith("pixels")][0]
    np.testing.assert_allclose(pts.get_offsets(), np.column_stack([mlc["colour"].values, mlc["log_ml"].values]))
    med = line(ax, "running median")
    np.testing.assert_allclose(med.get_xdata(), mlc["colour_bin"].values)
    np.testing.assert_allclose(med.get_ydata(), mlc["running_median"].values)
    slope, err = mlc.attrs["slope"], mlc.attrs["slope_error"]
    assert slope == pytest.approx(SLOPE, abs=0.05)
    label = f"fit: slope = {slope:.3f} +- {err:.3f}"
    assert label in legend_texts(ax)
    fit = line(ax, label)
    x = np.asarray(fit.get_xdata())
    np.testing.assert_allclose(fit.get_ydata(), mlc.attrs["intercept"] + slope * x)
    assert x.min() == pytest.approx(mlc["colour"].min()) and x.max() == pytest.approx(mlc["colour"].max())
    text = " ".join(t.get_text() for t in ax.texts)
    assert f"scatter = {mlc.attrs['scatter']:.3f} dex" in text and "Spearman rho = 1.00" in text
    assert ax.get_xlabel() == "F150W - F444W [mag]"
    assert ax.get_ylabel() == "log M*/L in F444W [log10(Msun/uJy)]"
    assert "running scatter" in legend_texts(ax)
    fig.savefig(io.BytesIO(), format="png")


def test_ml_colour_ax_and_fig_reuse():
    mlc = ml_ds()
    fig = Figure()
    left, right = fig.subplots(1, 2)
    out = ml_colour(mlc, ax=right)
    assert out is fig and len(fig.axes) == 2
    assert right.collections and not left.collections and not left.get_lines()
    fig2 = Figure()
    assert ml_colour(mlc, fig=fig2) is fig2
    assert ml_colour(mlc, fig=fig2) is fig2 and len(fig2.axes) == 1


def test_ml_colour_errors():
    with pytest.raises(SchemaError, match="log_ml"):
        ml_colour(xr.Dataset({"colour": ("pixel", np.zeros(3))}))
    with pytest.raises(SchemaError, match="colour"):
        mass_ds().pegleg.plot.ml_colour()
