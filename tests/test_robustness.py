"""Numerical robustness and safe loading.

- masked pixels never contribute: huge sentinels (1e30) in masked pixels give the same
  deconvolution, profiles, bins and error calibration as zeros there;
- float32 inputs give the float64 results (identical for identical values, within
  tolerance after float32 rounding);
- results are deterministic for a seed, across runs and worker counts;
- deconvolution results do not depend on the flux unit (the scale of image and error);
- no pickle is ever read outside the opt-in Parrot reader.
"""

from __future__ import annotations

import ast
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import pegleg
from pegleg import EmulatorError, PeglegWarning
from pegleg.psf import gaussian_psf

BANDS = ["F150W", "F444W"]
N = 25
SENTINEL = 1e30
PACKAGE = Path(pegleg.__file__).resolve().parent


def _galaxy(seed: int = 0, n: int = N):
    """(image, error, psf, mask) of a small two-band galaxy with masked holes and edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:n, :n] - (n - 1) / 2
    r2 = (x / 1.0) ** 2 + (y / 0.7) ** 2
    img = np.stack([(i + 1) * 20.0 * np.exp(-r2 / (2 * 2.5 ** 2)) for i in range(len(BANDS))])
    err = np.full_like(img, 0.2)
    img = img + rng.normal(0, 0.2, img.shape)
    mask = np.zeros(img.shape, bool)
    mask[0, 1:4, 15:22] = True     # a hole in the sky
    mask[1, 18:23, 2:6] = True
    mask[:, 11, 14] = True         # a pixel on the galaxy's flank
    mask[1, :, -1] = True          # an edge column
    psf = gaussian_psf(0.09, 0.03, 11)
    return img, err, psf, mask


def _dataset(fill: float, *, segmentation: bool = False, seed: int = 0) -> xr.Dataset:
    """The galaxy with ``fill`` in the image and error of every masked pixel."""
    img, err, psf, mask = _galaxy(seed)
    img = np.where(mask, fill, img)
    err = np.where(mask, fill, err)
    seg = None
    if segmentation:
        seg = np.zeros((N, N), np.int32)
        yy, xx = np.mgrid[:N, :N] - (N - 1) / 2
        seg[np.hypot(yy, xx) < 7] = 1
    return pegleg.from_arrays(img, err, psf, BANDS, 0.03, mask=mask, segmentation=seg)


def _strip(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without the (time-stamped) history and the per-call worker count."""
    out = ds.copy()
    out.attrs = {k: v for k, v in ds.attrs.items() if k != "pegleg_history"}
    return out


# ---------------------------------------------------------------------------
# masked pixels never contribute
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sentinel_pair():
    return _dataset(0.0), _dataset(SENTINEL)


def test_sentinels_stay_out_of_the_data(sentinel_pair):
    zero, big = sentinel_pair
    pegleg.validate(big)
    m = big["mask"].values
    assert np.all(big["image"].values[m] == SENTINEL)  # kept, only masked
    np.testing.assert_array_equal(zero["image"].values[~m], big["image"].values[~m])


def test_masked_sentinels_do_not_change_deconvolution(sentinel_pair):
    zero, big = (d.pegleg.deconvolve(n_workers=1, progress=False) for d in sentinel_pair)
    assert zero["deconvolve_ok"].values.all()
    for v in ("flux_total", "flux_total_error", "r50", "r80", "sky", "sky_noise", "chi2_reduced",
              "centre_y", "centre_x", "axis_ratio", "position_angle", "mgm_flux"):
        np.testing.assert_array_equal(zero[v].values, big[v].values, err_msg=v)
    np.testing.assert_array_equal(zero["model"].values, big["model"].values)
    m = big["mask"].values
    # the PSF-corrected image is the model where masked: no trace of the sentinel
    np.testing.assert_array_equal(zero["image"].values, big["image"].values)
    assert np.all(np.abs(big["image"].values[m]) < 1e3)


@pytest.mark.parametrize("geometry", ["given", "default"])
def test_masked_sentinels_do_not_change_radial_profiles(sentinel_pair, geometry):
    kw = dict(center=(12.0, 12.0), ellipticity=0.3, position_angle=0.0) if geometry == "given" else {}
    zero, big = (d.pegleg.radial_profile("image", bin_width=0.06, **kw) for d in sentinel_pair)
    for v in ("profile", "profile_error", "cumulative", "npix", "area", "r50", "r80"):
        np.testing.assert_allclose(zero[v].values, big[v].values, rtol=1e-12, atol=0, err_msg=v)
    assert np.all(np.abs(big["profile"].values) < 1e3)
    ez, eb = (d.pegleg.radial_profile("error", bin_width=0.06, **kw) for d in sentinel_pair)
    np.testing.assert_allclose(ez["profile"].values, eb["profile"].values, rtol=1e-12, atol=0)


