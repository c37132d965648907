"""2-D max and average pooling, forward and backward, PyTorch semantics.

Arrays are (B, C, H, W) in and (B, C, OH, OW) out; only the top/left pads are passed,
the bottom/right ones are implied by OH/OW. Max pooling pads with -inf and its backward
recomputes the argmax from ``x`` (no saved indices) with PyTorch's CPU tie rule: the
FIRST maximal element in row-major window order (a NaN always wins, the last one in
the window). Average pooling counts the padding (``count_include_pad=True``): it always
divides by ``kh*kw``. Global pooling is a window of the whole input (kh, kw = H, W).

Backward kernels overwrite ``dx``. Work is split over (b, c) planes, so no two threads
write the same element.
"""

from __future__ import annotations

import numpy as np

from ._jit import njit, pick, prange
from .conv import _valid_range, padded_windows

# ----------------------------------------------------------------------------- numba


# Flat arrays and np.uint64 indices, as in conv.py: numba's negative-index wraparound on
# signed indices blocks vectorisation; every index here is in range by construction.


@njit(parallel=True)
def maxpool2d_fwd_numba(x, y, kh, kw, sh, sw, pt, pl):  # type: ignore[no-untyped-def]
    """numba max pooling forward (padding = -inf)."""
    nb, nc, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    for p in prange(nb * nc):
        for oy in range(oh):
            y0 = oy * sh - pt
            y1 = min(y0 + kh, h)
            y0 = max(y0, 0)
            for ox in range(ow):
                x0 = ox * sw - pl
                x1 = min(x0 + kw, w)
                x0 = max(x0, 0)
                m = -np.inf
                for iy in range(y0, y1):
                    row = (p * h + iy) * w
                    for ix in range(x0, x1):
                        v = xf[np.uint64(row + ix)]
                        if v > m or v != v:
                            m = v
                yf[np.uint64((p * oh + oy) * ow + ox)] = m


@njit(parallel=True)
def maxpool2d_bwd_numba(x, dy, dx, kh, kw, sh, sw, pt, pl):  # type: ignore[no-untyped-def]
    """numba max pooling backward; the argmax is recomputed from ``x``."""
    nb, nc, h, w = x.shape
    oh, ow = dy.shape[2], dy.shape[3]
    xf = x.reshape(x.size)
    dyf = dy.reshape(dy.size)
    dxf = dx.reshape(dx.size)
    hw = h * w
    for p in prange(nb * nc):
        for t in range(hw):
            dxf[np.uint64(p * hw + t)] = 0.0
        for oy in range(oh):
            y0 = oy * sh - pt
            y1 = min(y0 + kh, h)
            y0 = max(y0, 0)
            for ox in range(ow):
                x0 = ox * sw - pl
                x1 = min(x0 + kw, w)
                x0 = max(x0, 0)
                if y0 >= y1 or x0 >= x1:
                    continue  # window entirely in the padding: no input to credit
                # as PyTorch: start at the first in-range element, replace on > or NaN
                m = -np.inf
                arg = (p * h + y0) * w + x0
                for iy in range(y0, y1):
                    row = (p * h + iy) * w
                    for ix in range(x0, x1):
                        v = xf[np.uint64(row + ix)]
                        if v > m or v != v:
                            m = v
                            arg = row + ix
                dxf[np.uint64(arg)] += dyf[np.uint64((p * oh + oy) * ow + ox)]


@njit(parallel=True)
def avgpool2d_fwd_numba(x, y, kh, kw, sh, sw, pt, pl):  # type: ignore[no-untyped-def]
    """numba average pooling forward (count_include_pad=True), float64 sums."""
    nb, nc, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    kk = kh * kw
    for p in prange(nb * nc):
        for oy in range(oh):
            y0 = oy * sh - pt
            y1 = min(y0 + kh, h)
            y0 = max(y0, 0)
            for ox in range(ow):
                x0 = ox * sw - pl
                x1 = min(x0 + kw, w)
                x0 = max(x0, 0)
                acc = np.float64(0.0)  # not 0.0: under NUMBA_DISABLE_JIT that sums in float32
                for iy in range(y0, y1):
                    row = (p * h + iy) * w
                    for ix in range(x0, x1):
                        acc += xf[np.uint64(row + ix)]
                yf[np.uint64((p * oh + oy) * ow + ox)] = acc / kk


