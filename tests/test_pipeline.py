"""Catalogue runs (pegleg.pipeline, ``pegleg run``) on synthetic mosaics.

Three physical synthetic galaxies (z = 2, six NIRCam bands) are pasted into 120x120
mosaics with a TAN WCS (0.03"/px), noise and a shared segmentation map
(:func:`pegleg.synth.write_field`); the catalogue adds a fourth row outside the mosaics.
One LocalCluster (2 worker processes) serves the whole module.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pegleg
from pegleg import FileFormatError, SchemaError
from pegleg.cli import main
from pegleg.pipeline import Config, read_catalog, run_catalog, safe_id

pytest.importorskip("distributed")

BANDS = ["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"]
SCALE = 0.03
MOSAIC = (120, 120)
CENTRES = [(30, 30), (30, 88), (88, 58)]  # (y, x) of each pasted 49x49 stamp's centre pixel
DISK_MASS = [9.9, 9.6, 10.2]
IDS = ["gal-1", "gal-2", "JADES:gal 3"]    # the last one needs sanitising
DEPTH = 6e-4  # uJy per pixel
TINY_NETWORK = Path("/work/training/npe_tiny_test.npz")


def _network() -> str:
    """The bundled posterior network when it exists, else the small test network."""
    from pegleg.sed import load_posterior_network

    try:
        load_posterior_network("default")
        return "default"
    except pegleg.PeglegError:
        pass
    if TINY_NETWORK.is_file():
        return str(TINY_NETWORK)
    pytest.skip("no posterior network: neither the bundled default nor the test network exists")


def _make_field(root: Path) -> dict[str, list[float]]:
    """Mosaics, PSFs and catalogue under ``root`` (:func:`pegleg.synth.write_field`); returns the
    truths (log M*, half-mass and F444W r50)."""
    from pegleg import synth

    galaxies = [{"id": gid, "y": cy, "x": cx, "redshift": 2.0, "disk": {"log_mass": m}}
                for gid, (cy, cx), m in zip(IDS, CENTRES, DISK_MASS)]
    info = synth.write_field(root, galaxies=galaxies, bands=BANDS, mosaic_shape=MOSAIC, pixel_scale=SCALE,
                             depth=DEPTH, seed=42, extra_rows=[("outside", -400, -400, 2.0)],  # far outside
                             stamp=49,  # rendered (and tapered to zero) within 22 px of the centre
                             config=None)
    catalog = root / "catalog.csv"
    lines = catalog.read_text().splitlines()
    lines[0] = "ID,RA,Dec,Redshift"  # upper-case column names on purpose
    catalog.write_text("\n".join(lines) + "\n")
    truth = info["truth"]
    return {"log_mass": list(truth["log_stellar_mass"]), "r50_mass": list(truth["r50_mass_arcsec"]),
            "r50_f444w": list(truth["r50_F444W_arcsec"])}


def _mosaic_tables() -> str:
    return "\n".join(f'[mosaics.{b}]\nsci = "mosaics/{b}_sci.fits"\nerr = "mosaics/{b}_err.fits"\n'
                     f'seg = "mosaics/seg.fits"\n' for b in BANDS)


def _toml(network: str, output_dir: str = "out", extra: str = "", sedfit_extra: str = "") -> str:
    return (f'version = 1\ndata_dir = "data"\noutput_dir = "{output_dir}"\npsf = "psf"\nstamp_size = 41\n'
            f'match_to = "F444W"\ncalibrate_errors = true\n{extra}\n'
            f'[sedfit]\nmethod = "fast"\nnetwork = "{network}"\n{sedfit_extra}\n' + _mosaic_tables())


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    truths = _make_field(root / "data")
    network = _network()
    (root / "config.toml").write_text(_toml(network))
    return {"root": root, "truths": truths, "network": network, "catalog": root / "data" / "catalog.csv",
            "config": root / "config.toml"}


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    c = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    yield c
    c.close()


@pytest.fixture(scope="module")
def first_run(field, cluster):
    t0 = time.perf_counter()
    df = run_catalog(field["catalog"], field["config"], scheduler=cluster, progress=False)
    return df, time.perf_counter() - t0


def _values(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["skipped"]).reset_index(drop=True)


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------
def test_run_catalog(field, first_run):
    df, seconds = first_run
    print(f"\nfirst run (3 galaxies + 1 bad row, 2 workers, cluster running): {seconds:.1f} s")
    assert list(df["id"]) == IDS + ["outside"]
    ok = df[df["status"] == "ok"]
    assert len(ok) == 3 and not ok["skipped"].any()
    for col in ("log_mass_integrated_p50", "log_mass_pixel_sum_p50", "log_sfr100_integrated_p50",
                "log_sfr100_pixel_sum_p50", "mass_difference_dex", "r50_arcsec", "half_mass_radius_arcsec",
                "median_reduced_chi2", "sky_ok_fraction"):
        assert np.isfinite(ok[col]).all(), col
    # pixel sum vs integrated: the recorded difference is the difference of the medians
    np.testing.assert_allclose(ok["mass_difference_dex"],
                               ok["log_mass_pixel_sum_p50"] - ok["log_mass_integrated_p50"], atol=1e-9)
    assert (ok["log_mass_integrated_p16"] <= ok["log_mass_integrated_p50"]).all()
    assert (ok["log_mass_integrated_p50"] <= ok["log_mass_integrated_p84"]).all()
    # real numbers: stellar masses near the truth of the synthetic galaxies
    truth = {k: np.array(v) for k, v in field["truths"].items()}
    truths = truth["log_mass"]
    print("true log M*:", np.round(truths, 3), " integrated:", np.round(ok["log_mass_integrated_p50"].values, 3),
          " pixel sum:", np.round(ok["log_mass_pixel_sum_p50"].values, 3))
    print("true half-mass radius:", np.round(truth["r50_mass"], 4), " recovered:",
          np.round(ok["half_mass_radius_arcsec"].values, 4), list(ok["half_mass_method"]))
    print("true F444W r50:", np.round(truth["r50_f444w"], 4), " recovered:", np.round(ok["r50_arcsec"].values, 4))
    assert np.all(np.abs(ok["log_mass_integrated_p50"].values - truths) < 0.3)
    assert np.all(np.abs(ok["log_mass_pixel_sum_p50"].values - truths) < 0.3)
    assert np.all(np.abs(ok["mass_difference_dex"]) < 0.2)
    assert ok["deconvolve_ok_all"].astype(bool).all() and (ok["n_bands"] == 6).all()
    assert (ok["reference_band"] == "F444W").all()
    np.testing.assert_allclose(ok["r50_arcsec"], truth["r50_f444w"], rtol=0.2)
    np.testing.assert_allclose(ok["half_mass_radius_arcsec"], truth["r50_mass"], rtol=0.25)
    assert ok["half_mass_method"].str.startswith(("mass_profile", "radial_profile")).all()
    # the bad row failed without stopping the run
    bad = df[df["id"] == "outside"].iloc[0]
    assert bad["status"] == "error" and "outside the image" in bad["error"] and "\n" not in bad["error"]
    assert not np.isfinite(bad["log_mass_integrated_p50"])
    # files: sanitised names, readable, complete
    out = field["root"] / "out"
    assert list(ok["file"]) == ["gal-1.nc", "gal-2.nc", "JADES_gal_3.nc"]
    assert sorted(p.name for p in out.glob("*.nc")) == sorted(ok["file"])
    assert not list(out.glob(".*"))  # no temporary files left
    ds = pegleg.open_dataset(out / "JADES_gal_3.nc")
    steps = [s["step"] for s in ds.pegleg.history]
    assert steps[-5:] == ["psf_match", "deconvolve", "calibrate_errors", "sedfit", "pipeline"]
    assert ds.attrs["source_id"] == "JADES:gal 3" and ds.sizes["y"] == 41
    assert float(ds.attrs["sedfit_mass_difference_dex"]) == pytest.approx(ok["mass_difference_dex"].iloc[2])
    # the summary on disk is the returned table
    disk = pd.read_csv(out / "summary.csv", keep_default_na=False, na_values=[""])
    assert list(disk.columns) == list(df.columns) and len(disk) == 4
    np.testing.assert_allclose(disk["log_mass_integrated_p50"], df["log_mass_integrated_p50"], rtol=1e-12)


def test_resume(field, cluster, first_run):
    df1, first_seconds = first_run
    out = field["root"] / "out"
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nc")}
    t0 = time.perf_counter()
    # max_in_flight=1: one task at a time, the rest submitted as results come in
    df2 = run_catalog(field["catalog"], field["config"], scheduler=cluster, progress=False, max_in_flight=1)
    resume_seconds = time.perf_counter() - t0
    print(f"\nresume (all done): {resume_seconds:.2f} s vs first run {first_seconds:.1f} s")
    ok2 = df2[df2["status"] == "ok"]
    assert ok2["skipped"].all() and len(ok2) == 3
    assert df2.loc[df2["id"] == "outside", "status"].item() == "error"  # failures are retried
    # identical values, recomputed from the files (the failed row is retried: only its time differs)
    pd.testing.assert_frame_equal(_values(df2).drop(columns="seconds"), _values(df1).drop(columns="seconds"))
    pd.testing.assert_series_equal(df2["seconds"][:3], df1["seconds"][:3])
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.nc")} == mtimes  # nothing rewritten
    # delete one output: only that galaxy is recomputed
    (out / "gal-2.nc").unlink()
    df3 = run_catalog(field["catalog"], field["config"], scheduler=cluster, progress=False, max_in_flight=3)
    assert list(df3["skipped"]) == [True, False, True, False]
    assert (out / "gal-2.nc").is_file()
    cols = [c for c in df1.columns if c.startswith(("log_", "mass_", "sfr_", "r50", "half_mass_radius"))]
    np.testing.assert_allclose(df3.loc[1, cols].astype(float), df1.loc[1, cols].astype(float), rtol=0, atol=1e-9)
    # resume=False recomputes (one galaxy, to save time)
    df4 = run_catalog(read_catalog(field["catalog"]).iloc[[2]], field["config"], scheduler=cluster,
                      progress=False, resume=False)
    assert list(df4["skipped"]) == [False] and df4["status"].item() == "ok"
    # an unreadable (truncated) file is recomputed, not trusted
    (out / "gal-1.nc").write_bytes(b"CDF\x01 truncated")
    df5 = run_catalog(field["catalog"], field["config"], scheduler=cluster, progress=False)
    assert list(df5["skipped"]) == [False, True, True, False]
    pegleg.open_dataset(out / "gal-1.nc")


def test_cli_run(field, cluster, tmp_path, capsys):
    out = tmp_path / "cli_out"
    lines = field["catalog"].read_text().splitlines()
    catalog = tmp_path / "two.csv"
    catalog.write_text("\n".join([lines[0], lines[1], lines[-1]]) + "\n")  # gal-1 and the bad row
    code = main(["run", str(catalog), "--config", str(field["config"]), "--out", str(out),
                 "--scheduler", cluster.scheduler_address, "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "1 ok" in text and "1 failed" in text
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["status"]) == ["ok", "error"]
    assert (out / "gal-1.nc").is_file()
    # bad inputs: exit code 2 with the message, no traceback
    bad = tmp_path / "bad.toml"
    bad.write_text(field["config"].read_text().replace("stamp_size = 41", "stamp_size = 41\nstamp_sise = 3"))
    assert main(["run", str(field["catalog"]), "--config", str(bad), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "stamp_sise" in err and "Traceback" not in err
    cat = tmp_path / "cat.csv"
    cat.write_text("id,ra,dec\n1,150.1,2.2\n")
    assert main(["run", str(cat), "--config", str(field["config"]), "--out", str(out), "--quiet"]) == 2
    assert "missing column(s) ['redshift']" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.csv"), "--config", str(field["config"]), "--quiet"]) == 2
    assert main(["run", str(field["catalog"]), "--config", str(tmp_path / "nope.toml"), "--quiet"]) == 2


@pytest.mark.slow
def test_default_local_cluster(field, tmp_path):
    """scheduler=None starts (and closes) its own LocalCluster; a single-row catalogue."""
    cat = read_catalog(field["catalog"]).iloc[[0]]
    config = Config.from_toml(field["config"]).with_output_dir(tmp_path / "own")
    df = run_catalog(cat, config, n_workers=1, progress=False)
    assert list(df["status"]) == ["ok"] and (tmp_path / "own" / "gal-1.nc").is_file()


def _write_stamps(folder: Path, obs) -> None:
    """``folder/<BAND>.fits`` (SCI, ERR, SEG extensions) from a synthetic observation."""
    from astropy.io import fits

    folder.mkdir(parents=True, exist_ok=True)
    for b in BANDS:
        d = obs.sel(band=b)
        hdr = fits.Header({"BUNIT": "uJy"})
        fits.HDUList([fits.PrimaryHDU(),
                      fits.ImageHDU(d["image"].values, hdr, name="SCI"),
                      fits.ImageHDU(d["error"].values, hdr, name="ERR"),
                      fits.ImageHDU(obs["segmentation"].values.astype(np.int32), name="SEG")]).writeto(folder / f"{b}.fits")


def _stamps_toml(network: str) -> str:
    return (f'version = 1\ndata_dir = "data"\noutput_dir = "out"\npsf = "psf"\nstamps = "stamps"\n'
            f'open_stamps = {{pixel_scale = {SCALE}}}\n[sedfit]\nmethod = "fast"\nnetwork = "{network}"\n')


def test_stamp_folders_in_process(field, tmp_path):
    """``stamps = <folder>`` of per-galaxy folders, process_galaxy called directly (no dask)."""
    from pegleg import synth
    from pegleg.pipeline import process_galaxy

    data = tmp_path / "data"
    folder = data / "stamps" / "gal_9"  # the sanitised id
    folder.mkdir(parents=True)
    shutil.copytree(field["root"] / "data" / "psf", data / "psf")
    obs, truth = synth.galaxy(BANDS, shape=(41, 41), physical=True, redshift=2.0, seed=9, depth=DEPTH)
    _write_stamps(folder, obs)
    config = Config.from_toml(_write(tmp_path, _stamps_toml(field["network"])))
    (tmp_path / "out").mkdir()
    row = {"id": "gal 9", "ra": 0.0, "dec": 0.0, "redshift": 2.0}
    res = process_galaxy(row, config)
    assert res["status"] == "ok", res["error"]
    assert res["file"] == "gal_9.nc" and res["stamp_size"] == 41 and not res["skipped"]
    assert abs(res["log_mass_integrated_p50"] - float(truth.attrs["log_stellar_mass_total"])) < 0.3
    again = process_galaxy(row, config, resume=True)
    assert again["skipped"] and {k: v for k, v in again.items() if k != "skipped"} == pytest.approx(
        {k: v for k, v in res.items() if k != "skipped"}, nan_ok=True)
    missing = process_galaxy({**row, "id": "gal 10"}, config)
    assert missing["status"] == "error" and "gal_10" in missing["error"]
    # register = true: the bands are aligned to the reference band first (a no-op here: the
    # synthetic bands are aligned, so the fit barely changes)
    text = _stamps_toml(field["network"]).replace('output_dir = "out"', 'output_dir = "out_reg"\nregister = true')
    reg = Config.from_toml(_write(tmp_path, text))
    (tmp_path / "out_reg").mkdir()
    res2 = process_galaxy(row, reg, resume=False)
    assert res2["status"] == "ok", res2["error"]
    ds = pegleg.open_dataset(tmp_path / "out_reg" / "gal_9.nc")
    steps = [h["step"] for h in ds.pegleg.history]
    assert steps.index("register") < steps.index("deconvolve")
    assert np.all(np.abs(ds["shift_x"].values) < 0.2) and np.all(np.abs(ds["shift_y"].values) < 0.2)
    assert abs(res2["log_mass_integrated_p50"] - res["log_mass_integrated_p50"]) < 0.05


def test_photometric_redshift_when_the_catalogue_has_none(field, tmp_path):
    """A row with no redshift: the stamp's integrated photometry gives a photo-z (measured:
    peak 2.15 for the z = 2 synthetic galaxy, 16-84% 1.56-2.33; integrated log M* 10.23 vs
    10.19 true), and the pixels are fitted there."""
    from pegleg import synth
    from pegleg.pipeline import process_galaxy

    data = tmp_path / "data"
    folder = data / "stamps" / "gal_9"
    folder.mkdir(parents=True)
    shutil.copytree(field["root"] / "data" / "psf", data / "psf")
    obs, truth = synth.galaxy(BANDS, shape=(41, 41), physical=True, redshift=2.0, seed=9, depth=DEPTH)
    _write_stamps(folder, obs)
    text = _stamps_toml(field["network"]) + '\n[photo_z]\nn_draws = 512\n'
    config = Config.from_toml(_write(tmp_path, text))
    assert config.photo_z == {"n_draws": 512}
    (tmp_path / "out").mkdir()
    res = process_galaxy({"id": "gal 9", "ra": 0.0, "dec": 0.0, "redshift": float("nan")}, config)
    assert res["status"] == "ok", res["error"]
    assert res["redshift_source"] == "photo-z"
    assert abs(res["redshift"] - 2.0) < 0.3 and res["photo_z_p16"] <= res["redshift"] <= res["photo_z_p84"]
    assert abs(res["log_mass_integrated_p50"] - float(truth.attrs["log_stellar_mass_total"])) < 0.3
    ds = pegleg.open_dataset(tmp_path / "out" / "gal_9.nc")
    assert ds.attrs["redshift"] == res["redshift"] and ds.pegleg.history[-2]["parameters"]["redshift"] == res["redshift"]
    # a catalogue redshift is used as it is
    res2 = process_galaxy({"id": "gal 9", "ra": 0.0, "dec": 0.0, "redshift": 2.0}, config, resume=False)
    assert res2["redshift_source"] == "catalogue" and res2["redshift"] == 2.0 and np.isnan(res2["photo_z_p16"])
    for bad, match in (("z_grid = [1.0, 2.0]", "not configurable"), ("n_walkers = 3", "unknown option")):
        with pytest.raises(SchemaError, match=match):
            Config.from_toml(_write(tmp_path, _stamps_toml(field["network"]) + f"\n[photo_z]\n{bad}\n"))


# ---------------------------------------------------------------------------
# faults: a worker killed mid-task, unreadable input, a failing write, an interrupted run
# ---------------------------------------------------------------------------
def _write_fault(target: str, kind: str, marker: str = ""):
    """A function for ``client.run`` that makes the workers' NetCDF writes of ``target`` fail.

    The real temporary file is written, cut to 100 bytes (a partial file), and then
    ``kind="kill"``: the worker process dies (``os._exit``) -- once: the first attempt
    creates ``marker``, later attempts write normally; ``kind="nospace"``: ``OSError``
    ENOSPC, every time.  Nested so that cloudpickle ships it by value to the workers.
    """
    def install():
        import errno
        import os
        from pathlib import Path

        import pegleg.io.atomic as A

        orig = A.__dict__.setdefault("_test_original_atomic_write", A.atomic_write)

        def atomic_write(path, write):
            if Path(path).name != target:
                return orig(path, write)

            def partial(tmp):
                write(tmp)
                if kind == "kill" and os.path.exists(marker):
                    return  # the retry: a normal write
                with open(tmp, "r+b") as f:
                    f.truncate(100)
                if kind == "kill":
                    Path(marker).touch()
                    os._exit(1)
                raise OSError(errno.ENOSPC, "No space left on device", tmp)

            return orig(path, partial)

        A.atomic_write = atomic_write

    return install


def _remove_faults():
    import pegleg.io.atomic as A

    A.atomic_write = A.__dict__.pop("_test_original_atomic_write", A.atomic_write)


def _on_workers(cluster, func):
    from distributed import Client

    with Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        return client.run(func)


def _no_leftovers(out: Path, written: list[str]) -> None:
    """Only complete outputs (and the summary) in ``out``: no temporary or partial files."""
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.endswith(".tmp") or n.startswith(".")], names
    assert sorted(n for n in names if n.endswith(".nc")) == sorted(written), names
    for name in written:
        ds = pegleg.open_dataset(out / name)
        assert "sedfit" in [s["step"] for s in ds.pegleg.history]


_COMPARE = ["log_mass_integrated_p16", "log_mass_integrated_p50", "log_mass_integrated_p84",
            "log_mass_pixel_sum_p50", "log_sfr100_integrated_p50", "log_sfr100_pixel_sum_p50",
            "mass_difference_dex", "sfr_difference_dex", "r50_arcsec", "half_mass_radius_arcsec",
            "median_reduced_chi2", "n_fitted_pixels", "sky_ok_fraction", "qa_ok_fraction"]


def _same_as_first_run(df: pd.DataFrame, first: pd.DataFrame) -> None:
    ref = first.set_index("id").loc[list(df["id"])]
    assert list(df["status"]) == list(ref["status"])
    ok = (df["status"] == "ok").values
    np.testing.assert_allclose(df.loc[ok, _COMPARE].astype(float).values,
                               ref.loc[ok, _COMPARE].astype(float).values, rtol=0, atol=1e-9)


def test_worker_killed_while_writing(field, cluster, first_run, tmp_path):
    """A worker process dies mid-task (while writing gal-2.nc): dask retries the galaxy on
    another worker, the run completes, the killed attempt's partial temporary file is gone."""
    out = tmp_path / "killed"
    config = Config.from_toml(field["config"]).with_output_dir(out)
    marker = tmp_path / "killed-once"
    _on_workers(cluster, _write_fault("gal-2.nc", "kill", str(marker)))
    try:
        t0 = time.perf_counter()
        df = run_catalog(field["catalog"], config, scheduler=cluster, progress=False)
        print(f"\nrun with a worker killed mid-write: {time.perf_counter() - t0:.1f} s")
    finally:
        _on_workers(cluster, _remove_faults)  # the restarted worker never had it
    assert marker.is_file()  # the worker really died
    assert list(df["status"]) == ["ok", "ok", "ok", "error"] and not df["skipped"].any()
    assert (df["error"][:3].fillna("") == "").all() and "outside the image" in df["error"].iloc[3]
    _same_as_first_run(df, first_run[0])
    _no_leftovers(out, ["gal-1.nc", "gal-2.nc", "JADES_gal_3.nc"])
    disk = pd.read_csv(out / "summary.csv")
    assert list(disk["status"]) == list(df["status"])