@pytest.mark.parametrize("method", ["voronoi", "annuli", "none"])
def test_masked_sentinels_do_not_change_bins(sentinel_pair, method):
    zero, big = (d.pegleg.bin(8, band="F444W", method=method) for d in sentinel_pair)
    np.testing.assert_array_equal(zero["bin_id"].values, big["bin_id"].values)
    tz, tb = zero.pegleg.binned(), big.pegleg.binned()
    for v in ("flux", "error", "n_pixels", "bin_y", "bin_x", "snr"):
        np.testing.assert_allclose(tz[v].values, tb[v].values, rtol=1e-12, atol=0, err_msg=v)
    # binned sums are the sums over the unmasked pixels of each bin
    img, m, bid = zero["image"].values, zero["mask"].values, zero["bin_id"].values
    for j, b in enumerate(tz["band"].values):
        for k in tz["bin"].values[:5]:
            sel = (bid == k) & ~m[j]
            want = img[j][sel].sum() if sel.any() else np.nan
            np.testing.assert_allclose(tb["flux"].sel(bin=k, band=b).values, want, rtol=1e-12)


@pytest.mark.parametrize("segmentation", [False, True])
def test_masked_sentinels_do_not_change_error_calibration(segmentation):
    zero, big = (_dataset(v, segmentation=segmentation) for v in (0.0, SENTINEL))
    cz, cb = zero.pegleg.calibrate_errors(min_pixels=20), big.pegleg.calibrate_errors(min_pixels=20)
    np.testing.assert_array_equal(cz["error_scale"].values, cb["error_scale"].values)
    m = big["mask"].values
    np.testing.assert_array_equal(cz["error"].values[~m], cb["error"].values[~m])


def test_nan_and_sentinel_masked_pixels_agree():
    """NaN in masked pixels (the other common fill) gives the same as the sentinel."""
    nan, big = _dataset(np.nan), _dataset(SENTINEL)
    a, b = (d.pegleg.deconvolve(n_workers=1, progress=False) for d in (nan, big))
    np.testing.assert_array_equal(a["flux_total"].values, b["flux_total"].values)
    pa, pb = (d.pegleg.radial_profile("image", bin_width=0.06) for d in (nan, big))
    np.testing.assert_allclose(pa["profile"].values, pb["profile"].values, rtol=1e-12)


# ---------------------------------------------------------------------------
# float32 vs float64
# ---------------------------------------------------------------------------
def _chain(img, err, psf, mask):
    ds = pegleg.from_arrays(img, err, psf, BANDS, 0.03, mask=mask)
    dec = ds.pegleg.deconvolve(n_workers=1, progress=False)
    prof = dec.pegleg.radial_profile("image", bin_width=0.06)
    return ds, dec, prof


@pytest.fixture(scope="module")
def precision_runs():
    img, err, psf, mask = _galaxy(1)
    f32 = [a.astype(np.float32) for a in (img, err, psf)]
    same = [a.astype(np.float64) for a in f32]  # float64 holding the float32 values
    return _chain(img, err, psf, mask), _chain(*f32, mask), _chain(*same, mask)


def test_float32_input_is_stored_as_float64(precision_runs):
    _, (ds32, _, _), _ = precision_runs
    assert ds32["image"].dtype == np.float64 and ds32["error"].dtype == np.float64
    assert ds32["psf"].dtype == np.float64


def test_float32_and_float64_of_the_same_values_give_identical_results(precision_runs):
    _, (_, dec32, prof32), (_, dec_same, prof_same) = precision_runs
    xr.testing.assert_identical(_strip(dec32), _strip(dec_same))
    xr.testing.assert_identical(_strip(prof32), _strip(prof_same))


