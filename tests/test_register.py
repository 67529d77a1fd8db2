"""Sub-pixel band registration (pegleg.register.register)."""

import warnings

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

import pegleg
from pegleg import PeglegWarning, SchemaError
from pegleg.register import measure_shift, register

BANDS = ["F150W", "F277W", "F444W"]
#: (dy, dx) by which each band's content is moved (Fourier shift); the shift that
#: re-aligns it -- what register reports -- is the opposite.
INJECTED = {"F150W": (0.37, -0.81), "F277W": (-0.62, 0.24), "F444W": (0.0, 0.0)}


@pytest.fixture(scope="module")
def clean():
    obs, truth = pegleg.synth.galaxy(BANDS, seed=3, noise=False)
    return obs, truth["image_convolved"].values


def _fourier_shift(img, shift):
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(img), shift)).real


def _injected(clean, seed, snr, injected=INJECTED, mask=None):
    """Bands moved by ``injected``, noise with peak S/N ``snr`` in every band."""
    obs, conv = clean
    rng = np.random.default_rng(seed)
    imgs, errs = [], []
    for i, b in enumerate(BANDS):
        depth = conv[i].max() / snr
        imgs.append(_fourier_shift(conv[i], injected[b]) + rng.standard_normal(conv[i].shape) * depth)
        errs.append(np.full(conv[i].shape, depth))
    return pegleg.from_arrays(np.array(imgs), np.array(errs), obs["psf"].values, BANDS, 0.03, mask=mask,
                              segmentation=obs["segmentation"].values)


def _expected():
    return -np.array([INJECTED[b] for b in BANDS])


def _pair_bound(clean, snr):
    """Cramer-Rao bound (px) on each band's shift relative to F444W at peak S/N ``snr``,
    (band, axis): locating one image of known shape in white noise has variance
    ``sigma^2 / sum(gradient^2)``; a pair of noisy images adds the two variances."""
    conv = clean[1]
    var = []
    for img in conv:
        sig = img.max() / snr
        g = np.gradient(img)
        var.append([sig**2 / np.sum(g[0] ** 2), sig**2 / np.sum(g[1] ** 2)])
    var = np.array(var)
    iref = BANDS.index("F444W")
    out = np.sqrt(var + var[iref])
    out[iref] = 0.0
    return out


def _shifts(r):
    return np.c_[r["shift_y"].values, r["shift_x"].values], np.c_[r["shift_y_error"].values, r["shift_x_error"].values]


def test_injected_shifts_recovered(clean):
    """Peak S/N 100 in every band: every realisation within 0.05 px.  Peak S/N 30: unbiased
    (mean of 8 realisations within 0.02 px) with scatter matching the reported errors and close
    to the Cramer-Rao bound of the band pair, itself ~0.05 px."""
    devs100 = np.array([_shifts(register(_injected(clean, s, 100)))[0] - _expected() for s in range(4)])
    print("S/N 100: worst |error| %.3f px" % np.abs(devs100).max())
    assert np.abs(devs100).max() < 0.05
    res = [_shifts(register(_injected(clean, s, 30))) for s in range(8)]
    dev = np.array([r[0] for r in res]) - _expected()
    err = np.array([r[1] for r in res])
    bias, scatter, mean_err = dev.mean(0)[:2], dev.std(0, ddof=1)[:2], err.mean(0)[:2]
    print(f"S/N 30: bias {np.round(bias, 3).tolist()}, scatter {np.round(scatter, 3).tolist()}, "
          f"mean reported error {np.round(mean_err, 3).tolist()}, worst |error| {np.abs(dev).max():.3f} px")
    assert np.abs(bias).max() < 0.03
    assert np.all(scatter < 0.08)
    # the estimator is close to the noise limit: scatter / Cramer-Rao bound of the pair 1.08-1.18
    # (bound 0.043-0.051 px: no unbiased estimator gets every realisation within 0.05 px here)
    bound = _pair_bound(clean, 30)[:2]
    print("S/N 30: Cramer-Rao bound", np.round(bound, 3).tolist(), "scatter / bound", np.round(scatter / bound, 2).tolist())
    assert np.all(bound > 0.03) and np.all(scatter / bound < 1.5)
    ratio = scatter / mean_err
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    # the reference band: zero by definition
    assert np.all(dev[:, 2] == 0) and np.all(err[:, 2] == 0)


