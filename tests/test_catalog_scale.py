"""Catalogue runs at scale (issue 10): a 20-galaxy catalogue killed half-way and resumed.

The 20 galaxies are synthetic ones in mosaics written by :func:`pegleg.synth.write_field`
(the function behind ``scripts/make_synthetic_field.py``); the 4 real JADES Origins
Field galaxies of ``../shared/data`` (19 bands, already PSF-matched to F444W) get the
same treatment in a second run, because mosaic cutouts and stamp folders (and their
bands and PSFs) need two configurations; the real part skips cleanly without the data.

For each part: an uninterrupted reference run (``run_catalog`` on a 2-worker
LocalCluster), then ``pegleg run --workers 2`` in a subprocess whose whole process group
(driver, scheduler, nannies, workers) is killed with SIGKILL as soon as half of the
galaxies have their file, then a re-run on the 2-worker LocalCluster.  The re-run must
compute exactly the galaxies without a file (``skipped`` flags and unchanged
modification times of the others) and every output must equal the reference
(numeric variables and attributes within 1e-9, timing attributes excluded).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pegleg.pipeline import Config, run_catalog

pytest.importorskip("distributed")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_synthetic_field.py"
N_SYNTH = 20
REAL_IDS = ["36", "531", "778", "478"]
_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
#: History-record keys and attributes that hold times (differ between runs by design).
_TIMING_KEYS = {"time", "seconds", "runtime_s"}


def _network() -> str:
    """The bundled posterior network, else the small test one (test_pipeline's choice)."""
    from test_pipeline import _network as network

    return network()


def _is_timing(key: str) -> bool:
    return key in _TIMING_KEYS or key.endswith("_seconds")


def _strip_timing(value):
    """JSON value without timing keys (history records: 'time'; pipeline: 'seconds')."""
    if isinstance(value, dict):
        return {k: _strip_timing(v) for k, v in value.items() if not _is_timing(k)}
    if isinstance(value, list):
        return [_strip_timing(v) for v in value]
    return value


def _assert_close(a, b, what: str) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype.kind == b.dtype.kind, what
    if a.dtype.kind in "fc":
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9, equal_nan=True, err_msg=what)
    else:
        assert np.array_equal(a, b), what


def _assert_same_output(path: Path, ref: Path) -> None:
    """Same variables, coordinates and attributes (numbers within 1e-9; timing excluded)."""
    import xarray as xr

    with xr.open_dataset(path) as a, xr.open_dataset(ref) as b:
        assert set(a.variables) == set(b.variables) and dict(a.sizes) == dict(b.sizes), path.name
        for name in a.variables:
            _assert_close(a[name].values, b[name].values, f"{path.name}: {name}")
            assert a[name].attrs.keys() == b[name].attrs.keys(), f"{path.name}: {name} attrs"
            for key in a[name].attrs:
                _assert_close(a[name].attrs[key], b[name].attrs[key], f"{path.name}: {name}.{key}")
        keys = {k for k in a.attrs if not _is_timing(k)}
        assert keys == {k for k in b.attrs if not _is_timing(k)}, path.name
        for key in keys:
            if key == "pegleg_history":
                assert (_strip_timing(json.loads(a.attrs[key])) == _strip_timing(json.loads(b.attrs[key]))), \
                    f"{path.name}: history"
            else:
                _assert_close(a.attrs[key], b.attrs[key], f"{path.name}: attribute {key}")


@pytest.fixture(scope="module")
def cluster():
    """``pegleg run``'s own LocalCluster (2 worker processes, profiler off)."""
    from pegleg.pipeline import local_cluster

    c = local_cluster(2)
    yield c
    c.close()


