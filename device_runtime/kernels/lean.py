"""Allocation-free numpy kernels: the runtime without numba.

Without numba (``NNFLEET_NO_NUMBA=1``, or a board where it is not installed) the runtime
does not load numba and LLVM at all, about 130 MiB less resident memory. The ``*_numpy``
references in the other kernel modules are written for clarity and make temporaries
the size of their input; these versions work block by block through small reused
buffers (:data:`SCRATCH_BYTES` each) and write into the caller's arrays, so a training
step allocates nothing that grows with the model (what remains is numpy's own fixed
iteration buffer, at most ``np.getbufsize()`` elements per operand). They compute what
the numba kernels compute, operation for operation (float64 where those use float64,
rounding at the same points): the copies, maxima and element-wise ones are bit-identical
to numba; the batch-norm statistics sum in a different order (pairwise), which can move
the last bit.

Covered: what a frozen backbone runs (im2col, batch-norm statistics and affine, ReLU
with or without its bit mask, average and max pooling), and the backward kernels of a
convolution, batch norm, ReLU and average pooling (col2im, bn_backward, the ReLU mask,
avgpool2d_bwd), and the SGD step. The other kernels' lean versions are in lean_optim,
lean_pool, lean_seq, lean_misc, lean_elem and lean_loss (same scratch buffers).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

Arr = np.ndarray

SCRATCH_BYTES = 256 * 1024  # per dtype; grows only for a single row larger than this
_scratch: dict[str, np.ndarray] = {}


def scratch(n: int, dtype: type = np.float64, slot: int = 0) -> np.ndarray:
    """A reusable 1-D buffer of at least ``n`` elements (contents undefined); kernels that
    need two buffers of one dtype at once take slots 0 and 1."""
    key = f"{np.dtype(dtype).str}/{slot}"
    buf = _scratch.get(key)
    if buf is None or buf.size < n:
        size = max(n, SCRATCH_BYTES // np.dtype(dtype).itemsize)
        buf = _scratch[key] = np.empty(size, dtype)
    return buf[:n]


def clear_scratch() -> None:
    """Drop the scratch buffers (they are made again on first use): a long-lived process
    that runs one device after another starts each from none, so that a buffer grown for
    one device's rows is not charged to the next."""
    _scratch.clear()


