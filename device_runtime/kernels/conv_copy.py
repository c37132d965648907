"""Faster serial im2col / col2im (issue 17): the same values as kernels/conv.py's.

Same contract, arguments and results (bit for bit) as :func:`conv.im2col_numba` and
:func:`conv.col2im_numba`; what changes is the memory access and the loop shapes:

- col2im walks channels outermost and samples inside, so the ``kh*kw`` rows of col it
  reads are streamed in order (the old order, sample outermost, touched one 64-byte
  piece of every row of col per sample: a full sweep of col per sample, cache- and
  TLB-hostile once col outgrows L2, 1-3 GB/s on 4x4 and 2x2 maps). Each dx element
  still receives its terms in (i, j) order, so the sums round as before.
- stride 1 and 2 get their own inner loops (a constant stride: LLVM vectorises them;
  a run-time ``sw`` stride it does not).

Serial on purpose (no prange): numba's threads fight OpenBLAS's between the GEMMs
(_jit.py). Flat arrays and unsigned indices for the reason given in kernels/conv.py.
"""

from __future__ import annotations

import numpy as np

from ._jit import njit

Array = np.ndarray


@njit
def _valid_range(pad: int, k: int, stride: int, size: int, n_out: int) -> tuple[int, int]:
    """Outputs ``o`` in ``[lo, hi)`` read an in-range input ``o*stride - pad + k``."""
    lo = -((k - pad) // stride)
    hi = (size - 1 + pad - k) // stride + 1
    lo = min(max(lo, 0), n_out)
    hi = min(max(hi, lo), n_out)
    return lo, hi


@njit
def im2col_copy(
    x: Array, col: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, oh: int, ow: int,
    c0: int = 0,
) -> None:
    """Unfold x (B, C, H, W) into col (C*kh*kw, B*oh*ow), padding read as 0 (rows of
    channels ``c0 ..`` only): :func:`conv.im2col_numba`'s contract and values."""
    nb, nc, h, w = x.shape
    kk = kh * kw
    ohow = oh * ow
    ncs = col.shape[0] // kk
    assert col.shape[0] == ncs * kk and 0 <= c0 and c0 + ncs <= nc, "im2col: col rows"
    assert col.shape[1] == nb * ohow, "im2col: col shape"
    hw = h * w
    ncol = col.shape[1]
    cf = col.reshape(col.size)
    xf = x.reshape(x.size)
    runs = sh == 1 and sw == 1 and ow == w
    for r in range(ncs * kk):
        c = c0 + r // kk
        i = (r % kk) // kw
        j = r % kw
        oy_lo, oy_hi = _valid_range(pt, i, sh, h, oh)
        ox_lo, ox_hi = _valid_range(pl, j, sw, w, ow)
        nx = ox_hi - ox_lo
        x0 = ox_lo * sw + j - pl
        s_run = (oy_lo - pt + i) * w + j - pl  # runs: start relative to the plane
        n_run = (oy_hi - oy_lo) * ow
        t_lo, t_hi = max(0, -s_run), min(n_run, hw - s_run)
        for b in range(nb):
            base = r * ncol + b * ohow
            plane = (b * nc + c) * hw
            for t in range(oy_lo * ow):
                cf[np.uint64(base + t)] = 0.0
            for t in range(oy_hi * ow, ohow):
                cf[np.uint64(base + t)] = 0.0
            if runs:
                # one long copy across rows; the wrapped or clipped border columns are
                # padding, zeroed below
                q0 = base + oy_lo * ow
                p0 = plane + s_run
                for t in range(t_lo, t_hi):
                    cf[np.uint64(q0 + t)] = xf[np.uint64(p0 + t)]
                # border columns: strided stores down the rows, one loop per column
                # (a loop per row and side cost more than the copy on 4x4 maps)
                for t in range(ox_lo):
                    for oy in range(oy_lo, oy_hi):
                        cf[np.uint64(base + oy * ow + t)] = 0.0
                for t in range(ox_hi, ow):
                    for oy in range(oy_lo, oy_hi):
                        cf[np.uint64(base + oy * ow + t)] = 0.0
                continue
            for oy in range(oy_lo, oy_hi):
                q = base + oy * ow
                for t in range(ox_lo):
                    cf[np.uint64(q + t)] = 0.0
                for t in range(ox_hi, ow):
                    cf[np.uint64(q + t)] = 0.0
                s0 = plane + (oy * sh - pt + i) * w + x0
                q1 = q + ox_lo
                for t in range(nx):
                    cf[np.uint64(q1 + t)] = xf[np.uint64(s0 + t * sw)]


@njit
def col2im_copy(
    col: Array, dx: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, oh: int, ow: int,
    c0: int = 0,
) -> None:
    """Fold col back into dx (overwritten; channels ``c0 ..`` of col's rows only), the
    adjoint of im2col: :func:`conv.col2im_numba`'s contract and values (each element's
    terms added in (i, j) order)."""
    nb, nc, h, w = dx.shape
    ohow = oh * ow
    ncs = col.shape[0] // (kh * kw)
    assert col.shape[0] == ncs * kh * kw and 0 <= c0 and c0 + ncs <= nc, "col2im: col rows"
    assert col.shape[1] == nb * ohow, "col2im: col shape"
    hw = h * w
    ncol = col.shape[1]
    cf = col.reshape(col.size)
    df = dx.reshape(dx.size)
    for c in range(ncs):  # channels outermost: col's rows c*kh*kw .. are read in order
        for b in range(nb):
            pbase = (b * nc + c0 + c) * hw
            for t in range(hw):
                df[np.uint64(pbase + t)] = 0.0
            for i in range(kh):
                oy_lo, oy_hi = _valid_range(pt, i, sh, h, oh)
                for j in range(kw):
                    ox_lo, ox_hi = _valid_range(pl, j, sw, w, ow)
                    nx = ox_hi - ox_lo
                    x0 = ox_lo * sw + j - pl
                    rbase = ((c * kh + i) * kw + j) * ncol + b * ohow + ox_lo
                    for oy in range(oy_lo, oy_hi):
                        d0 = pbase + (oy * sh - pt + i) * w + x0
                        s0 = rbase + oy * ow
                        for t in range(nx):
                            df[np.uint64(d0 + t * sw)] += cf[np.uint64(s0 + t)]