def test_sign_convention(clean):
    """A band whose galaxy moved +0.5 px in x must be shifted by -0.5 px; applying the
    shifts aligns the bands (re-registering gives ~0)."""
    inj = {"F150W": (0.0, 0.5), "F277W": (-0.3, 0.0), "F444W": (0.0, 0.0)}
    ds = _injected(clean, 0, 300, injected=inj)
    r = register(ds)
    assert r["shift_x"].sel(band="F150W") == pytest.approx(-0.5, abs=0.02)
    assert r["shift_y"].sel(band="F150W") == pytest.approx(0.0, abs=0.02)
    assert r["shift_y"].sel(band="F277W") == pytest.approx(0.3, abs=0.02)
    # scipy.ndimage.shift(moving, shift) matches the reference (low-level convention)
    ref, mov = clean[1][2], _fourier_shift(clean[1][2], (0.4, -0.7))
    s = measure_shift(ref, mov)
    np.testing.assert_allclose(s, [-0.4, 0.7], atol=0.011)
    # apply, then register again
    ra = register(ds, apply=True)
    pegleg.validate(ra)
    np.testing.assert_array_equal(ra["shift_x"].values, r["shift_x"].values)
    again = _shifts(register(ra))[0]
    print("after apply=True, re-registered shifts:", np.round(again, 3).tolist())
    assert np.abs(again).max() < 0.03
    assert ra.attrs["registered_to"] == "F444W"
    assert [h["step"] for h in ra.pegleg.history][-1] == "register"
    assert ra.pegleg.history[-1]["parameters"]["apply"] is True
    # the reference band is untouched; F150W moved left (shift_x = -0.5): its right edge
    # column, half of whose interpolation weight lies beyond the stamp, is masked; F277W
    # (shift_y = +0.3) loses its first row
    np.testing.assert_array_equal(ra["image"].sel(band="F444W"), ds["image"].sel(band="F444W"))
    m = ra["mask"].sel(band="F150W").values
    assert m[:, -1].all() and not m[:, :-1].any()
    m2 = ra["mask"].sel(band="F277W").values
    assert m2[0].all() and not m2[1:].any()
    # a tiny shift masks nothing (the edge pixels draw < 25% of their weight from outside)
    tiny = _injected(clean, 0, 300, injected={"F150W": (0.03, -0.05), "F277W": (0.0, 0.0), "F444W": (0.0, 0.0)})
    rt = register(tiny, apply=True)
    assert not rt["mask"].values.any()


def test_apply_mask_and_error(clean):
    mask = np.zeros((3, 65, 65), bool)
    mask[0, 40:43, 20:23] = True  # a hole in F150W, off the galaxy's centre
    ds = _injected(clean, 1, 100, mask=mask)
    before = ds.copy(deep=True)
    r = register(ds, apply=True)
    xr.testing.assert_identical(ds, before)  # input untouched
    m = r["mask"].sel(band="F150W").values
    # the hole moved by ~(-0.37, +0.81) and grew: its old pixels and their neighbours are masked
    assert m[40:43, 20:23].all() and m[39:44, 21:25].all()
    assert m.sum() > mask[0].sum()
    err = r["error"].values
    assert np.all(err[~r["mask"].values] > 0)
    np.testing.assert_allclose(err[0][~m], float(ds["error"][0, 0, 0]), rtol=1e-9)  # flat error map stays flat
    # a masked hole does not bias the measurement
    dev = _shifts(register(ds))[0] - _expected()
    assert np.abs(dev).max() < 0.05


def test_determinism_and_reference(clean):
    ds = _injected(clean, 2, 50)
    a, b = register(ds), register(ds)
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    r = register(ds, reference="F150W", n_bootstrap=0)
    assert float(r["shift_y"].sel(band="F150W")) == 0.0
    assert np.all(np.isnan(r["shift_y_error"].sel(band=["F277W", "F444W"])))
    # relative to F150W, F444W moves the other way
    assert float(r["shift_x"].sel(band="F444W")) == pytest.approx(-0.81, abs=0.06)
    for name in ("shift_y", "shift_x", "shift_y_error", "shift_x_error"):
        assert a[name].dims == ("band",) and a[name].attrs["units"] == "pixel" and a[name].attrs["long_name"]
    hist = a.pegleg.history[-1]
    assert hist["step"] == "register" and hist["parameters"]["cross_convolved_bands"] == ["F150W", "F277W"]


def test_bad_reference(clean):
    ds = _injected(clean, 0, 100)
    with pytest.raises(SchemaError, match=r"available bands: \['F150W', 'F277W', 'F444W'\]"):
        register(ds, reference="F200W")
    with pytest.raises(SchemaError, match="upsample"):
        register(ds, upsample=0)


def test_undetected_band_is_flagged_not_applied(clean):
    obs, conv = clean
    ds = _injected(clean, 0, 100)
    noise = np.random.default_rng(9).standard_normal((65, 65)) * float(ds["error"][0, 0, 0])
    ds["image"].values[0] = noise  # F150W: pure noise
    with pytest.warns(PeglegWarning, match=r"unreliable.*F150W"):
        r = register(ds, apply=True)
    np.testing.assert_array_equal(r["image"].values[0], ds["image"].values[0])
    assert "F150W" in r.pegleg.history[-1]["parameters"]["unreliable"]