@pytest.fixture(scope="module")
def stamp_dir(field, tmp_path_factory):
    """Stamp folders (``stamps = "stamps"``): 'good', 'corrupt' (one band file is garbage)
    and 'nospace' (fine inputs; its write is made to fail)."""
    from pegleg import synth

    root = tmp_path_factory.mktemp("stamp_faults")
    shutil.copytree(field["root"] / "data" / "psf", root / "data" / "psf")
    obs, _ = synth.galaxy(BANDS, shape=(41, 41), physical=True, redshift=2.0, seed=9, depth=DEPTH)
    for gid in ("good", "corrupt", "nospace"):
        _write_stamps(root / "data" / "stamps" / gid, obs)
    bad = root / "data" / "stamps" / "corrupt" / "F150W.fits"
    bad.write_bytes(bad.read_bytes()[:1000] + b"\x00garbage" * 50)  # truncated, then junk
    (root / "config.toml").write_text(_stamps_toml(field["network"]))
    return root


def _stamp_catalog(root: Path, ids: list[str]) -> Path:
    p = root / f"{'_'.join(ids)}.csv"
    p.write_text("id,ra,dec,redshift\n" + "".join(f"{i},0.0,0.0,2.0\n" for i in ids))
    return p


def test_unreadable_input(stamp_dir, cluster):
    """A corrupted stamp file makes that galaxy an error row (with the file in the message)."""
    out = stamp_dir / "out_input"
    config = Config.from_toml(stamp_dir / "config.toml").with_output_dir(out)
    df = run_catalog(_stamp_catalog(stamp_dir, ["good", "corrupt"]), config, scheduler=cluster, progress=False)
    assert list(df["status"]) == ["ok", "error"]
    err = df["error"].iloc[1]
    print("\nunreadable input:", err)
    assert "F150W" in err and "\n" not in err
    _no_leftovers(out, ["good.nc"])