def _span(pad: int, k: int, stride: int, size: int, n_out: int) -> tuple[int, int]:
    """Outputs ``o`` in ``[lo, hi)`` read an in-range input ``o*stride - pad + k``."""
    lo = -((k - pad) // stride)
    hi = (size - 1 + pad - k) // stride + 1
    lo = min(max(lo, 0), n_out)
    return lo, min(max(hi, lo), n_out)


def _offsets(kh: int, kw: int, sh: int, sw: int, pt: int, pl: int, h: int, w: int, oh: int,
             ow: int) -> Iterator[tuple[int, int, tuple[int, int, int, int], tuple[slice, slice]]]:
    """Each window offset (i, j) in row-major order, with the output range (y0, y1, x0, x1)
    whose window reads an in-range input there, and the strided input slices it reads."""
    for i in range(kh):
        y0, y1 = _span(pt, i, sh, h, oh)
        for j in range(kw):
            x0, x1 = _span(pl, j, sw, w, ow)
            iy, ix = y0 * sh - pt + i, x0 * sw - pl + j
            yield i, j, (y0, y1, x0, x1), (slice(iy, iy + (y1 - y0 - 1) * sh + 1, sh),
                                           slice(ix, ix + (x1 - x0 - 1) * sw + 1, sw))


def _rows(total: int, row: int, limit: int | None = None) -> list[tuple[int, int]]:
    """Split ``total`` rows of ``row`` elements into blocks of at most ``limit`` elements
    (default: as many float64 as fit in the scratch buffer)."""
    step = max(1, (limit or SCRATCH_BYTES // 8) // max(row, 1))
    return [(a, min(a + step, total)) for a in range(0, total, step)]


# ----------------------------------------------------------------------------- conv
def im2col(x: Arr, col: Arr, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int,
           oh: int, ow: int) -> None:
    """As ``conv.im2col_numba``: ``kh*kw`` strided copies, padding written as 0."""
    nb, nc, h, w = x.shape
    c6 = col.reshape(nc, kh, kw, nb, oh, ow)
    xt = x.transpose(1, 0, 2, 3)
    for i, j, (y0, y1, x0, x1), src in _offsets(kh, kw, sh, sw, pt, pl, h, w, oh, ow):
        dst = c6[:, i, j]
        if y0 > 0 or y1 < oh or x0 > 0 or x1 < ow:
            dst[:, :, :y0] = 0
            dst[:, :, y1:] = 0
            dst[:, :, y0:y1, :x0] = 0
            dst[:, :, y0:y1, x1:] = 0
        if y1 > y0 and x1 > x0:
            np.copyto(dst[:, :, y0:y1, x0:x1], xt[:, :, src[0], src[1]])


def col2im(col: Arr, dx: Arr, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int,
           oh: int, ow: int) -> None:
    """As ``conv.col2im_numba``: dx zeroed, then each (i, j) slice of col added at its
    source, in (i, j) order, so every element sums its terms in the same order."""
    nb, nc, h, w = dx.shape
    c6 = col.reshape(nc, kh, kw, nb, oh, ow)
    dt = dx.transpose(1, 0, 2, 3)
    dx.fill(0)
    for i, j, (y0, y1, x0, x1), src in _offsets(kh, kw, sh, sw, pt, pl, h, w, oh, ow):
        if y1 > y0 and x1 > x0:
            dst = dt[:, :, src[0], src[1]]
            np.add(dst, c6[:, i, j, :, y0:y1, x0:x1], out=dst)


# ----------------------------------------------------------------------------- batch norm
_CHANNELS: list[np.ndarray] = []


def _channels(rows: int, c: int) -> list[np.ndarray]:
    """``rows`` reusable float64 vectors of length ``c``, for per-channel values (a kernel
    takes all it needs in one call, so the rows of one call never overlap)."""
    if not _CHANNELS or _CHANNELS[0].shape[0] < rows or _CHANNELS[0].shape[1] < c:
        old = _CHANNELS[0].shape if _CHANNELS else (0, 0)
        _CHANNELS[:] = [np.empty((max(rows, old[0]), max(c, old[1])), np.float64)]
    return list(_CHANNELS[0][:rows, :c])


def _f64_blocks(x: Arr, slot: int = 0) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """Yield ((sample slice, channel slice), float64 copy of that block of x (N, C, S)), in
    scratch ``slot``. Copying first keeps numpy from casting through its own 64 KiB buffer,
    which a mixed float32/float64 ufunc allocates on every call."""
    n, c, s = x.shape
    for c0, c1 in _rows(c, n * s):
        for n0, n1 in _rows(n, (c1 - c0) * s):
            blk = scratch((n1 - n0) * (c1 - c0) * s, np.float64, slot)
            blk = blk.reshape(n1 - n0, c1 - c0, s)
            np.copyto(blk, x[n0:n1, c0:c1])
            yield (slice(n0, n1), slice(c0, c1)), blk


def bn_stats(x: Arr, mean: Arr, var: Arr, invstd: Arr, eps: float) -> None:
    """As ``norm.bn_stats_numba``: per-channel mean and biased variance, float64 sums."""
    n, c, s = x.shape
    m = n * s
    mu, acc, part = _channels(3, c)
    mu.fill(0.0)
    for (_, cs), blk in _f64_blocks(x):
        np.sum(blk, axis=(0, 2), out=part[cs])
        np.add(mu[cs], part[cs], out=mu[cs])
    np.divide(mu, m, out=mu)
    acc.fill(0.0)
    for (_, cs), blk in _f64_blocks(x):
        np.subtract(blk, mu[cs, None], out=blk)
        np.multiply(blk, blk, out=blk)
        np.sum(blk, axis=(0, 2), out=part[cs])
        np.add(acc[cs], part[cs], out=acc[cs])
    np.divide(acc, m, out=acc)  # the biased variance
    np.copyto(mean, mu, casting="same_kind")
    np.copyto(var, acc, casting="same_kind")
    np.add(acc, eps, out=part)  # invstd = 1 / sqrt(var + eps)
    np.sqrt(part, out=part)
    np.divide(1.0, part, out=part)
    np.copyto(invstd, part, casting="same_kind")


def _xhat_blocks(x: Arr, mean: Arr, invstd: Arr, m64: Arr,
                 k64: Arr) -> Iterator[tuple[tuple[slice, slice], np.ndarray]]:
    """Yield (slices, float64 block of canonical xhat = f64(f32((x - mean) * invstd)));
    ``m64`` and ``k64`` are the caller's per-channel work vectors."""
    np.copyto(m64, mean)
    np.copyto(k64, invstd)
    for sl, blk in _f64_blocks(x):
        cs = sl[1]
        np.subtract(blk, m64[cs, None], out=blk)
        np.multiply(blk, k64[cs, None], out=blk)
        b32 = scratch(blk.size, np.float32).reshape(blk.shape)
        np.copyto(b32, blk, casting="same_kind")  # the float32 rounding of xhat
        np.copyto(blk, b32)
        yield sl, blk


def bn_backward(dy: Arr, x: Arr, mean: Arr, knorm: Arr, invstd: Arr, gamma: Arr,
                dx: Arr, dgamma: Arr, dbeta: Arr) -> None:
    """As ``norm.bn_backward_numba`` (dx may alias dy); its float64 channel sums run in
    another order, so the last bit may differ."""
    n, c, s = dy.shape
    m = n * s
    m64, k64, sdy, sdyx, part, f = _channels(6, c)
    sdy.fill(0.0)
    sdyx.fill(0.0)
    # x and dy have one shape: their blocks pair up
    for (sl, xh), (_, d64) in zip(_xhat_blocks(x, mean, knorm, m64, k64), _f64_blocks(dy, 1)):
        cs = sl[1]
        np.sum(d64, axis=(0, 2), out=part[cs])
        np.add(sdy[cs], part[cs], out=sdy[cs])
        np.multiply(d64, xh, out=d64)
        np.sum(d64, axis=(0, 2), out=part[cs])
        np.add(sdyx[cs], part[cs], out=sdyx[cs])
    np.copyto(dgamma, sdyx, casting="same_kind")
    np.copyto(dbeta, sdy, casting="same_kind")
    np.copyto(f, gamma)
    np.multiply(f, invstd, out=f)  # gamma * invstd
    np.divide(sdy, m, out=sdy)  # a
    np.divide(sdyx, m, out=sdyx)  # bq
    # dx = f * ((dy - a) - xh * bq), in that order
    for (sl, xh), (_, t) in zip(_xhat_blocks(x, mean, knorm, m64, k64), _f64_blocks(dy, 1)):
        cs = sl[1]
        np.subtract(t, sdy[cs, None], out=t)
        np.multiply(xh, sdyx[cs, None], out=xh)
        np.subtract(t, xh, out=t)
        np.multiply(t, f[cs, None], out=t)
        np.copyto(dx[sl], t, casting="same_kind")


def bn_normalize(x: Arr, mean: Arr, invstd: Arr, out: Arr) -> None:
    """As ``norm.bn_normalize_numba``: out = xhat (float32); out may alias x."""
    for sl, blk in _xhat_blocks(x, mean, invstd, *_channels(2, x.shape[1])):
        np.copyto(out[sl], blk, casting="same_kind")


def bn_affine(x: Arr, mean: Arr, invstd: Arr, gamma: Arr, beta: Arr, y: Arr) -> None:
    """As ``norm.bn_affine_numba``: y = gamma * xhat + beta; y may alias x."""
    m64, k64, g64, b64 = _channels(4, x.shape[1])
    np.copyto(g64, gamma)
    np.copyto(b64, beta)
    for sl, blk in _xhat_blocks(x, mean, invstd, m64, k64):
        np.multiply(blk, g64[sl[1], None], out=blk)
        np.add(blk, b64[sl[1], None], out=blk)
        np.copyto(y[sl], blk, casting="same_kind")


# ----------------------------------------------------------------------------- relu
def relu_fwd(x: Arr, y: Arr) -> None:
    """As ``activation.relu_fwd_numba``: y = +0.0 where x <= 0, else x (NaN passes).

    ``max(x, 0)`` keeps -0.0 (and -0.0 of a negative x's max is possible), adding +0.0
    turns every zero into +0.0 and changes nothing else: two passes, no scratch.
    """
    np.maximum(x, np.float32(0), out=y)
    np.add(y, np.float32(0), out=y)


# The ReLU mask: bit k of byte i is element 8i + k (np.packbits' "little" order), packed
# and unpacked with shifts into the caller's mask, since np.packbits/np.unpackbits
# return new arrays. A block is whole bytes; the last may end mid-byte (its bits past the
# end are 0).
def _mask_step() -> int:
    """Elements per mask block: whole bytes, half the scratch size."""
    return max(8, SCRATCH_BYTES // 2 // 8 * 8)


def _mask_block(n: int, a: int) -> tuple[int, int, np.ndarray]:
    """End of the block starting at element ``a``, its bytes, and its bits as a (bytes, 8)
    uint8 view of scratch (one element per bit)."""
    b = min(a + _mask_step(), n)
    nbytes = (b - a + 7) // 8
    return b, nbytes, scratch(8 * nbytes, np.uint8).reshape(nbytes, 8)


def relu_mask_fwd(x: Arr, y: Arr, mask: Arr, slope: float) -> None:
    """As ``bitmask.relu_mask_fwd_numba``: y = x if x > 0 else slope * x; bits of x > 0."""
    n = x.shape[0]
    s = np.float32(slope)
    for a in range(0, n, _mask_step()):
        b, nbytes, bits = _mask_block(n, a)
        flat = bits.reshape(-1)
        pos = flat[:b - a].view(np.bool_)
        np.greater(x[a:b], 0, out=pos)
        flat[b - a:] = 0
        neg = scratch(b - a, np.bool_)
        np.logical_not(pos, out=neg)
        if y is not x:
            np.copyto(y[a:b], x[a:b], where=pos)
        np.multiply(x[a:b], s, out=y[a:b], where=neg)
        out, tmp = mask[a // 8:a // 8 + nbytes], scratch(nbytes, np.uint8, 1)
        np.copyto(out, bits[:, 0])
        for k in range(1, 8):
            np.left_shift(bits[:, k], k, out=tmp)
            np.bitwise_or(out, tmp, out=out)


def relu_mask_bwd(mask: Arr, dy: Arr, dx: Arr, slope: float) -> None:
    """As ``bitmask.relu_mask_bwd_numba``: dx = dy where the bit is set, else slope * dy;
    dx may alias dy."""
    n = dy.shape[0]
    s = np.float32(slope)
    for a in range(0, n, _mask_step()):
        b, nbytes, bits = _mask_block(n, a)
        src = mask[a // 8:a // 8 + nbytes]
        for k in range(8):
            np.right_shift(src, k, out=bits[:, k])
            np.bitwise_and(bits[:, k], 1, out=bits[:, k])
        pos = bits.reshape(-1)[:b - a].view(np.bool_)
        neg = scratch(b - a, np.bool_)
        np.logical_not(pos, out=neg)
        if dx is not dy:
            np.copyto(dx[a:b], dy[a:b], where=pos)
        np.multiply(dy[a:b], s, out=dx[a:b], where=neg)


# ----------------------------------------------------------------------------- pooling
def _pool(x: Arr, y: Arr, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int,
          acc_dtype: type, init: float, op: np.ufunc, scale: float | None) -> None:
    """Window reduction over (i, j) offsets in row-major order, into ``y`` via scratch."""
    nb, nc, h, w = x.shape
    oh, ow = y.shape[2:]
    xp, yp = x.reshape(nb * nc, h, w), y.reshape(nb * nc, oh, ow)
    for p0, p1 in _rows(nb * nc, oh * ow, SCRATCH_BYTES // np.dtype(acc_dtype).itemsize):
        acc = scratch((p1 - p0) * oh * ow, acc_dtype).reshape(p1 - p0, oh, ow)
        acc.fill(init)
        for _, _, (y0, y1, x0, x1), src in _offsets(kh, kw, sh, sw, pt, pl, h, w, oh, ow):
            if y1 > y0 and x1 > x0:
                dst = acc[:, y0:y1, x0:x1]
                op(dst, xp[p0:p1, src[0], src[1]], out=dst)
        if scale is not None:
            np.divide(acc, scale, out=acc)
        np.copyto(yp[p0:p1], acc, casting="same_kind")


def avgpool2d_fwd(x: Arr, y: Arr, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int) -> None:
    """As ``pool.avgpool2d_fwd_numba``: float64 window sums / (kh*kw), same order."""
    _pool(x, y, kh, kw, sh, sw, pt, pl, np.float64, 0.0, np.add, float(kh * kw))


def maxpool2d_fwd(x: Arr, y: Arr, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int) -> None:
    """As ``pool.maxpool2d_fwd_numba``: window maxima (padding never wins; NaN wins)."""
    _pool(x, y, kh, kw, sh, sw, pt, pl, np.float32, -np.inf, np.maximum, None)


def avgpool2d_bwd(dy: Arr, dx: Arr, kh: int, kw: int, sh: int, sw: int, pt: int, pl: int) -> None:
    """As ``pool.avgpool2d_bwd_numba``: dx zeroed, then float32(dy / (kh*kw)) added over each
    window offset (i, j) in row-major order (the same order per element)."""
    nb, nc, h, w = dx.shape
    oh, ow = dy.shape[2:]
    dyp, dxp = dy.reshape(nb * nc, oh, ow), dx.reshape(nb * nc, h, w)
    kk = np.float32(kh * kw)
    dx.fill(0)
    for p0, p1 in _rows(nb * nc, oh * ow, SCRATCH_BYTES // 4):
        g = scratch((p1 - p0) * oh * ow, np.float32).reshape(p1 - p0, oh, ow)
        np.divide(dyp[p0:p1], kk, out=g)
        for _, _, (y0, y1, x0, x1), src in _offsets(kh, kw, sh, sw, pt, pl, h, w, oh, ow):
            if y1 > y0 and x1 > x0:
                dst = dxp[p0:p1, src[0], src[1]]
                np.add(dst, g[:, y0:y1, x0:x1], out=dst)


# ----------------------------------------------------------------------------- optimizer
def _fma(a: Arr, b: np.float64, c: Arr, t: Arr, u: Arr, out: Arr) -> None:
    """out = float32(f64(a) * b + f64(c)) (one rounding), via the float64 buffers t, u:
    a mixed-dtype ufunc would cast through numpy's own buffer, allocated per call (and
    numpy 1.x's value-based casting would multiply a float32 array by a float64 scalar in
    float32, 1 ulp off numba's)."""
    np.copyto(t, a)
    np.multiply(t, b, out=t)
    np.copyto(u, c)
    np.add(t, u, out=t)
    np.copyto(out, t, casting="same_kind")


def sgd_step(w: Arr, g: Arr, buf: Arr, lr: float, momentum: float, weight_decay: float,
             nesterov: bool, first_step: bool) -> None:
    """As ``optim.sgd_step_numba``, block by block: the same float32 operations, and the
    same fused multiply-adds (float64 product and sum, one rounding)."""
    f32, f64 = np.float32, np.float64
    for a, b in _rows(w.shape[0], 2):
        d = scratch(b - a, np.float32)
        t, u = scratch(2 * (b - a), np.float64).reshape(2, b - a)
        np.copyto(d, g[a:b])
        if weight_decay != 0.0:  # d = fma(w, wd, d)
            _fma(w[a:b], f64(f32(weight_decay)), d, t, u, d)
        if momentum != 0.0:
            mb = buf[a:b]
            if first_step:
                np.copyto(mb, d)
            else:
                np.multiply(mb, f32(momentum), out=mb)
                np.add(mb, d, out=mb)
            if nesterov:  # d = fma(buf, momentum, d)
                _fma(mb, f64(f32(momentum)), d, t, u, d)
            else:
                np.copyto(d, mb)
        _fma(d, f64(f32(-lr)), w[a:b], t, u, w[a:b])  # w = fma(d, -lr, w)