# ---------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------
def _open(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PeglegWarning)
        return pegleg.open_stamps(path, **kw)


def _print(name, r):
    print(f"\n{name} shifts to apply (pixels) relative to {r.pegleg.history[-1]['parameters']['reference']}:")
    for b in r["band"].values:
        d = r.sel(band=b)
        print(f"  {b:7s} dy = {float(d.shift_y):+.3f} +- {float(d.shift_y_error):.3f}   "
              f"dx = {float(d.shift_x):+.3f} +- {float(d.shift_x_error):.3f}")


def _centroid_shifts(ds, bands, reference="F444W"):
    """(band, 2) centroid-based shifts: the reference band's flux-weighted centroid minus each
    band's, inside the segment of the stamp's central pixel (positive flux only)."""
    seg = ds["segmentation"].values
    seg = seg == seg[seg.shape[0] // 2, seg.shape[1] // 2]
    yy, xx = np.indices(seg.shape)

    def centroid(b):
        w = np.where(seg, np.clip(ds["image"].sel(band=b).values, 0, None), 0)
        return np.array([(w * yy).sum(), (w * xx).sum()]) / w.sum()

    return np.array([centroid(reference) - centroid(b) for b in bands])


@pytest.mark.realdata
def test_ngdeep_645(shared_data):
    ds = _open(shared_data / "ngdeep" / "galaxies" / "645", psf=shared_data / "jades-origins-field" / "psf")
    r = register(ds)
    _print("NGDEEP-645", r)
    s, e = _shifts(r)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(e))
    assert np.all(np.abs(s) < 2) and np.all(e < 0.1)  # bright galaxy: well measured
    assert r.pegleg.history[-1]["parameters"]["cross_convolved_bands"] == ["F115W", "F150W", "F200W", "F277W", "F356W"]
    # sign and size agree with the flux-weighted centroids in the segment (which the
    # centred PSFs do not move): shift ~ centroid(ref) - centroid(band)
    expect = _centroid_shifts(ds, r["band"].values)
    print("centroid-based shifts:", np.round(expect, 2).tolist())
    assert np.abs(s - expect).max() < 0.4
    ra = register(ds, apply=True)
    again = _shifts(register(ra))[0]
    print("NGDEEP-645 after apply, worst residual shift:", np.abs(again).max())
    assert np.abs(again).max() < 0.1


@pytest.mark.realdata
def test_jof_36_matched(shared_data):
    ds = _open(shared_data / "jades-origins-field" / "galaxies" / "36",
               psf=shared_data / "jades-origins-field" / "psf", matched_to="F444W")
    # z = 4.1: the HST bands below the Lyman break do not detect it -> flagged
    with pytest.warns(PeglegWarning, match="unreliable"):
        r = register(ds)
    _print("JOF-36", r)
    s, e = _shifts(r)
    assert np.all(np.isfinite(s)) and np.all(np.isfinite(e))
    nircam = [b for b in r["band"].values if b.startswith("F") and b not in
              ("F435W", "F606W", "F775W", "F814W", "F850LP")]
    sub = r.sel(band=nircam)
    assert np.all(np.hypot(sub.shift_y, sub.shift_x) < 2)
    assert np.all(np.hypot(sub.shift_y_error, sub.shift_x_error) < 0.2)
    assert r.pegleg.history[-1]["parameters"]["cross_convolved_bands"] == []  # one PSF for all bands


def test_apply_to_deconvolved_dataset_keeps_errors_and_geometry_consistent():
    """Shifting a deconvolved Dataset: error_observed and model_error move as variances, so
    error**2 = error_observed**2 + model_error**2 still holds, and the model centres move too."""
    from pegleg.register import _apply

    obs, _ = pegleg.synth.galaxy(["F150W", "F444W"], shape=(41, 41), seed=2)
    dec = obs.pegleg.deconvolve(sky_model="none", n_workers=1)
    shifts = np.array([[0.3, -0.45], [0.0, 0.0]])
    out = _apply(dec, shifts, "F444W")
    ok = ~out["mask"].values
    np.testing.assert_allclose(out["error"].values[ok] ** 2,
                               (out["error_observed"].values ** 2 + out["model_error"].values ** 2)[ok], rtol=1e-9)
    assert not np.allclose(out["model_error"].values[0], dec["model_error"].values[0])
    np.testing.assert_array_equal(out["model_error"].values[1], dec["model_error"].values[1])
    np.testing.assert_allclose(out["centre_y"].values - dec["centre_y"].values, [0.3, 0.0])
    np.testing.assert_allclose(out["centre_x"].values - dec["centre_x"].values, [-0.45, 0.0])
