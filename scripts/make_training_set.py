#!/usr/bin/env python
"""Generate the SED-emulator training set with the exact reference (pegleg.sed.sps).

N prior draws (``pegleg.sed.sps.sample_prior(N, seed)``, so the set is deterministic)
are split into chunks of ``--chunk`` models; each chunk is written as
``chunk_NNNNN.npz`` with

* ``params`` (n, P) in ``param_names`` order, ``param_names``;
* ``mags`` (n, F) AB magnitudes in ``filters`` (every pegleg filter with an
  astro-sedpy curve, by default), ``filters``;
* one (n,) array per derived quantity (``log_stellar_mass``, ``log_mass_formed``,
  ``log_sfr100``, ``log_sfr10``, ``log_age_mw``, ``av``), listed in ``derived_names``;
* ``index`` (n,) row numbers in the full draw.

With ``--bins`` it writes the training set of the SFH-bin emulator instead
(:func:`pegleg.sed.sps.bin_photometry`): a scrambled Sobol sequence over redshift,
metallicity, A_V, delta, eta and log U (uniform within the bounds; ``log_mass_formed``
= 10 and ``dsfr*`` = 0 play no role), and per chunk ``bin_flux`` (n, 7, F) -- uJy
per solar mass formed in each bin alone -- and ``surviving`` (n, 7), the surviving
fraction of each bin.  Every model costs seven bagpipes updates.  ``--split-dust`` (with
``--bins``) writes ``bin_flux`` WITHOUT the dust re-emission and adds ``dust_lum`` (n, 7),
the luminosity each bin's dust absorbs (Lsun per solar mass formed), which the
emulator re-emits exactly (:mod:`pegleg.sed.components`).

Chunks are written atomically (temporary file + rename) and complete chunks are skipped,
so an interrupted run resumes where it stopped.  Chunks run in worker processes (all
cores by default), each with its own bagpipes model.  ``provenance.json`` records the
versions, seed, date, bounds and filters; a rerun with different settings into the same
folder is refused.

Example::

    OMP_NUM_THREADS=1 python scripts/make_training_set.py out/ --n 300000
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from pegleg._parallel import default_workers, parallel_map


def _chunk_path(out: Path, i: int) -> Path:
    return out / f"chunk_{i:05d}.npz"


def _is_complete(path: Path, n_rows: int, n_filters: int, bins: bool = False, split: bool = False) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path) as z:
            if bins:
                return z["bin_flux"].shape[::2] == (n_rows, n_filters) and (not split or "dust_lum" in z.files)
            return z["params"].shape[0] == n_rows and z["mags"].shape == (n_rows, n_filters)
    except Exception:
        return False


#: parameters the SFH-bin templates depend on (the others are set to 0)
BIN_INPUTS = ("redshift", "log_metallicity", "av", "delta", "eta", "log_u")


def bin_design(n_total: int, seed: int) -> np.ndarray:
    """The (n, P) parameter vectors of the SFH-bin training set: scrambled Sobol points
    over :data:`BIN_INPUTS` within the bounds; log_mass_formed 10 and dsfr 0 (unused)."""
    from scipy.stats import qmc

    from pegleg.sed import sps

    u = qmc.Sobol(d=len(BIN_INPUTS), scramble=True, seed=seed).random(n_total)
    params = np.zeros((n_total, len(sps.PARAM_NAMES)))
    params[:, sps.PARAM_NAMES.index("log_mass_formed")] = 10.0
    for j, name in enumerate(BIN_INPUTS):
        i = sps.PARAM_NAMES.index(name)
        lo, hi = sps.BOUNDS[i]
        params[:, i] = lo + (hi - lo) * u[:, j]
    return params


def _run_chunk(job):
    """Compute and atomically write one chunk (runs in a worker process)."""
    from pegleg.sed import sps

    out, i, start, stop, seed, n_total, filters, bins, split = job
    if bins:
        params = bin_design(n_total, seed)[start:stop]
        res = sps.bin_photometry(params, filters, split_dust=split)
        arrays = {"bin_flux": res[0], "surviving": res[1]}
        if split:
            arrays["dust_lum"] = res[2]
    else:
        params = sps.sample_prior(n_total, seed=seed)[start:stop]
        mags, der = sps.evaluate(params, filters)
        arrays = dict(mags=mags, derived_names=np.array(list(der)), **der)
    path = _chunk_path(Path(out), i)
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, params=params, index=np.arange(start, stop),
                     param_names=np.array(sps.PARAM_NAMES), filters=np.array(filters), **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("--n", type=int, default=300_000, help="number of models (default 300000)")
    ap.add_argument("--chunk", type=int, default=2000, help="models per chunk file (default 2000)")
    ap.add_argument("--seed", type=int, default=20240601, help="prior seed")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    ap.add_argument("--filters", nargs="+", default=None,
                    help="pegleg filter names (default: every filter with a sedpy curve)")
    ap.add_argument("--bins", action="store_true",
                    help="write the SFH-bin (template) training set instead of prior draws")
    ap.add_argument("--split-dust", action="store_true",
                    help="with --bins: photometry without dust re-emission, plus the absorbed luminosity")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from pegleg.sed import filters as sfilters
    from pegleg.sed import sps

    if args.n < 1 or args.chunk < 1:
        ap.error("--n and --chunk must be positive")
    filters = tuple(sfilters.canonical_name(f) for f in args.filters) if args.filters \
        else sfilters.available_filters()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    settings = {
        "n": args.n, "chunk": args.chunk, "seed": args.seed, "bins": bool(args.bins),
        "split_dust": bool(args.split_dust),
        "param_names": list(sps.PARAM_NAMES), "bounds": sps.BOUNDS.tolist(),
        "filters": list(filters),
        "sedpy_curves": [sfilters.sedpy_name(f) for f in filters],
    }
    prov_path = out / "provenance.json"
    if prov_path.is_file():
        old = json.loads(prov_path.read_text())
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            print(f"error: {out} holds a training set made with different {', '.join(diff)}; "
                  "use another folder", file=sys.stderr)
            return 2
    versions = sps.versions()
    prov = dict(settings)
    prov.update({
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions,
        "derived_names": ["log_stellar_mass", "log_mass_formed", "log_sfr100", "log_sfr10",
                          "log_age_mw", "av"],
        "model": {
            "code": "bagpipes model_galaxy (BC03+MILES stellar, Cloudy nebular, Inoue+14 IGM, "
                    "Draine & Li 2007 dust emission with bagpipes defaults)",
            "sfh": "bagpipes continuity, 7 bins: 0-10 Myr, 10-100 Myr, 5 log-spaced to the age "
                   "of the universe at z; pegleg dsfr{k} = log10(SFR_k/SFR_k+1), bin 1 youngest",
            "dsfr_prior": {"distribution": "student-t", "scale": sps.DSFR_SCALE,
                           "nu": sps.DSFR_NU, "truncated_at": sps.DSFR_LIMIT},
            "dust": "bagpipes Salim, B = max(0, 0.85 - 1.9 delta), eta birth-cloud factor",
            "t_bc_gyr": sps.T_BC_GYR,
            "cosmology": "FlatLambdaCDM H0=70 Om0=0.3 (bagpipes)",
            "mags": "AB, photon-counting <f_lambda> converted at the curve's pivot wavelength",
        },
        "command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
    })
    if prov_path.is_file():
        prov["created"] = json.loads(prov_path.read_text()).get("created", prov["created"])
        prov["resumed"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    tmp = prov_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(prov, indent=2) + "\n")
    os.replace(tmp, prov_path)

    n_chunks = -(-args.n // args.chunk)
    jobs = []
    for i in range(n_chunks):
        start, stop = i * args.chunk, min(args.n, (i + 1) * args.chunk)
        if _is_complete(_chunk_path(out, i), stop - start, len(filters), args.bins, args.split_dust):
            continue
        jobs.append((str(out), i, start, stop, args.seed, args.n, filters, args.bins, args.split_dust))
    print(f"{n_chunks - len(jobs)} of {n_chunks} chunks already complete; "
          f"computing {len(jobs)} with {args.workers or default_workers(len(jobs) or 1)} "
          f"process(es)", file=sys.stderr)
    if jobs:
        parallel_map(_run_chunk, jobs, n_workers=args.workers,
                     progress=not args.no_progress, desc="training chunks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