@njit(parallel=True)
def avgpool2d_bwd_numba(dy, dx, kh, kw, sh, sw, pt, pl):  # type: ignore[no-untyped-def]
    """numba average pooling backward: each dy/(kh*kw) spread over its window."""
    nb, nc, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    dyf = dy.reshape(dy.size)
    dxf = dx.reshape(dx.size)
    hw = h * w
    kk = np.float32(kh * kw)
    for p in prange(nb * nc):
        for t in range(hw):
            dxf[np.uint64(p * hw + t)] = 0.0
        # (i, j) outermost: the same summation order as the numpy reference
        for i in range(kh):
            oy_lo, oy_hi = _valid_range(pt, i, sh, h, oh)
            for j in range(kw):
                ox_lo, ox_hi = _valid_range(pl, j, sw, w, ow)
                for oy in range(oy_lo, oy_hi):
                    d0 = (p * h + oy * sh - pt + i) * w + j - pl
                    s0 = (p * oh + oy) * ow
                    for ox in range(ox_lo, ox_hi):
                        g = np.float32(dyf[np.uint64(s0 + ox)] / kk)
                        dxf[np.uint64(d0 + ox * sw)] += g


# ----------------------------------------------------------------------------- numpy


def _scatter_windows(dx, g, kh, kw, sh, sw, pt, pl, order):  # type: ignore[no-untyped-def]
    """dx = sum over window offsets (i, j) in ``order`` of g[..., i, j] placed at its source.

    ``g`` is (B, C, oh, ow, kh, kw); padding contributions are dropped.
    """
    nb, nc, h, w = dx.shape
    oh, ow = g.shape[2], g.shape[3]
    pb = max(0, (oh - 1) * sh + kh - h - pt)
    pr = max(0, (ow - 1) * sw + kw - w - pl)
    dxp = np.zeros((nb, nc, h + pt + pb, w + pl + pr), dtype=dx.dtype)
    for i, j in order:
        dxp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += g[..., i, j]
    dx[...] = dxp[:, :, pt:pt + h, pl:pl + w]


def maxpool2d_fwd_numpy(x, y, kh, kw, sh, sw, pt, pl):  # type: ignore[no-untyped-def]
    """Reference max pooling forward."""
    oh, ow = y.shape[2:]
    y[...] = padded_windows(x, kh, kw, sh, sw, pt, pl, oh, ow, -np.inf).max(axis=(4, 5))


def maxpool2d_bwd_numpy(x, dy, dx, kh, kw, sh, sw, pt, pl):  # type: ignore[no-untyped-def]
    """Reference max pooling backward (first maximum; the last NaN if any)."""
    oh, ow = dy.shape[2:]
    kk = kh * kw
    win = padded_windows(x, kh, kw, sh, sw, pt, pl, oh, ow, -np.inf)
    win = win.reshape(win.shape[:4] + (kk,))
    inside = padded_windows(np.ones(x.shape, bool), kh, kw, sh, sw, pt, pl, oh, ow, False)
    inside = inside.reshape(win.shape)
    m = win.max(axis=-1, keepdims=True)
    first = ((win == m) & inside).argmax(axis=-1)
    isnan = np.isnan(win)
    last_nan = kk - 1 - isnan[..., ::-1].argmax(axis=-1)
    arg = np.where(isnan.any(axis=-1), last_nan, first)
    g = np.where(inside.any(axis=-1), dy, 0).astype(dx.dtype)
    onehot = np.where(arg[..., None] == np.arange(kk), g[..., None], dx.dtype.type(0))
    # reversed (i, j): each dx element then sums in ascending (oy, ox), as the numba loop
    order = [(i, j) for i in reversed(range(kh)) for j in reversed(range(kw))]
    _scatter_windows(dx, onehot.reshape(g.shape + (kh, kw)), kh, kw, sh, sw, pt, pl, order)


def avgpool2d_fwd_numpy(x, y, kh, kw, sh, sw, pt, pl):  # type: ignore[no-untyped-def]
    """Reference average pooling forward (count_include_pad=True)."""
    oh, ow = y.shape[2:]
    win = padded_windows(x, kh, kw, sh, sw, pt, pl, oh, ow, 0.0)
    y[...] = win.sum(axis=(4, 5), dtype=np.float64) / (kh * kw)


def avgpool2d_bwd_numpy(dy, dx, kh, kw, sh, sw, pt, pl):  # type: ignore[no-untyped-def]
    """Reference average pooling backward."""
    g = dy / np.float32(kh * kw)
    g6 = np.broadcast_to(g[..., None, None], g.shape + (kh, kw))
    order = [(i, j) for i in range(kh) for j in range(kw)]
    _scatter_windows(dx, g6, kh, kw, sh, sw, pt, pl, order)


# ----------------------------------------------------------------------------- public

maxpool2d_fwd = pick(maxpool2d_fwd_numba, maxpool2d_fwd_numpy)
maxpool2d_bwd = pick(maxpool2d_bwd_numba, maxpool2d_bwd_numpy)
avgpool2d_fwd = pick(avgpool2d_fwd_numba, avgpool2d_fwd_numpy)
avgpool2d_bwd = pick(avgpool2d_bwd_numba, avgpool2d_bwd_numpy)
