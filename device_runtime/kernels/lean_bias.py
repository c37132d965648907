"""Allocation-free numpy bias kernels (see :mod:`.lean`): the runtime without numba.

numpy's broadcasting ``y += b`` casts the broadcast operand through its own iteration
buffers, whose size grows with ``y`` (tracemalloc: 33 KiB for a (512, 384) float32 ``y``);
these copy ``b`` into a scratch block of ``y``'s shape once and add same-shape blocks.
Additions are float32, as numba's: bit-identical. The convolution bias gradient sums in
float64 in another order than numba's four partial sums: within float32 rounding.
"""

from __future__ import annotations

import numpy as np

from . import lean
from .lean import _channels, _f64_blocks, _rows, scratch

Arr = np.ndarray


def add_row_bias(y: Arr, b: Arr) -> None:
    """As ``bias.add_row_bias_numba``: y (R, K) += b (K,)."""
    R, K = y.shape
    if not y.flags.c_contiguous:  # e.g. a GRU's gate columns: numpy would buffer an
        for r in range(R):        # in-place strided 2-D add (64 KiB); rows do not
            np.add(y[r], b, out=y[r])
        return
    blocks = _rows(R, K, lean.SCRATCH_BYTES // 4)
    rb = blocks[0][1] - blocks[0][0] if blocks else 0
    tmp = scratch(rb * K, np.float32, 1).reshape(rb, K)
    np.copyto(tmp, b)
    for r0, r1 in blocks:
        np.add(y[r0:r1], tmp[:r1 - r0], out=y[r0:r1])


def add_col_bias(y: Arr, b: Arr) -> None:
    """As ``bias.add_col_bias_numba``: y (C, P) += b (C,), in column blocks."""
    C, P = y.shape
    step = max(1, lean.SCRATCH_BYTES // 4 // max(C, 1))
    tmp = scratch(C * min(step, P), np.float32, 1).reshape(C, min(step, P))
    np.copyto(tmp, b[:, None])
    for p0 in range(0, P, step):
        p1 = min(p0 + step, P)
        np.add(y[:, p0:p1], tmp[:, :p1 - p0], out=y[:, p0:p1])


def chunk_to_nchw_bias(src: Arr, dst: Arr, bias: Arr) -> None:
    """As ``conv.chunk_to_nchw_bias_numba``: dst[b, c, p] = src[c, b*HW + p] + bias[c]."""
    nb, nc, hw = dst.shape
    for c in range(nc):
        np.add(src[c].reshape(nb, hw), bias[c], out=dst[:, c, :])


def bias_grad_nchw(dy: Arr, db: Arr, accumulate: bool) -> None:
    """As ``conv.bias_grad_nchw_numba``: db[c] (+)= the float64 sum of dy[:, c, :]."""
    acc, part = _channels(2, dy.shape[1])
    acc.fill(0.0)
    for (_, cs), blk in _f64_blocks(dy):
        np.sum(blk, axis=(0, 2), out=part[cs])
        np.add(acc[cs], part[cs], out=acc[cs])
    if accumulate:
        np.copyto(part, db)
        np.add(part, acc, out=acc)
    np.copyto(db, acc, casting="same_kind")
