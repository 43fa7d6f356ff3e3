"""Latency of several predictors on the same inputs, measured interleaved so machine noise hits all alike.

Each predictor is a callable on a preprocessed float32 batch. Per batch size: `warmup` calls each, then
`repeats` rounds in which every predictor runs once, in a fresh random order per round; the median and the
90th percentile of its per-call times (milliseconds) are reported. Callers set one thread on every side
(torch.set_num_threads(1), ONNX Runtime sessions with one intra-op thread).
"""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np


def repeats_for(batch: int) -> int:
    """Rounds per batch size: many for single rows (each call is microseconds), fewer for big batches."""
    return 200 if batch <= 16 else 30


def measure(predictors: dict[str, Callable], inputs: dict[int, np.ndarray], warmup: int = 10,
            repeats: int | None = None, seed: int = 0) -> dict:
    """{name: {batch: {'median_ms', 'p90_ms', 'n'}}} for every predictor and batch size in `inputs`."""
    rng = np.random.default_rng(seed)
    names = list(predictors)
    out = {n: {} for n in names}
    for batch, x in inputs.items():
        for n in names:
            for _ in range(warmup):
                predictors[n](x)
        times = {n: [] for n in names}
        for _ in range(repeats or repeats_for(batch)):
            for i in rng.permutation(len(names)):
                t0 = time.perf_counter()
                predictors[names[i]](x)
                times[names[i]].append(time.perf_counter() - t0)
        for n in names:
            ms = np.asarray(times[n]) * 1e3
            out[n][int(batch)] = {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
                                  "n": int(len(ms))}
    return out


def load_average() -> float | None:
    """The 1-minute load average, recorded beside timings (None where the OS has none)."""
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None
