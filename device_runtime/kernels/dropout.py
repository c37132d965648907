"""Inverted dropout with counter-based random numbers (splitmix64 of seed, call, index).

The mask depends only on (seed, call, element index), never on memory layout or thread
schedule, so planned and naive runs, numba and numpy, draw identical masks.
"""

from __future__ import annotations

import numpy as np

from . import lean_elem
from ._jit import njit, pick


@njit
def dropout_fwd_numba(x, y, mask, rate, seed, call):
    thr = np.uint64(min(int(rate * 4294967296.0), 4294967295))
    scale = np.float32(1.0 / (1.0 - rate))
    base = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
            + np.uint64(call) * np.uint64(0xD1B54A32D192ED03))
    for i in range(x.shape[0]):
        z = base + np.uint64(i) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        keep = (z >> np.uint64(32)) >= thr
        mask[i] = 1 if keep else 0
        y[i] = x[i] * scale if keep else np.float32(0.0)


def dropout_fwd_numpy(x, y, mask, rate, seed, call):
    with np.errstate(over="ignore"):
        thr = np.uint64(min(int(rate * 4294967296.0), 4294967295))
        base = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
                + np.uint64(call) * np.uint64(0xD1B54A32D192ED03))
        z = base + np.arange(x.shape[0], dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    keep = (z >> np.uint64(32)) >= thr
    mask[:] = keep
    scale = np.float32(1.0 / (1.0 - rate))
    np.multiply(x, scale, out=y)
    y[~keep] = 0.0


@njit
def dropout_bwd_numba(dy, mask, dx, rate):
    scale = np.float32(1.0 / (1.0 - rate))
    for i in range(dy.shape[0]):
        dx[i] = dy[i] * scale if mask[i] else np.float32(0.0)


def dropout_bwd_numpy(dy, mask, dx, rate):
    scale = np.float32(1.0 / (1.0 - rate))
    np.multiply(dy, scale, out=dx)
    dx[mask == 0] = 0.0


dropout_fwd = pick(dropout_fwd_numba, lean_elem.dropout_fwd)
dropout_bwd = pick(dropout_bwd_numba, lean_elem.dropout_bwd)