def test_output_write_failure(stamp_dir, cluster):
    """OSError (no space left) while writing one galaxy: an error row, no partial file."""
    out = stamp_dir / "out_write"
    config = Config.from_toml(stamp_dir / "config.toml").with_output_dir(out)
    _on_workers(cluster, _write_fault("nospace.nc", "nospace"))
    try:
        df = run_catalog(_stamp_catalog(stamp_dir, ["good", "nospace"]), config, scheduler=cluster,
                         progress=False)
    finally:
        _on_workers(cluster, _remove_faults)
    assert list(df["status"]) == ["ok", "error"]
    assert df["error"].iloc[1].startswith("OSError:") and "No space left" in df["error"].iloc[1]
    _no_leftovers(out, ["good.nc"])
    # the next run (the disk has room again) writes it
    df2 = run_catalog(_stamp_catalog(stamp_dir, ["good", "nospace"]), config, scheduler=cluster, progress=False)
    assert list(df2["status"]) == ["ok", "ok"] and list(df2["skipped"]) == [True, False]
    _no_leftovers(out, ["good.nc", "nospace.nc"])


def test_interrupted_run_resumes(field, cluster, first_run, tmp_path, monkeypatch):
    """Ctrl-C after the first finished galaxy (one task in flight at a time); the re-run
    computes only what is missing and the outputs equal those of an uninterrupted run."""
    import pegleg.pipeline as P

    out = tmp_path / "interrupted"
    config = Config.from_toml(field["config"]).with_output_dir(out)

    def say(progress, text):
        if text.startswith("[1/"):
            raise KeyboardInterrupt

    monkeypatch.setattr(P, "_say", say)
    with pytest.raises(KeyboardInterrupt):
        run_catalog(field["catalog"], config, scheduler=cluster, progress=True, max_in_flight=1)
    monkeypatch.undo()
    partial = pd.read_csv(out / "summary.csv")  # written on the way out
    assert list(partial["status"]) == ["ok", "pending", "pending", "pending"]
    # the task in flight at the interruption cannot be stopped: wait until the workers are idle
    from distributed import Client

    with Client(cluster) as client:
        deadline = time.monotonic() + 60
        while any(client.run(lambda dask_worker: dask_worker.state.executing_count).values()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nc")}
    assert "gal-1.nc" in before
    files = ["gal-1.nc", "gal-2.nc", "JADES_gal_3.nc"]
    df = run_catalog(field["catalog"], config, scheduler=cluster, progress=False)
    assert list(df["status"]) == ["ok", "ok", "ok", "error"]
    assert list(df["skipped"][:3]) == [f in before for f in files]  # only the missing ones computed
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in out.glob("*.nc")) if n in before} == before
    _same_as_first_run(df, first_run[0])
    _no_leftovers(out, files)