def relative_differences(precision_runs) -> dict[str, float]:
    """Max relative differences of the float32-rounded chain against float64."""
    (_, dec64, prof64), (_, dec32, prof32), _ = precision_runs
    out = {}
    for v in ("flux_total", "r50", "r80"):
        out[v] = float(np.max(np.abs(dec32[v].values / dec64[v].values - 1)))
    peak = np.abs(prof64["profile"].values).max(axis=-1, keepdims=True)
    out["profile"] = float(np.max(np.abs(prof32["profile"].values - prof64["profile"].values) / peak))
    out["cumulative"] = float(np.max(np.abs(prof32["cumulative"].values / prof64["cumulative"].values - 1)))
    return out


def test_float32_rounded_inputs_match_float64_within_tolerance(precision_runs):
    d = relative_differences(precision_runs)
    print("float32 vs float64 max relative differences:", json.dumps(d))
    assert d["flux_total"] < 1e-4, d
    assert d["r50"] < 1e-3 and d["r80"] < 1e-3, d
    assert d["profile"] < 1e-4 and d["cumulative"] < 1e-4, d


def test_big_endian_input_gives_identical_results():
    img, err, psf, mask = _galaxy(2)
    a = pegleg.from_arrays(img, err, psf, BANDS, 0.03, mask=mask)
    b = pegleg.from_arrays(img.astype(">f8"), err.astype(">f8"), psf.astype(">f8"), BANDS, 0.03, mask=mask)
    assert b["image"].dtype.isnative
    xr.testing.assert_identical(_strip(a), _strip(b))