def _kill_half_way(catalog: Path, config: Path, out: Path, n: int, log: Path) -> float:
    """Run ``pegleg run --workers 2`` in its own process group; SIGKILL the group once
    ``n // 2`` outputs exist.  Returns the seconds until the kill."""
    import psutil

    cmd = [sys.executable, "-c", "import sys; from pegleg.cli import main; sys.exit(main(sys.argv[1:]))",
           "run", str(catalog), "--config", str(config), "--out", str(out), "--workers", "2"]
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **_ENV})
    try:
        deadline = time.monotonic() + 900
        while len(list(out.glob("*.nc"))) < n // 2:
            assert proc.poll() is None, f"pegleg run ended before the kill:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no progress:\n{log.read_text()[-3000:]}"
            time.sleep(0.05)
        family = [proc] + [psutil.Process(p.pid) for p in psutil.Process(proc.pid).children(recursive=True)]
        os.killpg(proc.pid, signal.SIGKILL)
        seconds = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    alive = [p for p in family[1:] if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    _, alive = psutil.wait_procs(alive, timeout=30)
    for p in alive:  # not in the process group (should not happen): end them, then fail
        p.kill()
    assert not alive, f"processes of the killed run survived the group kill: {alive}"
    assert len(family) >= 3  # the driver and at least the two worker processes were killed
    return seconds


def _killed_and_resumed(catalog: Path, config_file: Path, root: Path, cluster, n: int) -> pd.DataFrame:
    """Reference run, killed run, re-run (module docstring); returns the re-run's summary."""
    run, ref = root / "run", root / "ref"
    config = Config.from_toml(config_file).with_output_dir(run)
    t0 = time.perf_counter()
    df_ref = run_catalog(catalog, config, scheduler=cluster, progress=False)
    t_ref = time.perf_counter() - t0
    assert (df_ref["status"] == "ok").all(), df_ref.loc[df_ref["status"] != "ok", ["id", "error"]]
    run.rename(ref)  # same output_dir for every run: identical configuration and digest

    t_kill = _kill_half_way(catalog, config_file, run, n, root / "killed.log")
    before = {p.name: p.stat().st_mtime_ns for p in run.glob("*.nc")}
    assert n // 2 <= len(before) < n, sorted(before)

    t0 = time.perf_counter()
    df = run_catalog(catalog, config, scheduler=cluster, progress=False)
    t_rerun = time.perf_counter() - t0
    print(f"\n{n} galaxies: reference {t_ref:.1f} s; killed after {t_kill:.1f} s with {len(before)} done; "
          f"re-run of the other {n - len(before)} in {t_rerun:.1f} s")

    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", ["id", "error"]]
    assert list(df["id"]) == list(df_ref["id"])
    # only the missing galaxies were computed; the finished files were not touched
    assert list(df["skipped"]) == [f in before for f in df["file"]]
    assert int((~df["skipped"].astype(bool)).sum()) == n - len(before)
    assert {name: (run / name).stat().st_mtime_ns for name in before} == before
    # complete outputs only (a worker killed mid-write leaves a temporary file; the re-run removes it)
    names = sorted(p.name for p in run.iterdir())
    assert sorted(n_ for n_ in names if n_.endswith(".nc")) == sorted(df["file"])
    assert not [n_ for n_ in names if n_.startswith(".") or n_.endswith(".tmp")], names
    # identical to the uninterrupted run: files and summary rows
    for name in df["file"]:
        _assert_same_output(run / name, ref / name)
    values = [c for c in df.columns if c not in ("skipped", "seconds")]
    pd.testing.assert_frame_equal(df[values], df_ref[values], check_exact=False, rtol=0, atol=1e-9)
    disk = pd.read_csv(run / "summary.csv", keep_default_na=False, na_values=[""])
    assert list(disk["status"]) == ["ok"] * n and list(disk["skipped"]) == list(df["skipped"])
    return df


@pytest.mark.slow
def test_synthetic_catalogue_killed_and_resumed(tmp_path, cluster):
    """20 synthetic galaxies in mosaics: kill half-way, resume, identical outputs; masses recovered."""
    from pegleg.synth import write_field

    network = _network()
    t0 = time.perf_counter()
    info = write_field(tmp_path / "field", N_SYNTH, seed=10, sedfit={"method": "fast", "network": network})
    print(f"\nsynthetic field of {N_SYNTH} galaxies written in {time.perf_counter() - t0:.1f} s")
    df = _killed_and_resumed(info["catalog"], info["config"], tmp_path, cluster, N_SYNTH)
    truth = info["truth"].set_index("id").loc[df["id"]]
    d_int = df["log_mass_integrated_p50"].to_numpy() - truth["log_stellar_mass"].to_numpy()
    d_pix = df["log_mass_pixel_sum_p50"].to_numpy() - truth["log_stellar_mass"].to_numpy()
    print("log M* recovered - true: integrated", np.round(d_int, 3), "pixel sum", np.round(d_pix, 3))
    assert np.all(np.abs(d_int) < 0.3) and np.all(np.abs(d_pix) < 0.3)
    assert abs(float(np.median(d_int))) < 0.1
    assert (df["n_bands"] == 6).all() and df["deconvolve_ok_all"].astype(bool).all()
    # pegleg's LocalCluster keeps no dask profiler history (it grew the workers' memory with N)
    from distributed import Client

    with Client(cluster) as client:
        assert set(client.run(lambda dask_worker: len(dask_worker.profile_history)).values()) == {0}


@pytest.mark.slow
@pytest.mark.realdata
def test_real_catalogue_killed_and_resumed(tmp_path, cluster, shared_data):
    """The 4 JOF galaxies (stamp folders, PSF-matched to F444W): kill half-way, resume, identical."""
    jof = shared_data / "jades-origins-field"
    rows = []
    for gid in REAL_IDS:
        src = json.loads((jof / "galaxies" / gid / "source.json").read_text())
        rows.append(f"{gid},{src['ra_deg']!r},{src['dec_deg']!r},{src['redshift_phot']!r}")
    catalog = tmp_path / "jof.csv"
    catalog.write_text("id,ra,dec,redshift\n" + "\n".join(rows) + "\n")
    config = tmp_path / "jof.toml"
    config.write_text(f'version = 1\ndata_dir = {json.dumps(str(jof))}\noutput_dir = "out"\nstamps = "galaxies"\n'
                      f'psf = "psf"\nmatch_to = "F444W"\nopen_stamps = {{matched_to = "F444W"}}\n'
                      f'[sedfit]\nmethod = "fast"\nnetwork = {json.dumps(_network())}\n')
    df = _killed_and_resumed(catalog, config, tmp_path, cluster, len(REAL_IDS))
    print("JOF log M* integrated:", dict(zip(df["id"], np.round(df["log_mass_integrated_p50"], 3))),
          "pixel sum:", dict(zip(df["id"], np.round(df["log_mass_pixel_sum_p50"], 3))))
    assert (df["n_bands"] == 19).all() and (df["stamp_size"] == 65).all()
    assert (df["n_fitted_pixels"] > 0).all()
    assert np.isfinite(df[["log_mass_integrated_p50", "log_mass_pixel_sum_p50"]].to_numpy()).all()
    # the three brighter galaxies (JOF-478 is very faint): log M* ~ 8-9, pixel sum ~ integrated
    bright = df[df["id"] != "478"]
    assert bright["log_mass_integrated_p50"].between(7.5, 10.0).all()
    assert (bright["log_mass_pixel_sum_p50"] - bright["log_mass_integrated_p50"]).abs().max() < 0.3


def test_make_synthetic_field_script(tmp_path):
    """The script writes a field that Config and read_catalog accept; it is the library
    function (same seed: identical images) and is deterministic."""
    from astropy.io import fits

    from pegleg.pipeline import read_catalog
    from pegleg.synth import write_field

    res = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "a"), "--n", "3", "--seed", "5",
                          "--bands", "F150W,F444W", "--stamp-size", "35"],
                         capture_output=True, text=True, env={**os.environ, **_ENV}, timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    assert "3 galaxies in 2 bands, mosaics 88x88 pixels" in res.stdout
    a = tmp_path / "a"
    info = write_field(tmp_path / "b", 3, seed=5, bands=["F150W", "F444W"], stamp_size=35)
    for rel in ("mosaics/F150W_sci.fits", "mosaics/F444W_sci.fits", "mosaics/F444W_err.fits", "mosaics/seg.fits",
                "psf/F444W.fits"):
        x, y = fits.getdata(a / rel), fits.getdata(tmp_path / "b" / rel)
        assert x.dtype == y.dtype and np.array_equal(x, y), rel
    sci = fits.getdata(a / "mosaics/F444W_sci.fits")
    assert sci.shape == (88, 88) and abs(float(np.std(sci[:5, :5])) - 6e-4) < 3e-4  # noise of the depth
    assert set(np.unique(fits.getdata(a / "mosaics/seg.fits"))) == {0, 1, 2, 3}
    cat = read_catalog(a / "catalog.csv")
    assert list(cat["id"]) == ["syn-0001", "syn-0002", "syn-0003"]
    assert cat["redshift"].between(1.5, 3.0).all()
    assert (a / "catalog.csv").read_text() == info["catalog"].read_text()
    config = Config.from_toml(a / "run.toml")
    assert config.stamp_size == 35 and config.match_to == "F444W" and config.sedfit == {"method": "fast"}
    assert sorted(config.mosaics) == ["F150W", "F444W"] and config.output_dir == a / "results"
    truth = pd.read_csv(a / "truth.csv")
    assert list(truth["id"]) == list(cat["id"]) and truth["log_stellar_mass"].between(9.3, 10.8).all()
    # ra/dec of the catalogue are the stamp centres (pixel y, x) through the mosaic WCS
    from astropy.wcs import WCS

    w = WCS(fits.getheader(a / "mosaics/F444W_sci.fits"))
    x, y = w.world_to_pixel_values(cat["ra"].to_numpy(), cat["dec"].to_numpy())
    np.testing.assert_allclose(np.c_[y, x], truth[["y", "x"]].to_numpy(float), atol=2e-3)  # 1e-8 deg
    # a bad argument is a clear error, exit code 2
    bad = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "c"), "--n", "2", "--stamp", "32"],
                         capture_output=True, text=True, env={**os.environ, **_ENV}, timeout=300, check=False)
    assert bad.returncode == 2 and "stamp must be an odd number" in bad.stderr
