"""im2col of a window of output rows of one sample (issue 13: the conv forward's scratch).

A single-sample convolution's forward unfolds its input in blocks of whole output rows,
``col (C*kh*kw, nr*ow)`` for output rows ``r0 .. r0+nr``, so its im2col scratch is one
block, never the whole ``(C*kh*kw, oh*ow)`` matrix (2.25 MiB for vgg16's conv1_2 at
32x32, its floor at micro-batch 1). The values are the columns ``r0*ow .. (r0+nr)*ow`` of
:func:`conv.im2col_numba`'s matrix, bit for bit (a copy; padding read as 0).
"""

from __future__ import annotations

import numpy as np

from . import lean
from ._jit import njit, pick
from .conv_copy import _valid_range

Array = np.ndarray


@njit
def im2col_rows_numba(
    x: Array, col: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, oh: int, ow: int,
    r0: int,
) -> None:
    """Unfold output rows ``r0 .. r0 + col.shape[1] // ow`` of x (1, C, H, W) into col."""
    nb, nc, h, w = x.shape
    kk = kh * kw
    nr = col.shape[1] // ow
    assert nb == 1 and col.shape[0] == nc * kk, "im2col rows: col rows"
    assert col.shape[1] == nr * ow and 0 <= r0 and r0 + nr <= oh, "im2col rows: col shape"
    ncol = col.shape[1]
    cf = col.reshape(col.size)
    xf = x.reshape(x.size)
    r1 = r0 + nr
    for r in range(nc * kk):
        c = r // kk
        i = (r % kk) // kw
        j = r % kw
        lo, hi = _valid_range(pt, i, sh, h, oh)
        lo = min(max(lo, r0), r1)
        hi = min(max(hi, lo), r1)
        ox_lo, ox_hi = _valid_range(pl, j, sw, w, ow)
        nx = ox_hi - ox_lo
        x0 = ox_lo * sw + j - pl
        base = r * ncol
        for t in range((lo - r0) * ow):
            cf[np.uint64(base + t)] = 0.0
        for t in range((hi - r0) * ow, ncol):
            cf[np.uint64(base + t)] = 0.0
        for oy in range(lo, hi):
            q = base + (oy - r0) * ow
            for t in range(ox_lo):
                cf[np.uint64(q + t)] = 0.0
            for t in range(ox_hi, ow):
                cf[np.uint64(q + t)] = 0.0
            s0 = (c * h + oy * sh - pt + i) * w + x0
            q1 = q + ox_lo
            if sw == 1:
                for t in range(nx):
                    cf[np.uint64(q1 + t)] = xf[np.uint64(s0 + t)]
            else:
                for t in range(nx):
                    cf[np.uint64(q1 + t)] = xf[np.uint64(s0 + t * sw)]


def im2col_rows_lean(
    x: Array, col: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, oh: int, ow: int,
    r0: int,
) -> None:
    """:func:`im2col_rows_numba` without numba: kernels/lean.py on the input rows the
    window reads (a view), with the top padding that is left of it."""
    nr = col.shape[1] // ow
    assert x.shape[0] == 1 and col.shape[1] == nr * ow and 0 <= r0 and r0 + nr <= oh, \
        "im2col rows: col shape"
    h = x.shape[2]
    y0 = min(max(r0 * sh - pt, 0), h)
    y1 = min(max((r0 + nr - 1) * sh - pt + kh, y0), h)
    lean.im2col(x[:, :, y0:y1], col, kh, kw, sh, sw, max(pt - r0 * sh, 0), pl, nr, ow)


im2col_rows = pick(im2col_rows_numba, im2col_rows_lean)


def row_blocks(oh: int, ow: int, ckk: int, block_bytes: int) -> list[tuple[int, int]]:
    """Output rows ``(r0, r1)`` of each forward block: as few blocks as keep each one's
    im2col within ``block_bytes`` (one row at least), as even as they can be. Fixed by
    the shapes alone, so every plan runs the same GEMMs (the same numbers)."""
    rows = block_bytes // (4 * ckk * ow)  # whole output rows a block may hold
    n = oh if rows <= 0 else -(-oh // rows)  # the fewest blocks of at most that many
    return [(k * oh // n, (k + 1) * oh // n) for k in range(n)]
