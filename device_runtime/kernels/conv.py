"""Convolution helpers: im2col / col2im and the layout copies around the matmul.

A convolution over a chunk of ``B`` samples is three steps, the middle one done by the
caller with ``np.matmul(..., out=...)``::

    im2col(x, col, ...)                 # (B, C, H, W) -> col (C*kh*kw, B*OH*OW)
    np.matmul(w2d, col, out=ychunk)     # (Cout, C*kh*kw) @ col -> (Cout, B*OH*OW)
    chunk_to_nchw_bias(ychunk, y, b)    # -> y (B, Cout, OH*OW)

and backwards ``nchw_to_chunk`` (dY), ``dW = dYc @ col.T``, ``dcol = W.T @ dYc`` then
``col2im``. Padding may be asymmetric (``'same'`` with even kernels): only the top and
left pads are passed; the bottom and right ones are implied by ``oh``/``ow``:
``OH = (H + pt + pb - kh) // sh + 1``.

All arrays are float32 and C-contiguous; every output is written into a caller-owned
array, so the numba kernels allocate nothing.
"""

from __future__ import annotations

import numpy as np

from .. import threads
from . import conv_copy, lean, lean_bias
from ._jit import njit, pick, prange

threads.configure()  # the GEMMs below run on BLAS threads chosen from the cores (threads.py)

Array = np.ndarray

# ----------------------------------------------------------------------------- numba


