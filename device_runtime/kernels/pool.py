"""2-D max and average pooling, forward and backward, PyTorch semantics.

Arrays are (B, C, H, W) in and (B, C, OH, OW) out; only the top/left pads are passed,
the bottom/right ones are implied by OH/OW. Max pooling pads with -inf and its backward
finds the argmax with PyTorch's CPU tie rule: the FIRST maximal element in row-major
window order (a NaN always wins, the last one in the window); either the forward keeps
it (``*_arg``: an offset in the window per output, a byte for small windows) or the
backward recomputes it from ``x``. Average pooling counts the padding
(``count_include_pad=True``): it always divides by ``kh*kw``. Global pooling is a window
of the whole input (kh, kw = H, W).

Backward kernels overwrite ``dx``. Work is split over (b, c) planes, so no two threads
write the same element.
"""

from __future__ import annotations

import numpy as np

from . import lean, lean_pool
from ._jit import njit, pick, prange
from .conv import _valid_range, padded_windows, scatter_windows

Array = np.ndarray

# ----------------------------------------------------------------------------- numba


# Flat arrays and np.uint64 indices, as in conv.py: numba's negative-index wraparound on
# signed indices blocks vectorisation; every index here is in range by construction.


@njit(inline="always")
def _window_max(xf: Array, p: int, h: int, w: int, wy: int, wx: int, kh: int, kw: int,
                none: int) -> tuple[float, int]:
    """The maximum of plane ``p``'s window at (wy, wx) (its top-left, maybe in the padding)
    and where it is, as the offset ``i*kw + j`` in the window, with PyTorch's rule: start
    at the first in-range element, replace on ``>`` or NaN. (-inf, ``none``) for a window
    wholly in the padding."""
    y1, x1 = min(wy + kh, h), min(wx + kw, w)
    y0, x0 = max(wy, 0), max(wx, 0)
    m = -np.inf
    a = none
    if y0 < y1 and x0 < x1:
        a = (y0 - wy) * kw + x0 - wx
    for iy in range(y0, y1):
        row = (p * h + iy) * w
        for ix in range(x0, x1):
            v = xf[np.uint64(row + ix)]
            if v > m or v != v:
                m = v
                a = (iy - wy) * kw + ix - wx
    return m, a


@njit(parallel=True)
def maxpool2d_fwd_numba(
    x: Array, y: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int
) -> None:
    """y (B, C, OH, OW) = max over each window of x (B, C, H, W); padding is -inf."""
    nb, nc, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    assert y.shape[0] == nb and y.shape[1] == nc, "maxpool2d_fwd: y shape"
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    for p in prange(nb * nc):
        for oy in range(oh):
            for ox in range(ow):
                m, _ = _window_max(xf, p, h, w, oy * sh - pt, ox * sw - pl, kh, kw, -1)
                yf[np.uint64((p * oh + oy) * ow + ox)] = m


