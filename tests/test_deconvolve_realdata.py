"""The deconvolve step on the shared real galaxies (skips without ../shared/data)."""

import warnings

import numpy as np
import pytest

import pegleg
from pegleg import PeglegWarning

pytestmark = pytest.mark.realdata


def _open(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PeglegWarning)  # bands without coverage are reported, not errors here
        return pegleg.open_stamps(path, **kw)


def _stamp_conservation(out):
    """sum(PSF-corrected) / sum(observed - sky) - 1 over unmasked pixels, per band."""
    r = []
    for i in range(out.sizes["band"]):
        m = ~out["mask"].values[i]
        obs = out["image_observed"].values[i] - float(out["sky"][i])
        r.append(out["image"].values[i][m].sum() / obs[m].sum() - 1)
    return np.array(r)


def test_ngdeep_native_resolution(shared_data):
    ds = _open(shared_data / "ngdeep" / "galaxies" / "645", psf=shared_data / "jades-origins-field" / "psf")
    out = ds.pegleg.deconvolve()
    pegleg.validate(out)
    assert out["deconvolve_ok"].all()
    assert out.attrs["resolution"] == "deconvolved"
    qa = out.pegleg.qa()
    assert qa["sky_ok"].all() and qa["centre_ok"].all()
    # intrinsic sizes: the F444W-resolution r50 shrinks less than the PSF would suggest
    assert np.all(out["r50"].values > 0.05) and np.all(out["r50"].values < 0.4)


@pytest.mark.parametrize("gid", ["36", "531"])
def test_jof_match_then_deconvolve_f444w(shared_data, gid):
    galaxy = shared_data / "jades-origins-field" / "galaxies" / gid
    ds = _open(galaxy, psf=shared_data / "jades-origins-field" / "psf", matched_to="F444W",
               bands=["F150W", "F277W", "F444W"])
    out = ds.pegleg.deconvolve()
    assert out.attrs["resolution"] == "deconvolved:F444W"
    assert out["deconvolve_ok"].all()
    # flux is conserved over the stamp up to the F444W PSF light scattered beyond it
    # (the model PSF has 2.5% of its light outside a 65-pixel box)
    cons = _stamp_conservation(out)
    assert np.all(np.abs(cons) < 0.04), cons
    assert out.pegleg.qa()["sky_ok"].all()


@pytest.mark.slow
@pytest.mark.parametrize("gid", ["36", "531", "778"])
def test_jof_all_bands(shared_data, gid):
    galaxy = shared_data / "jades-origins-field" / "galaxies" / gid
    ds = _open(galaxy, psf=shared_data / "jades-origins-field" / "psf", matched_to="F444W")
    out = ds.pegleg.deconvolve()
    assert out.sizes["band"] == 19
    pegleg.validate(out)
    qa = out.pegleg.qa()
    assert len(qa) == 19 and qa["centre_ok"].sum() >= 15