@njit
def _valid_range(pad: int, k: int, stride: int, size: int, n_out: int) -> tuple[int, int]:
    """Outputs ``o`` in ``[lo, hi)`` read an in-range input ``o*stride - pad + k``."""
    lo = -((k - pad) // stride)  # ceil((pad - k) / stride)
    hi = (size - 1 + pad - k) // stride + 1
    lo = min(max(lo, 0), n_out)
    hi = min(max(hi, lo), n_out)
    return lo, hi


# Why flat arrays and np.uint64 indices: numba wraps negative indices, and that check on a
# signed index (``ox + j - pl``) stops LLVM from vectorising the copy loops; slicing
# instead costs a view (and a refcount) per 32-float row. An unsigned index whose
# low part is the loop counter vectorises: 3-4x faster than either. Every index built
# here is in range by construction (see ``_valid_range``).


@njit(parallel=True)
def im2col_numba(
    x: Array, col: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, oh: int, ow: int,
    c0: int = 0,
) -> None:
    """Unfold x (B, C, H, W) into col (C*kh*kw, B*oh*ow); padding reads as 0.

    ``col[c*kh*kw + i*kw + j, b*oh*ow + oy*ow + ox] = x[b, c, oy*sh - pt + i, ox*sw - pl + j]``,
    so a (Cout, C, kh, kw) weight reshaped to (Cout, C*kh*kw) multiplies it directly.
    With ``c0``, col holds only the rows of channels ``c0 .. c0 + col.shape[0] // (kh*kw)``
    (a tile of them: the same values as those rows of the whole col).
    Parallel over ``col`` rows: no two steps write the same element.
    """
    nb, nc, h, w = x.shape
    kk = kh * kw
    ohow = oh * ow
    ncs = col.shape[0] // kk
    assert col.shape[0] == ncs * kk and 0 <= c0 and c0 + ncs <= nc, "im2col: col rows"
    assert col.shape[1] == nb * ohow, "im2col: col shape"
    hw = h * w
    ncol = col.shape[1]
    cf = col.reshape(col.size)  # views, not copies: both are C-contiguous
    xf = x.reshape(x.size)
    # stride 1 and ow == w ('same' or full-width): consecutive outputs read consecutive
    # inputs across rows, so each (row, sample) is one long copy plus a border fix-up
    runs = sh == 1 and sw == 1 and ow == w
    for r in prange(ncs * kk):
        c = c0 + r // kk
        i = (r % kk) // kw
        j = r % kw
        oy_lo, oy_hi = _valid_range(pt, i, sh, h, oh)
        ox_lo, ox_hi = _valid_range(pl, j, sw, w, ow)
        x0 = ox_lo * sw + j - pl  # first in-range input column
        for b in range(nb):
            base = r * ncol + b * ohow
            for t in range(oy_lo * ow):  # window rows in the top/bottom padding
                cf[np.uint64(base + t)] = 0.0
            for t in range(oy_hi * ow, ohow):
                cf[np.uint64(base + t)] = 0.0
            if runs:
                plane = (b * nc + c) * hw
                s0 = (oy_lo - pt + i) * w + j - pl  # relative to the plane; may be < 0
                q0 = base + oy_lo * ow
                n = (oy_hi - oy_lo) * ow
                # clip to the plane; what is cut, or wraps to a neighbouring row, is
                # a padding column and is zeroed by the loop below
                for t in range(max(0, -s0), min(n, hw - s0)):
                    cf[np.uint64(q0 + t)] = xf[np.uint64(plane + s0 + t)]
            for oy in range(oy_lo, oy_hi):
                q0 = base + oy * ow
                for t in range(ox_lo):
                    cf[np.uint64(q0 + t)] = 0.0
                for t in range(ox_hi, ow):
                    cf[np.uint64(q0 + t)] = 0.0
                if not runs:
                    s0 = ((b * nc + c) * h + oy * sh - pt + i) * w + x0
                    q1 = q0 + ox_lo
                    for t in range(ox_hi - ox_lo):
                        cf[np.uint64(q1 + t)] = xf[np.uint64(s0 + t * sw)]


@njit(parallel=True)
def col2im_numba(
    col: Array, dx: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, oh: int, ow: int,
    c0: int = 0,
) -> None:
    """Fold col (C*kh*kw, B*oh*ow) back into dx (B, C, H, W): the adjoint of im2col.

    dx is overwritten: zeroed, then every col entry added at its source position;
    entries that came from the padding are dropped. With ``c0``, col holds the rows of
    channels ``c0 ..`` only and just those channels of dx are written (a dx element sums
    only rows of its own channel, so a tile of channels gives the same values).
    Parallel over (b, c) planes, so the scatter-adds never race.
    """
    nb, nc, h, w = dx.shape
    ohow = oh * ow
    ncs = col.shape[0] // (kh * kw)
    assert col.shape[0] == ncs * kh * kw and 0 <= c0 and c0 + ncs <= nc, "col2im: col rows"
    assert col.shape[1] == nb * ohow, "col2im: col shape"
    hw = h * w
    ncol = col.shape[1]
    cf = col.reshape(col.size)
    df = dx.reshape(dx.size)
    for p in prange(nb * ncs):
        b = p // ncs
        c = p % ncs  # the row block of col; the plane of dx is channel c0 + c
        pbase = (b * nc + c0 + c) * hw
        for t in range(hw):
            df[np.uint64(pbase + t)] = 0.0
        # (i, j) outermost: each dx element receives its terms in (i, j) order, the
        # same order as the numpy reference, so both round identically
        for i in range(kh):
            oy_lo, oy_hi = _valid_range(pt, i, sh, h, oh)
            for j in range(kw):
                ox_lo, ox_hi = _valid_range(pl, j, sw, w, ow)
                x0 = ox_lo * sw + j - pl
                rbase = ((c * kh + i) * kw + j) * ncol + b * ohow + ox_lo
                for oy in range(oy_lo, oy_hi):
                    d0 = pbase + (oy * sh - pt + i) * w + x0
                    s0 = rbase + oy * ow
                    for t in range(ox_hi - ox_lo):
                        df[np.uint64(d0 + t * sw)] += cf[np.uint64(s0 + t)]


@njit(parallel=True)
def chunk_to_nchw_numba(src: Array, dst: Array) -> None:
    """``dst[b, c, p] = src[c, b*HW + p]``: a matmul result (Cout, B*HW) to (B, Cout, HW)."""
    nb, nc, hw = dst.shape
    assert src.shape[0] == nc and src.shape[1] == nb * hw, "chunk_to_nchw: shapes"
    sf = src.reshape(src.size)
    df = dst.reshape(dst.size)
    for t in prange(nb * nc):  # t = b*nc + c: one (b, c) plane of dst
        s0 = (t % nc) * nb * hw + (t // nc) * hw
        for k in range(hw):
            df[np.uint64(t * hw + k)] = sf[np.uint64(s0 + k)]


@njit(parallel=True)
def chunk_to_nchw_bias_numba(src: Array, dst: Array, bias: Array) -> None:
    """``dst[b, c, p] = src[c, b*HW + p] + bias[c]`` (chunk_to_nchw plus a bias)."""
    nb, nc, hw = dst.shape
    assert src.shape[0] == nc and src.shape[1] == nb * hw, "chunk_to_nchw_bias: shapes"
    assert bias.shape[0] == nc, "chunk_to_nchw_bias: bias shape"
    sf = src.reshape(src.size)
    df = dst.reshape(dst.size)
    for t in prange(nb * nc):
        c = t % nc
        s0 = c * nb * hw + (t // nc) * hw
        bc = bias[c]
        for k in range(hw):
            df[np.uint64(t * hw + k)] = sf[np.uint64(s0 + k)] + bc


@njit(parallel=True)
def nchw_to_chunk_numba(src: Array, dst: Array) -> None:
    """``dst[c, b*HW + p] = src[b, c, p]``: (B, C, HW) to a matmul operand (C, B*HW)."""
    nb, nc, hw = src.shape
    assert dst.shape[0] == nc and dst.shape[1] == nb * hw, "nchw_to_chunk: shapes"
    sf = src.reshape(src.size)
    df = dst.reshape(dst.size)
    for t in prange(nb * nc):
        d0 = (t % nc) * nb * hw + (t // nc) * hw
        for k in range(hw):
            df[np.uint64(d0 + k)] = sf[np.uint64(t * hw + k)]


@njit(parallel=True)
def bias_grad_nchw_numba(dy: Array, db: Array, accumulate: bool) -> None:
    """``db[c] = sum(dy[:, c, :])`` (``+=`` when accumulate), summed in float64."""
    nb, nc, hw = dy.shape
    assert db.shape[0] == nc, "bias_grad_nchw: db shape"
    for c in prange(nc):
        # four partial sums break the add-latency chain (fastmath is off)
        # np.float64, not 0.0: plain Python (NUMBA_DISABLE_JIT) would sum in float32
        a0 = np.float64(0.0)
        a1 = np.float64(0.0)
        a2 = np.float64(0.0)
        a3 = np.float64(0.0)
        for b in range(nb):
            k = 0
            while k + 4 <= hw:
                a0 += dy[b, c, k]
                a1 += dy[b, c, k + 1]
                a2 += dy[b, c, k + 2]
                a3 += dy[b, c, k + 3]
                k += 4
            while k < hw:
                a0 += dy[b, c, k]
                k += 1
        acc = (a0 + a1) + (a2 + a3)
        if accumulate:
            db[c] = db[c] + acc
        else:
            db[c] = acc


# ----------------------------------------------------------------------------- numpy


def padded_windows(
    x: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, oh: int, ow: int,
    value: float = 0.0,
) -> Array:
    """Window view (B, C, oh, ow, kh, kw) of x padded with ``value`` (numpy helper)."""
    h, w = x.shape[2:]
    pb = max(0, (oh - 1) * sh + kh - h - pt)
    pr = max(0, (ow - 1) * sw + kw - w - pl)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)
    v = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return v[:, :, ::sh, ::sw][:, :, :oh, :ow]


def scatter_windows(
    dx: Array, g: Array, sh: int, sw: int, pt: int, pl: int,
    order: list[tuple[int, int]] | None = None,
) -> None:
    """dx = g (B, C, oh, ow, kh, kw) added back at each window's source; pads dropped.

    numpy helper, the adjoint of :func:`padded_windows`. Window offsets (i, j) are added
    in ``order`` (default row-major), which fixes each element's summation order.
    """
    nb, nc, h, w = dx.shape
    oh, ow, kh, kw = g.shape[2:]
    pb = max(0, (oh - 1) * sh + kh - h - pt)
    pr = max(0, (ow - 1) * sw + kw - w - pl)
    dxp = np.zeros((nb, nc, h + pt + pb, w + pl + pr), dtype=dx.dtype)
    for i, j in order or [(i, j) for i in range(kh) for j in range(kw)]:
        dxp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw] += g[..., i, j]
    dx[...] = dxp[:, :, pt:pt + h, pl:pl + w]


def im2col_numpy(
    x: Array, col: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, oh: int, ow: int,
    c0: int = 0,
) -> None:
    """Reference for :func:`im2col_numba`."""
    nb, nc = x.shape[0], col.shape[0] // (kh * kw)
    v = padded_windows(x[:, c0:c0 + nc], kh, kw, sh, sw, pt, pl, oh, ow)  # (B,C,oh,ow,kh,kw)
    col[...] = v.transpose(1, 4, 5, 0, 2, 3).reshape(nc * kh * kw, nb * oh * ow)


def col2im_numpy(
    col: Array, dx: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, oh: int, ow: int,
    c0: int = 0,
) -> None:
    """Reference for :func:`col2im_numba` (same (i, j) summation order: same rounding)."""
    nb, nc = dx.shape[0], col.shape[0] // (kh * kw)
    g = col.reshape(nc, kh, kw, nb, oh, ow).transpose(3, 0, 4, 5, 1, 2)  # (B,C,oh,ow,kh,kw)
    out = dx[:, c0:c0 + nc]
    part = np.empty(out.shape, out.dtype)
    scatter_windows(part, g, sh, sw, pt, pl)
    out[...] = part


def im2col_lean(
    x: Array, col: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, oh: int, ow: int,
    c0: int = 0,
) -> None:
    """:func:`im2col_numba` without numba, allocation-free (kernels/lean.py on a channel
    view of x)."""
    lean.im2col(x[:, c0:c0 + col.shape[0] // (kh * kw)], col, kh, kw, sh, sw, pt, pl, oh, ow)


def col2im_lean(
    col: Array, dx: Array, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, oh: int, ow: int,
    c0: int = 0,
) -> None:
    """:func:`col2im_numba` without numba, allocation-free (kernels/lean.py)."""
    lean.col2im(col, dx[:, c0:c0 + col.shape[0] // (kh * kw)], kh, kw, sh, sw, pt, pl, oh, ow)


def chunk_to_nchw_numpy(src: Array, dst: Array) -> None:
    """Reference for :func:`chunk_to_nchw_numba`."""
    nb, nc, hw = dst.shape
    dst[...] = src.reshape(nc, nb, hw).transpose(1, 0, 2)


def chunk_to_nchw_bias_numpy(src: Array, dst: Array, bias: Array) -> None:
    """Reference for :func:`chunk_to_nchw_bias_numba`."""
    nb, nc, hw = dst.shape
    np.add(src.reshape(nc, nb, hw).transpose(1, 0, 2), bias[None, :, None], out=dst)


def nchw_to_chunk_numpy(src: Array, dst: Array) -> None:
    """Reference for :func:`nchw_to_chunk_numba`."""
    nb, nc, hw = src.shape
    dst.reshape(nc, nb, hw)[...] = src.transpose(1, 0, 2)


def bias_grad_nchw_numpy(dy: Array, db: Array, accumulate: bool) -> None:
    """Reference for :func:`bias_grad_nchw_numba`."""
    s = dy.sum(axis=(0, 2), dtype=np.float64)
    db[...] = db + s if accumulate else s


# ----------------------------------------------------------------------------- public

# the serial copy kernels (issue 17: same values, faster access order; conv_copy.py)
im2col = pick(conv_copy.im2col_copy, im2col_lean)
col2im = pick(conv_copy.col2im_copy, col2im_lean)
chunk_to_nchw = pick(chunk_to_nchw_numba, chunk_to_nchw_numpy)
chunk_to_nchw_bias = pick(chunk_to_nchw_bias_numba, lean_bias.chunk_to_nchw_bias)
nchw_to_chunk = pick(nchw_to_chunk_numba, nchw_to_chunk_numpy)
bias_grad_nchw = pick(bias_grad_nchw_numba, lean_bias.bias_grad_nchw)
