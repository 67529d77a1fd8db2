"""Catalogue runs: peak memory and wall time for 20 and 100 synthetic galaxies.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_catalog.py [--sizes 20,100] [--workers 2] [--profiler]

For every size N a synthetic field (:func:`pegleg.synth.write_field`, seed 0, six NIRCam
bands, the ``run.toml`` it writes: 41-pixel cutouts, PSF matching to F444W, deconvolve,
calibrate_errors, ``sedfit`` method "fast") is written first; then a fresh child process
(so that its peak RSS belongs to this N alone) starts the cluster ``pegleg run``
uses, :func:`pegleg.pipeline.local_cluster` (``n_workers`` processes, one thread each,
dask's statistical profiler off; ``--profiler`` turns it back on, dask's default), and
runs :func:`pegleg.pipeline.run_catalog` on it.  Reported per N:

* wall time of ``run_catalog`` and per galaxy (cluster start-up excluded; each worker's
  first task includes its imports);
* driver peak RSS: ``VmHWM`` (``benchmarks/_rss.py``) of the child process, which also hosts the dask
  scheduler (and its RSS just before ``run_catalog``, after the cluster started);
* worker peak RSS: ``VmHWM`` of every worker process (``client.run``), their RSS
  at the end (psutil) and the number of profiler cycles they keep;

then the ratios N_max / N_min of the peaks (the acceptance criterion: < 1.2).  Peak RSS
is in MiB (2^20 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

def _worker_memory(dask_worker) -> dict[str, float]:
    """Run on a worker (``client.run``): its peak and current RSS (MiB), profiler cycles kept."""
    import psutil
    from _rss import peak_rss_mib

    return {"peak_mib": peak_rss_mib(),
            "rss_mib": psutil.Process().memory_info().rss / 2**20,
            "profile_cycles": len(dask_worker.profile_history)}


def child(field: Path, workers: int, profiler: bool = False) -> dict:
    """One catalogue run in this (fresh) process; returns the measurements."""
    from _rss import peak_rss_mib
    from distributed import Client

    from pegleg.pipeline import Config, local_cluster, run_catalog

    config = Config.from_toml(field / "run.toml")
    # run_catalog's default cluster (dask's profiler off unless --profiler)
    with local_cluster(workers, profile=profiler) as cluster, Client(cluster) as client:
        client.wait_for_workers(workers, timeout=120)
        before = peak_rss_mib()
        t0 = time.perf_counter()
        df = run_catalog(field / "catalog.csv", config, scheduler=client, progress=False)
        wall = time.perf_counter() - t0
        workers_mem = client.run(_worker_memory)
    return {"n": len(df), "ok": int((df["status"] == "ok").sum()), "wall_s": wall,
            "driver_peak_before_run_mib": before,
            "driver_peak_mib": peak_rss_mib(),
            "worker_peak_mib": [w["peak_mib"] for w in workers_mem.values()],
            "worker_rss_end_mib": [w["rss_mib"] for w in workers_mem.values()],
            "profile_cycles": [w["profile_cycles"] for w in workers_mem.values()]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20,100", help="comma-separated catalogue sizes (default 20,100)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--profiler", action="store_true",
                    help="keep dask's statistical profiler on in the workers (dask's default; "
                         "pegleg's local_cluster turns it off) to see what it costs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(Path(args.child), args.workers, args.profiler)), flush=True)
        return 0

    from pegleg.synth import write_field

    sizes = [int(s) for s in args.sizes.split(",")]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_catalog_") as tmp:
        for n in sizes:
            t0 = time.perf_counter()
            info = write_field(Path(tmp) / f"field{n}", n, seed=0)
            print(f"N = {n}: field {info['shape'][0]}x{info['shape'][1]} pixels x {len(info['bands'])} bands "
                  f"written in {time.perf_counter() - t0:.1f} s", flush=True)
        for n in sizes:
            out = subprocess.run([sys.executable, __file__, "--child", str(Path(tmp) / f"field{n}"),
                                  "--workers", str(args.workers)] + (["--profiler"] if args.profiler else []),
                                 capture_output=True, text=True, check=False)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                print(out.stdout[-3000:], out.stderr[-3000:], sep="\n")
                return 1
            r = results[n] = json.loads(line[0][len("RESULT "):])
            print(f"N = {n:4d}: {r['ok']}/{r['n']} ok, {r['wall_s']:.1f} s ({r['wall_s'] / n:.2f} s/galaxy "
                  f"on {args.workers} workers); driver peak RSS {r['driver_peak_mib']:.0f} MiB "
                  f"({r['driver_peak_before_run_mib']:.0f} before the run); worker peak RSS "
                  + ", ".join(f"{m:.0f}" for m in r["worker_peak_mib"]) + " MiB (at the end "
                  + ", ".join(f"{m:.0f}" for m in r["worker_rss_end_mib"]) + f"; profile cycles kept "
                  f"{max(r['profile_cycles'])})", flush=True)
    lo, hi = min(sizes), max(sizes)
    if lo != hi:
        d = results[hi]["driver_peak_mib"] / results[lo]["driver_peak_mib"]
        w = max(results[hi]["worker_peak_mib"]) / max(results[lo]["worker_peak_mib"])
        print(f"peak RSS ratio N={hi} / N={lo}: driver {d:.3f}, workers (max) {w:.3f}"
              f" -> {'OK' if max(d, w) < 1.2 else 'GROWS'} (criterion < 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