# ---------------------------------------------------------------------------
# unit (scale) invariance
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-40, 1e-12, 1e12, 1e40])
def test_deconvolution_does_not_depend_on_the_flux_unit(scale):
    """Image and error x scale -> fluxes x scale, shapes unchanged (BVLS tolerances used to be
    absolute: at 1e12 the total flux moved by 0.8%)."""
    img, err, psf, mask = _galaxy(3)
    ref = pegleg.from_arrays(img, err, psf, BANDS, 0.03, mask=mask).pegleg.deconvolve(n_workers=1, progress=False)
    out = pegleg.from_arrays(img * scale, err * scale, psf, BANDS, 0.03,
                             mask=mask).pegleg.deconvolve(n_workers=1, progress=False)
    np.testing.assert_allclose(out["flux_total"].values / scale, ref["flux_total"].values, rtol=1e-9)
    np.testing.assert_allclose(out["r50"].values, ref["r50"].values, rtol=1e-9)
    np.testing.assert_allclose(out["sky"].values / scale, ref["sky"].values, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def observed():
    obs, _ = pegleg.synth.galaxy(["F150W", "F277W", "F444W"], shape=(31, 31), seed=7)
    return obs


def test_synthetic_galaxy_is_deterministic_for_a_seed():
    a, ta = pegleg.synth.galaxy(["F150W", "F444W"], shape=(21, 21), seed=5)
    b, tb = pegleg.synth.galaxy(["F150W", "F444W"], shape=(21, 21), seed=5)
    xr.testing.assert_identical(_strip(a), _strip(b))
    xr.testing.assert_identical(_strip(ta), _strip(tb))
    c, _ = pegleg.synth.galaxy(["F150W", "F444W"], shape=(21, 21), seed=6)
    assert not np.array_equal(a["image"].values, c["image"].values)


def test_deconvolution_is_deterministic_across_runs_and_worker_counts(observed):
    one = observed.pegleg.deconvolve(n_workers=1, progress=False)
    again = observed.pegleg.deconvolve(n_workers=1, progress=False)
    two = observed.pegleg.deconvolve(n_workers=2, progress=False)
    xr.testing.assert_identical(_strip(one), _strip(again))
    xr.testing.assert_identical(_strip(one), _strip(two))
    assert one.pegleg.history[-1]["parameters"]["n_workers"] == 1
    assert two.pegleg.history[-1]["parameters"]["n_workers"] == 2


def test_other_steps_are_deterministic(observed):
    for step in (lambda d: d.pegleg.register("F444W", n_bootstrap=4),
                 lambda d: d.pegleg.bin(10, band="F444W"),
                 lambda d: d.pegleg.calibrate_errors(min_pixels=20),
                 lambda d: d.pegleg.psf_match("F444W"),
                 lambda d: d.pegleg.radial_profile("image")):
        xr.testing.assert_identical(_strip(step(observed)), _strip(step(observed)))


# ---------------------------------------------------------------------------
# safe loading
# ---------------------------------------------------------------------------
_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _unsafe_loads(path: Path) -> list[str]:
    """``np.load`` calls without ``allow_pickle=False``, any ``allow_pickle=True``, pickle-module
    loads and ``torch.load`` without ``weights_only=True`` in one source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            for nm in names:
                if nm and nm.split(".")[0] in _PICKLE_MODULES:
                    found.append(f"{path.name}:{node.lineno}: import {nm}")
        if not isinstance(node, ast.Call):
            continue
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        ap = kw.get("allow_pickle")
        if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
            found.append(f"{path.name}:{node.lineno}: allow_pickle={ast.unparse(ap)}")
        func = node.func
        name = ast.unparse(func)
        if name in ("np.load", "numpy.load") and not (isinstance(ap, ast.Constant) and ap.value is False):
            found.append(f"{path.name}:{node.lineno}: {name}(...) without allow_pickle=False")
        if isinstance(func, ast.Attribute) and func.attr in ("load", "loads", "Unpickler") \
                and isinstance(func.value, ast.Name) and func.value.id in _PICKLE_MODULES:
            found.append(f"{path.name}:{node.lineno}: {name}(...)")
        if name == "torch.load":
            wo = kw.get("weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append(f"{path.name}:{node.lineno}: torch.load without weights_only=True")
    return found


def test_unpickling_appears_only_in_the_parrot_reader():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    offenders = {str(p.relative_to(PACKAGE.parent)): _unsafe_loads(p) for p in files}
    offenders = {k: v for k, v in offenders.items() if v}
    assert set(offenders) <= {"pegleg/sed/parrot.py"}, offenders
    # and the Parrot reader's one unpickling call sits behind the trust check
    lines = {int(f.split(":")[1]) for f in offenders.get("pegleg/sed/parrot.py", [])}
    assert len(lines) == 1, offenders
    src = (PACKAGE / "sed" / "parrot.py").read_text(encoding="utf-8").splitlines()
    trust_line = next(i for i, ln in enumerate(src, 1) if ln.strip() == "if not trust:")
    assert trust_line < lines.pop()


def test_the_source_scan_catches_unsafe_loads(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy as np\nimport pickle\n"
                   "a = np.load('x.npy')\nb = np.load('x.npz', allow_pickle=True)\n"
                   "c = pickle.load(open('f', 'rb'))\nd = np.load('y', allow_pickle=False)\n")
    found = _unsafe_loads(bad)
    assert len(found) == 5, found  # import, np.load twice (+ allow_pickle=True), pickle.load
    assert not any(":6:" in f for f in found)


class _Trap:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_load_emulator_refuses_parrot_npy_without_trust(tmp_path):
    from pegleg.sed import load_emulator

    marker = tmp_path / "unpickled"
    path = tmp_path / "parrot.npy"
    np.save(path, np.array([_Trap(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(EmulatorError, match="trust=True"):
        load_emulator(path)
    with pytest.raises(EmulatorError, match="trust=True"):
        load_emulator(str(path), trust=False)
    assert not marker.exists()
    # the check is on the caller's intent, not on the file: trust=True does unpickle
    with pytest.raises(EmulatorError):
        load_emulator(path, trust=True)
    assert marker.exists()


@pytest.mark.parametrize("loader", ["load_emulator", "load_posterior_network"])
@pytest.mark.parametrize("key", ["metadata", "W0", "extra"])
def test_pickled_object_array_inside_npz_is_refused(tmp_path, loader, key):
    import pegleg.sed as sed

    marker = tmp_path / "unpickled"
    arrays = {"metadata": np.frombuffer(b'{"format": "x"}', np.uint8), "W0": np.zeros((2, 2), np.float32)}
    arrays[key] = np.array([_Trap(marker)], dtype=object)
    path = tmp_path / "model.npz"
    np.savez(path, **arrays)
    with pytest.raises(EmulatorError):
        getattr(sed, loader)(path)
    for trust in (True, False):  # trust never enables unpickling of .npz files
        if loader == "load_emulator":
            with pytest.raises(EmulatorError):
                sed.load_emulator(path, trust=trust)
    assert not marker.exists()


def test_open_dataset_does_not_unpickle(tmp_path):
    """NetCDF object attributes come back as text, never as unpickled objects."""
    img, err, psf, mask = _galaxy(0)
    ds = pegleg.from_arrays(img, err, psf, BANDS, 0.03, mask=mask)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PeglegWarning)
        path = ds.pegleg.to_netcdf(tmp_path / "s.nc")
    back = pegleg.open_dataset(path)
    assert isinstance(back.attrs["pegleg_history"], str)