# ---------------------------------------------------------------------------
# configuration, catalogue and path safety (no cluster)
# ---------------------------------------------------------------------------
def _write(root: Path, text: str, name: str = "c.toml") -> Path:
    p = root / name
    p.write_text(text)
    return p


def test_config_defaults_and_toml(field):
    c = Config.from_toml(field["config"])
    assert c.data_dir == field["root"] / "data" and c.output_dir == field["root"] / "out"
    assert c.stamp_size == 41 and c.match_to == "F444W" and c.calibrate_errors is True
    assert c.mosaics["F444W"]["seg"] == field["root"] / "data" / "mosaics" / "seg.fits"
    assert c.sedfit["method"] == "fast"
    d = Config(mosaics={"F444W": str(field["root"] / "data" / "mosaics" / "F444W_sci.fits")},
               data_dir=field["root"] / "data")
    assert d.stamp_size == 65 and d.match_to == "F444W" and d.calibrate_errors and d.deconvolve == {}
    assert d.register is False
    assert len(c.digest()) == 12 and c.digest() == Config.from_toml(field["config"]).digest()


def test_config_errors(field):
    root = field["root"]
    net = field["network"]
    base = _toml(net)
    cases = {
        "unknown key": (base.replace("stamp_size = 41", "stamp_size = 41\ncolour = 1"), SchemaError, "colour"),
        "no version": (base.replace("version = 1\n", ""), SchemaError, "version"),
        "version 2": (base.replace("version = 1", "version = 2"), SchemaError, "version"),
        "type": (base.replace("stamp_size = 41", 'stamp_size = "41"'), SchemaError, "stamp_size"),
        "bool type": (base.replace("calibrate_errors = true", "calibrate_errors = 1"), SchemaError,
                      "calibrate_errors"),
        "register type": (base.replace("calibrate_errors = true", 'calibrate_errors = true\nregister = "yes"'),
                          SchemaError, "register"),
        "step option": (base + "\n[deconvolve]\nsky_modle = 'flat'\n", SchemaError, "sky_modle"),
        "option type": (base.replace('method = "fast"', 'method = "fast"\nn_draws = "many"'), SchemaError,
                        "n_draws"),
        "redshift in sedfit": (base.replace('method = "fast"', 'method = "fast"\nredshift = 1.0'), SchemaError,
                               "catalogue"),
        "match_to unknown": (base.replace('match_to = "F444W"', 'match_to = "F999W"'), SchemaError, "F999W"),
        "missing mosaic": (base.replace("F115W_err.fits", "F115W_nope.fits"), FileFormatError, "F115W_nope"),
        "both inputs": (base.replace("stamp_size = 41", 'stamp_size = 41\nstamps = "mosaics"'), SchemaError,
                        "exactly one"),
        "not toml": ("version = = 1", SchemaError, "TOML"),
    }
    for name, (text, exc, match) in cases.items():
        with pytest.raises(exc, match=match):
            Config.from_toml(_write(root, text))
    assert Config.from_toml(_write(root, base.replace('match_to = "F444W"', "match_to = false"))).match_to is None