@njit(parallel=True)
def maxpool2d_bwd_numba(
    x: Array, dy: Array, dx: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int
) -> None:
    """dx = dy routed to each window's first maximum, recomputed from x (no indices).

    dx is overwritten; overlapping windows accumulate (in (oy, ox) order); windows wholly
    in the padding credit nothing.
    """
    nb, nc, h, w = x.shape
    oh, ow = dy.shape[2], dy.shape[3]
    assert dy.shape[0] == nb and dy.shape[1] == nc, "maxpool2d_bwd: dy shape"
    assert dx.shape == x.shape, "maxpool2d_bwd: dx shape"
    xf = x.reshape(x.size)
    dyf = dy.reshape(dy.size)
    dxf = dx.reshape(dx.size)
    hw = h * w
    for p in prange(nb * nc):
        for t in range(hw):
            dxf[np.uint64(p * hw + t)] = 0.0
        for oy in range(oh):
            for ox in range(ow):
                wy, wx = oy * sh - pt, ox * sw - pl
                _, a = _window_max(xf, p, h, w, wy, wx, kh, kw, -1)
                if a >= 0:
                    q = (p * h + wy + a // kw) * w + wx + a % kw
                    dxf[np.uint64(q)] += dyf[np.uint64((p * oh + oy) * ow + ox)]


@njit(parallel=True)
def maxpool2d_fwd_arg_numba(
    x: Array, y: Array, arg: Array, none: int, kh: int, kw: int, sh: int, sw: int, pt: int,
    pl: int
) -> None:
    """As :func:`maxpool2d_fwd_numba`, and ``arg`` (B, C, OH, OW) = where each maximum is,
    as the offset ``i*kw + j`` in its window, with the backward's rule (the first maximum,
    the last NaN); ``none`` for a window wholly in the padding. Backward then needs only
    ``arg``, not ``x``: a byte per output instead of the whole input kept."""
    nb, nc, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    assert y.shape[0] == nb and y.shape[1] == nc, "maxpool2d_fwd_arg: y shape"
    assert arg.shape == y.shape, "maxpool2d_fwd_arg: arg shape"
    xf = x.reshape(x.size)
    yf = y.reshape(y.size)
    af = arg.reshape(arg.size)
    for p in prange(nb * nc):
        for oy in range(oh):
            for ox in range(ow):
                q = np.uint64((p * oh + oy) * ow + ox)
                m, a = _window_max(xf, p, h, w, oy * sh - pt, ox * sw - pl, kh, kw, none)
                yf[q] = m
                af[q] = a


@njit(parallel=True)
def maxpool2d_bwd_arg_numba(
    arg: Array, dy: Array, dx: Array, none: int, kh: int, kw: int, sh: int, sw: int, pt: int,
    pl: int
) -> None:
    """dx (overwritten) = dy routed to the window offsets ``arg`` that the forward kept:
    the same additions, in the same (oy, ox) order, as :func:`maxpool2d_bwd_numba`."""
    nb, nc, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    assert dy.shape[0] == nb and dy.shape[1] == nc, "maxpool2d_bwd_arg: dy shape"
    assert arg.shape == dy.shape, "maxpool2d_bwd_arg: arg shape"
    af = arg.reshape(arg.size)
    dyf = dy.reshape(dy.size)
    dxf = dx.reshape(dx.size)
    hw = h * w
    for p in prange(nb * nc):
        for t in range(hw):
            dxf[np.uint64(p * hw + t)] = 0.0
        for oy in range(oh):
            for ox in range(ow):
                q = np.uint64((p * oh + oy) * ow + ox)
                a = af[q]
                if a == none:
                    continue
                iy = oy * sh - pt + a // kw
                ix = ox * sw - pl + a % kw
                dxf[np.uint64((p * h + iy) * w + ix)] += dyf[q]


@njit(parallel=True)
def avgpool2d_fwd_numba(
    x: Array, y: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int
) -> None:
    """y = window sums of x / (kh*kw) (padding counts as 0), summed in float64."""
    nb, nc, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    assert y.shape[0] == nb and y.shape[1] == nc, "avgpool2d_fwd: y shape"
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
def avgpool2d_bwd_numba(
    dy: Array, dx: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int
) -> None:
    """dx = each dy / (kh*kw) spread over its window (overwritten; pads dropped)."""
    nb, nc, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    assert dy.shape[0] == nb and dy.shape[1] == nc, "avgpool2d_bwd: dy shape"
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


def maxpool2d_fwd_numpy(
    x: Array, y: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int
) -> None:
    """Reference for :func:`maxpool2d_fwd_numba`."""
    oh, ow = y.shape[2:]
    y[...] = padded_windows(x, kh, kw, sh, sw, pt, pl, oh, ow, -np.inf).max(axis=(4, 5))


def maxpool2d_bwd_numpy(
    x: Array, dy: Array, dx: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int
) -> None:
    """Reference for :func:`maxpool2d_bwd_numba` (first maximum; the last NaN if any)."""
    oh, ow = dy.shape[2:]
    kk = kh * kw
    win = padded_windows(x, kh, kw, sh, sw, pt, pl, oh, ow, -np.inf)
    win = win.reshape(win.shape[:4] + (kk,))
    inside = padded_windows(np.ones(x.shape, bool), kh, kw, sh, sw, pt, pl, oh, ow, False)
    inside = inside.reshape(win.shape)  # excludes padding from ties at -inf
    first = ((win == win.max(axis=-1, keepdims=True)) & inside).argmax(axis=-1)
    isnan = np.isnan(win)
    last_nan = kk - 1 - isnan[..., ::-1].argmax(axis=-1)
    arg = np.where(isnan.any(axis=-1), last_nan, first)
    g = np.where(inside.any(axis=-1), dy, 0).astype(dx.dtype)  # all-padding windows: none
    onehot = np.where(arg[..., None] == np.arange(kk), g[..., None], dx.dtype.type(0))
    # reversed (i, j): each dx element then sums in ascending (oy, ox), as the numba loop
    order = [(i, j) for i in reversed(range(kh)) for j in reversed(range(kw))]
    scatter_windows(dx, onehot.reshape(g.shape + (kh, kw)), sh, sw, pt, pl, order)


def avgpool2d_fwd_numpy(
    x: Array, y: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int
) -> None:
    """Reference for :func:`avgpool2d_fwd_numba`."""
    oh, ow = y.shape[2:]
    win = padded_windows(x, kh, kw, sh, sw, pt, pl, oh, ow, 0.0)
    y[...] = win.sum(axis=(4, 5), dtype=np.float64) / (kh * kw)


def avgpool2d_bwd_numpy(
    dy: Array, dx: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int
) -> None:
    """Reference for :func:`avgpool2d_bwd_numba` (same summation order)."""
    g = dy / np.float32(kh * kw)
    scatter_windows(dx, np.broadcast_to(g[..., None, None], g.shape + (kh, kw)), sh, sw, pt, pl)


# ----------------------------------------------------------------------------- public

maxpool2d_fwd = pick(maxpool2d_fwd_numba, lean.maxpool2d_fwd)
maxpool2d_bwd = pick(maxpool2d_bwd_numba, lean_pool.maxpool2d_bwd)
maxpool2d_fwd_arg = pick(maxpool2d_fwd_arg_numba, lean_pool.maxpool2d_fwd_arg)
maxpool2d_bwd_arg = pick(maxpool2d_bwd_arg_numba, lean_pool.maxpool2d_bwd_arg)
avgpool2d_fwd = pick(avgpool2d_fwd_numba, lean.avgpool2d_fwd)
avgpool2d_bwd = pick(avgpool2d_bwd_numba, lean.avgpool2d_bwd)
