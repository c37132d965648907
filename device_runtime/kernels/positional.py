"""Sinusoidal positional encoding added to ``(B, T, D)`` (Vaswani et al., 2017).

``pe[t, d] = sin(t / 10000^(2*(d//2)/D))`` for even ``d``, ``cos`` of the same for odd
``d`` (NNTrainer's and the paper's table), computed in float64 on the fly: no table is
stored. ``y`` may alias ``x``.
"""

from __future__ import annotations

import math

import numpy as np

from . import lean_elem
from ._jit import njit, pick

Arr = np.ndarray


@njit
def pe_add_numba(x: Arr, y: Arr) -> None:
    B, T, D = x.shape
    for t in range(T):
        for d in range(D):
            ang = t / math.pow(10000.0, (2 * (d // 2)) / D)
            v = math.sin(ang) if d % 2 == 0 else math.cos(ang)
            for b in range(B):
                y[b, t, d] = np.float64(x[b, t, d]) + v


def pe_table(T: int, D: int) -> np.ndarray:
    """The (T, D) float64 table (reference and tests)."""
    t = np.arange(T, dtype=np.float64)[:, None]
    d = np.arange(D)[None, :]
    ang = t / np.power(10000.0, (2 * (d // 2)) / D)
    return np.where(d % 2 == 0, np.sin(ang), np.cos(ang))


def pe_add_numpy(x: Arr, y: Arr) -> None:
    y[...] = x.astype(np.float64) + pe_table(x.shape[1], x.shape[2])[None]


pe_add = pick(pe_add_numba, lean_elem.pe_add)
