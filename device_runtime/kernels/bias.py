"""Bias additions. numpy's broadcasting ``np.add(y, b, out=y)`` buffers a whole copy of
``y`` (measured with tracemalloc: 16 KiB for a (32, 120) float32 output), so the hot path
uses these loops instead."""

from __future__ import annotations

from . import lean_bias
from ._jit import njit, pick


@njit
def add_row_bias_numba(y, b):
    """y (R, K) += b (K,)"""
    for r in range(y.shape[0]):
        for k in range(y.shape[1]):
            y[r, k] += b[k]


def add_row_bias_numpy(y, b):
    y += b


@njit
def add_col_bias_numba(y, b):
    """y (C, P) += b (C,)"""
    for c in range(y.shape[0]):
        v = b[c]
        for p in range(y.shape[1]):
            y[c, p] += v


def add_col_bias_numpy(y, b):
    y += b[:, None]


add_row_bias = pick(add_row_bias_numba, lean_bias.add_row_bias)
add_col_bias = pick(add_col_bias_numba, lean_bias.add_col_bias)