def test_path_safety(field, tmp_path):
    root = field["root"]
    net = field["network"]
    outside = tmp_path / "elsewhere.fits"
    outside.write_bytes(b"")
    escapes = {
        "output_dir ..": _toml(net, output_dir="../escaped"),
        "output_dir nested ..": _toml(net, output_dir="out/../../escaped"),
        "data_dir ..": _toml(net).replace('data_dir = "data"', 'data_dir = "data/../.."'),
        "mosaic ..": _toml(net).replace('"mosaics/F115W_sci.fits"', '"../config.toml"'),
        "mosaic absolute outside": _toml(net).replace('"mosaics/F115W_sci.fits"', f'"{outside}"'),
        "psf ..": _toml(net).replace('psf = "psf"', 'psf = "../../psf"'),
        "network not npz": _toml(net).replace(f'network = "{net}"', f'network = "{root / "config.toml"}"'),
        "network relative ..": _toml(net).replace(f'network = "{net}"', 'network = "../x.npz"'),
    }
    for name, text in escapes.items():
        with pytest.raises(SchemaError):
            Config.from_toml(_write(root, text))
    # a symbolic link inside data_dir that points outside is an escape too
    link = root / "data" / "link.fits"
    if not link.exists():
        link.symlink_to(outside)
    with pytest.raises(SchemaError, match="outside"):
        Config.from_toml(_write(root, _toml(net).replace('"mosaics/F115W_sci.fits"', '"link.fits"')))
    # an absolute path inside data_dir is fine, and a missing .npz model file is reported
    ok = _toml(net).replace('"mosaics/F115W_sci.fits"', f'"{root / "data" / "mosaics" / "F115W_sci.fits"}"')
    Config.from_toml(_write(root, ok))
    with pytest.raises(FileFormatError, match="does not exist"):
        Config.from_toml(_write(root, _toml(net).replace(f'network = "{net}"', 'network = "/no/such/net.npz"')))
    # ids
    assert safe_id("JADES:gal 3") == "JADES_gal_3" and safe_id(" 12 ") == "12" and safe_id("a.b-c_d") == "a.b-c_d"
    for bad in ("../etc/passwd", "a/b", "..", "a\\b", "", ".hidden", "x..y"):
        with pytest.raises(SchemaError):
            safe_id(bad)
    cfg = Config.from_toml(field["config"])
    assert cfg.output_path("JADES:gal 3") == cfg.output_dir / "JADES_gal_3.nc"
    with pytest.raises(SchemaError, match="path separator"):
        cfg.output_path("../../x")
    cat = tmp_path / "evil.csv"
    cat.write_text("id,ra,dec,redshift\n../../evil,150.1,2.2,2.0\n")
    with pytest.raises(SchemaError, match="row 1"):
        read_catalog(cat)
    cat.write_text("id,ra,dec,redshift\na b,150.1,2.2,2.0\na_b,150.1,2.2,2.0\n")
    with pytest.raises(SchemaError, match="unique"):
        read_catalog(cat)


