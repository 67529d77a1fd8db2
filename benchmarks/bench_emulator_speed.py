"""SEDs per second of pegleg's float32 MLP emulator on one core.

Run::

    OMP_NUM_THREADS=1 python benchmarks/bench_emulator_speed.py [--batch 100000]

Random 4x128 and 4x256 networks (GELU-tanh), 19 filters, batch of 100k parameter
vectors, BLAS limited to one thread with threadpoolctl.  Compared, in the same run, with
a naive float64 reference (one matrix product per layer over the whole batch, exact
GELU via scipy's erf-free tanh formula, no chunking or in-place operations).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from pegleg.sed.emulator import MLPEmulator

FILTERS = ["F435W", "F606W", "F775W", "F814W", "F850LP", "F090W", "F105W", "F115W", "F125W",
           "F140W", "F150W", "F160W", "F200W", "F277W", "F335M", "F356W", "F410M", "F444W",
           "F770W"]
PARAMS = ["log_mass_formed", "redshift", "logzsol", "dust2", "dust_index", "dust1_fraction",
          "logsfr_ratios_1", "logsfr_ratios_2", "logsfr_ratios_3", "logsfr_ratios_4",
          "logsfr_ratios_5", "logsfr_ratios_6", "gas_logz"]


def make(width: int, depth: int = 4, seed: int = 0) -> MLPEmulator:
    rng = np.random.default_rng(seed)
    ref = "F444W"
    outputs = [f"mag:{ref}"] + [f"color:{f}" for f in FILTERS if f != ref] + \
        ["log_stellar_mass", "log_sfr100", "log_sfr10", "log_age_mw", "av"]
    sizes = [len(PARAMS) - 1] + [width] * depth + [len(outputs)]
    W = [rng.normal(0, 1 / np.sqrt(a), (a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
    b = [rng.normal(0, 0.1, s) for s in sizes[1:]]
    P = len(PARAMS)
    bounds = [[6, 12.5], [0, 12]] + [[-2, 2]] * (P - 2)
    meta = dict(param_names=PARAMS, bounds=bounds, prior={}, filters=FILTERS,
                reference_filter=ref, reference_log_mass=10.0, outputs=outputs,
                activation="gelu_tanh", training={}, accuracy={})
    return MLPEmulator(W, b, np.zeros(P - 1), np.ones(P - 1), np.full(len(outputs), 25.0),
                       np.ones(len(outputs)), np.full(len(FILTERS), 0.05), meta)


def naive_float64(emu: MLPEmulator, theta: np.ndarray) -> np.ndarray:
    x = (np.delete(theta, 0, axis=1) - emu.x_mean.astype(np.float64)) / emu.x_std.astype(np.float64)
    for W, b in zip(emu.weights[:-1], emu.biases[:-1]):
        x = x @ W.astype(np.float64) + b.astype(np.float64)
        x = 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))
    y = (x @ emu.weights[-1].astype(np.float64) + emu.biases[-1]) * emu.y_std + emu.y_mean
    ref = y[:, 0] - 2.5 * (theta[:, 0] - emu.reference_log_mass)
    return np.concatenate([ref[:, None] + y[:, 1:len(FILTERS)], ref[:, None]], axis=1)


def best_time(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{len(FILTERS)} filters, batch {args.batch}, 1 thread (threadpoolctl), best of {args.repeat}")
    print(f"{'network':>10} {'pegleg float32 SED/s':>22} {'naive float64 SED/s':>21} {'ratio':>7} {'max |dmag|':>11}")
    with threadpool_limits(limits=1):
        for width in (128, 256):
            emu = make(width)
            theta = emu.sample_prior(args.batch, seed=1)
            t_fast = best_time(lambda: emu.predict(theta), args.repeat)
            t_ref = best_time(lambda: naive_float64(emu, theta), args.repeat)
            # naive output columns: F444W last; reorder pegleg's to match
            order = [f for f in FILTERS if f != "F444W"] + ["F444W"]
            dmag = np.abs(emu.predict(theta, filters=order) - naive_float64(emu, theta)).max()
            print(f"{'4x' + str(width):>10} {args.batch / t_fast:22.3e} {args.batch / t_ref:21.3e} "
                  f"{t_ref / t_fast:7.2f} {dmag:11.2e}")


if __name__ == "__main__":
    main()
