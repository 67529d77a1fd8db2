"""Figures and the command line."""

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

import pegleg
from pegleg import SchemaError
from pegleg.cli import main


def small_ds():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:25, :25] - 12
    img = np.exp(-(x**2 + y**2) / 20.0)[None] * [[[1.0]], [[2.0]], [[3.0]]] + rng.normal(0, 0.01, (3, 25, 25))
    mask = np.zeros(img.shape, bool)
    mask[1, :3, :3] = True
    psf = np.exp(-(x[6:19, 6:19] ** 2 + y[6:19, 6:19] ** 2) / 3.0)
    return pegleg.from_arrays(img, np.full(img.shape, 0.01), psf, ["F150W", "F277W", "F444W"], 0.03,
                              mask=mask, source_id="toy")


def test_stamps_figure():
    ds = small_ds()
    fig = ds.pegleg.plot.stamps()
    assert isinstance(fig, Figure)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split()[0] for ax in shown] == ["F150W", "F277W", "F444W"]
    # the masked band has an overlay image with the mask colour in the masked corner
    overlay = shown[1].get_images()[1].get_array()
    assert overlay[0, 0, 3] > 0 and overlay[12, 12, 3] == 0
    assert len(shown[0].get_images()) == 1  # no mask, no overlay
    # drawing into a given figure reuses it
    fig2 = Figure()
    assert ds.pegleg.plot.stamps(bands=["F444W"], fig=fig2) is fig2
    with pytest.raises(SchemaError, match="not in the Dataset"):
        ds.pegleg.plot.stamps(bands=["F999W"])
    with pytest.raises(SchemaError, match="variable 'nope'"):
        ds.pegleg.plot.stamps("nope")


def test_cli_demo_and_info(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "F444W" in out and "wrote" in out
    dec = pegleg.open_dataset(tmp_path / "demo_deconvolved.nc")
    assert dec.attrs["resolution"].startswith("deconvolved")
    for png in ("demo_deconvolution", "demo_maps", "demo_sed_centre", "demo_mass_profile", "demo_ml_colour"):
        assert (tmp_path / f"{png}.png").stat().st_size > 10_000, png
    fit = pegleg.open_dataset(tmp_path / "demo_fit.nc")
    truth = pegleg.open_dataset(tmp_path / "demo_truth.nc")
    # the whole chain recovers the synthetic galaxy's stellar mass (pixel sum within 0.1 dex)
    assert abs(fit.attrs["sedfit_log_mass_pixel_sum"][1] - truth.attrs["log_stellar_mass_total"]) < 0.1
    summary = (tmp_path / "demo_summary.txt").read_text()
    assert "half-mass radius" in summary and "pixel sum" in summary
    obs = xr.open_dataset(tmp_path / "demo_observed.nc")  # plain xarray reads it
    assert obs.sizes["band"] == 8
    obs.close()
    ds = pegleg.open_dataset(tmp_path / "demo_observed.nc")
    pegleg.validate(ds)
    assert (tmp_path / "demo_stamps.png").stat().st_size > 10_000
    assert main(["info", str(tmp_path / "demo_observed.nc")]) == 0
    assert "synth.galaxy" in capsys.readouterr().out


def test_cli_error_is_clean(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing.nc")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_deconvolution_figure():
    obs, _ = pegleg.synth.galaxy(["F150W", "F444W"], seed=1)
    out = obs.pegleg.deconvolve(sky_model="none")
    fig = out.pegleg.plot.deconvolution()
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 8
    assert [ax.get_title() for ax in fig.axes[:4]] == ["data", "model * PSF", "residual", "PSF-corrected"]
    assert "F444W" in fig.axes[4].get_ylabel()
    with pytest.raises(SchemaError, match="not been deconvolved"):
        obs.pegleg.plot.deconvolution()