def test_read_catalog(tmp_path):
    from astropy.table import Table

    p = tmp_path / "c.csv"
    p.write_text("Id, RA ,DEC,redshift,Size,extra\n7,150.1,2.2,1.5,3.2,x\n8,150.2,2.3,2.5,,y\n")
    df = read_catalog(p)
    assert list(df.columns[:5]) == ["id", "ra", "dec", "redshift", "size"] and list(df["id"]) == ["7", "8"]
    assert df["size"].iloc[0] == 3.2 and np.isnan(df["size"].iloc[1]) and list(df["extra"]) == ["x", "y"]
    f = tmp_path / "c.fits"
    Table({"ID": [1, 2], "Ra": [150.1, 150.2], "dec": [2.2, 2.3], "REDSHIFT": [1.0, 2.0]}).write(f)
    df = read_catalog(f)
    assert list(df["id"]) == ["1", "2"] and df["redshift"].tolist() == [1.0, 2.0] and df["size"].isna().all()
    p.write_text("id,ra,dec,redshift\n1,150.1,abc,1.0\n")
    with pytest.raises(SchemaError, match=r"column 'dec', row 1 \(id '1'\): 'abc'"):
        read_catalog(p)
    # an empty redshift means "unknown": the pipeline finds a photometric one
    p.write_text("id,ra,dec,redshift\n1,150.1,2.2,\n2,150.1,2.2,NaN\n")
    assert read_catalog(p)["redshift"].isna().all()
    p.write_text("id,ra,dec,redshift\n1,150.1,2.2,z?\n")
    with pytest.raises(SchemaError, match="redshift"):
        read_catalog(p)
    p.write_text("name,ra,dec,redshift\n1,150.1,2.2,1\n")
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['id'\]"):
        read_catalog(p)
    p.write_text("id,ra,dec,redshift\n")
    with pytest.raises(SchemaError, match="no rows"):
        read_catalog(p)
    with pytest.raises(FileFormatError, match="not found"):
        read_catalog(tmp_path / "missing.csv")


def test_stamp_size_from_catalogue(field):
    from pegleg.pipeline import _stamp_size

    c = Config.from_toml(field["config"])
    assert _stamp_size({"size": None}, c) == 41
    assert _stamp_size({"size": 10.0}, c) == 41 and _stamp_size({"size": 10.3}, c) == 43
    assert _stamp_size({"size": 1.0}, c) == 15
