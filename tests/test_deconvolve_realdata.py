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


def _stamp_conservation(out, region=None):
    """sum(PSF-corrected) / sum(observed - sky) - 1 over unmasked pixels (of ``region``), per band."""
    r = []
    for i in range(out.sizes["band"]):
        m = ~out["mask"].values[i] if region is None else ~out["mask"].values[i] & region
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
    qa = out.pegleg.qa()
    assert qa["sky_ok"].all()
    # inside the segment: the PSF-corrected image re-convolved with the PSF holds the data's
    # flux within 3% (measured -2.1% to -0.4%), while its own segment sum is higher by the
    # light the PSF scatters out of the segment (12% for JOF-36, 19% for JOF-531), which the
    # model predicts to within 1.5%
    assert np.all(np.abs(qa["segment_flux_change"]) < 0.03), qa["segment_flux_change"]
    assert qa["flux_ok"].all()
    seg, _ = pegleg.schema.source_region(ds)
    for b, raw in zip(out["band"].values, _stamp_conservation(out, seg)):
        assert 0.08 < raw < 0.25, (b, raw)
        assert abs(raw - qa.loc[b, "segment_psf_spill"]) < 0.015, (b, raw, qa.loc[b, "segment_psf_spill"])


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
    # flux bookkeeping in the segment: every NIRCam band within 3% (measured: worst -2.6%;
    # faint HST bands scatter more, e.g. F435W of JOF-531 at -35%)
    nircam = [b for b in qa.index if b.startswith("F") and b[1:4].isdigit() and b not in
              ("F435W", "F606W", "F775W", "F814W", "F850LP")]
    assert np.all(np.abs(qa.loc[nircam, "segment_flux_change"]) < 0.03), qa.loc[nircam, "segment_flux_change"]
