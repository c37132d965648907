"""Allocation-free numpy attention, embedding, layer-norm and conv1d im2col / col2im
kernels (see :mod:`.lean`).

* embedding lookup and scatter-add: bit-identical to ``embedding.*_numba`` (row copies;
  the gradient adds in float32 in row order, as numba does, via ``np.add.at``);
* attention: per (sample, head), float64 copies of that head's q, k, v and BLAS
  products; the element-wise steps and float32 roundings are numba's (scores rounded
  to float32 before the exp, the exps rounded before the division), but the dot
  products and the softmax sums run in another order: within float32 rounding;
* layer norm: numba's float64 expressions per element; the row (and, for the
  parameter gradients, column) sums are numpy's pairwise ones: within float32 rounding;
* conv1d im2col / col2im: strided copies, and float32 adds in numba's order: bit-identical.

Work arrays come from :func:`.lean.scratch` (float64 slots 2 and 3): row blocks of at
most one buffer, or, for attention, one head's ``(Tq, Tk)`` scores, a 1/(B*H) part of
the layer's own attention tensor.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import lean
from .lean import _rows, _span, scratch

Arr = np.ndarray


def _carve(buf: Arr, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Consecutive pieces of the 1-D ``buf`` with the given shapes."""
    out, at = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(buf[at:at + n].reshape(s))
        at += n
    return out


# ----------------------------------------------------------------------------- attention
def attention_fwd(q: Arr, k: Arr, v: Arr, a: Arr, o: Arr, scale: float, causal: bool) -> None:
    """As ``attention.attention_fwd_numba`` (within float32 rounding: BLAS dot products,
    pairwise softmax sums)."""
    B, H, Tq, Tk = a.shape
    P, Pv = q.shape[2] // H, v.shape[2] // H
    shapes = ((Tq, P), (Tk, P), (Tk, Pv), (Tq, Tk), (Tq, Pv), (Tq,))
    qh, kh, vh, s, oh, mx = _carve(scratch(sum(int(np.prod(x)) for x in shapes), np.float64, 2),
                                   *shapes)
    s32 = scratch(Tq * Tk, np.float32).reshape(Tq, Tk)
    for b in range(B):
        for h in range(H):
            np.copyto(qh, q[b, :, h * P:(h + 1) * P])
            np.copyto(kh, k[b, :, h * P:(h + 1) * P])
            np.copyto(vh, v[b, :, h * Pv:(h + 1) * Pv])
            np.matmul(qh, kh.T, out=s)
            np.multiply(s, scale, out=s)
            if causal:  # keys j > i: exp(-inf) = 0, so a = 0 there
                for i in range(min(Tq, Tk - 1)):
                    s[i, i + 1:] = -np.inf
            np.max(s, axis=1, out=mx)  # the maximum of the unrounded scores
            np.copyto(s32, s, casting="same_kind")  # numba stores the scores in a
            np.copyto(s, s32)
            np.subtract(s, mx[:, None], out=s)
            np.exp(s, out=s)
            np.sum(s, axis=1, out=mx)  # the sum of the unrounded exps
            np.copyto(s32, s, casting="same_kind")  # ... and the exps
            np.copyto(s, s32)
            np.divide(s, mx[:, None], out=s)
            np.copyto(a[b, h], s, casting="same_kind")
            np.copyto(s, a[b, h])  # o = a v from the stored (float32) a
            np.matmul(s, vh, out=oh)
            np.copyto(o[b, :, h * Pv:(h + 1) * Pv], oh, casting="same_kind")


def attention_bwd(do: Arr, a: Arr, q: Arr, k: Arr, v: Arr, dq: Arr, dk: Arr, dv: Arr,
                  scale: float, ds: Arr) -> None:
    """As ``attention.attention_bwd_numba`` (within float32 rounding); ds (Tq, Tk)
    float64 is the layer's scratch."""
    B, H, Tq, Tk = a.shape
    P, Pv = q.shape[2] // H, v.shape[2] // H
    shapes = ((Tq, Pv), (Tk, Pv), (Tq, Tk), (Tq, Tk), (Tq, P), (Tk, P),
              (max(Tq, Tk) * max(P, Pv),), (Tq,))
    doh, vh, ah, w, qh, kh, res, dot = _carve(
        scratch(sum(int(np.prod(x)) for x in shapes), np.float64, 2), *shapes)
    for b in range(B):
        for h in range(H):
            np.copyto(doh, do[b, :, h * Pv:(h + 1) * Pv])
            np.copyto(vh, v[b, :, h * Pv:(h + 1) * Pv])
            np.copyto(qh, q[b, :, h * P:(h + 1) * P])
            np.copyto(kh, k[b, :, h * P:(h + 1) * P])
            np.copyto(ah, a[b, h])
            np.matmul(doh, vh.T, out=ds)  # da = do v^T
            np.multiply(ds, ah, out=w)  # ds = a * (da - rowsum(da * a)) * scale
            np.sum(w, axis=1, out=dot)
            np.subtract(ds, dot[:, None], out=ds)
            np.multiply(ah, ds, out=ds)
            np.multiply(ds, scale, out=ds)
            for dst, lhs, rhs, cols in ((dq, ds, kh, P), (dk, ds.T, qh, P), (dv, ah.T, doh, Pv)):
                r = res[:lhs.shape[0] * cols].reshape(lhs.shape[0], cols)
                np.matmul(lhs, rhs, out=r)
                np.copyto(dst[b, :, h * cols:(h + 1) * cols], r, casting="same_kind")


# ----------------------------------------------------------------------------- embedding
def _ids(ids: Arr, V: int, mask_id: int, r0: int, r1: int) -> tuple[Arr, Arr, Arr]:
    """For rows [r0, r1): (in range, == mask_id, row index) as numba reads an id: in
    (-1, V) (NaN is not), truncated toward 0."""
    n = r1 - r0
    ok, msk = scratch(2 * n, np.bool_).reshape(2, n)
    idb = ids[r0:r1]
    np.greater(idb, -1.0, out=ok)
    np.less(idb, V, out=msk)
    np.logical_and(ok, msk, out=ok)
    t = scratch(n, np.float32)
    t.fill(0)
    np.copyto(t, idb, where=ok)
    kk = scratch(n, np.intp)
    np.copyto(kk, t, casting="unsafe")
    np.equal(kk, mask_id, out=msk)
    return ok, msk, kk


def embedding_fwd(ids: Arr, w: Arr, y: Arr, mask_id: int) -> int:
    """As ``embedding.embedding_fwd_numba``: y[r] = w[ids[r]] (0 for ``mask_id``), rows
    with an id out of range untouched; returns their count. Bit-identical."""
    V, D = w.shape
    bad = 0
    for r0, r1 in _rows(ids.shape[0], D, lean.SCRATCH_BYTES // 4):
        ok, msk, kk = _ids(ids, V, mask_id, r0, r1)
        bad += (r1 - r0) - int(np.count_nonzero(ok))
        tmp = scratch((r1 - r0) * D, np.float32, 1).reshape(r1 - r0, D)
        np.take(w, kk, axis=0, out=tmp, mode="clip")  # "raise" would buffer the output
        np.copyto(tmp, 0.0, where=msk[:, None])
        np.copyto(y[r0:r1], tmp, where=ok[:, None])
    return bad


def embedding_bwd(ids: Arr, dy: Arr, g: Arr, mask_id: int) -> None:
    """As ``embedding.embedding_bwd_numba``: g (zeroed) += dy[r] at row ids[r], float32
    adds in row order (rows out of range or ``mask_id`` add an exact +0.0: g starts at
    +0.0 and a sum of them is never -0.0). Bit-identical."""
    V, D = g.shape
    g.fill(0)
    for r0, r1 in _rows(ids.shape[0], D, lean.SCRATCH_BYTES // 4):
        ok, msk, kk = _ids(ids, V, mask_id, r0, r1)
        np.logical_not(msk, out=msk)
        np.logical_and(ok, msk, out=ok)
        tmp = scratch((r1 - r0) * D, np.float32, 1).reshape(r1 - r0, D)
        np.copyto(tmp, dy[r0:r1])
        np.logical_not(ok, out=msk)
        np.copyto(tmp, 0.0, where=msk[:, None])
        np.add.at(g, kk, tmp)


# ----------------------------------------------------------------------------- layer norm
def _ln_blocks(R: int, N: int, count: int) -> tuple[list[tuple[int, int]], int]:
    """Row blocks whose ``count`` float64 (rows, N) arrays fit one scratch buffer."""
    blocks = _rows(R, N, lean.SCRATCH_BYTES // 8 // count)
    return blocks, max((b - a for a, b in blocks), default=1)


def _spread(out: Arr, v: Arr) -> None:
    """out (rows, N) = v (rows,) repeated along each row: a same-shape operand, since a
    broadcast one makes numpy buffer the ufunc (64 KiB per call)."""
    np.copyto(out, v[:, None])


def ln_fwd(x: Arr, y: Arr, xhat: Arr, invstd: Arr, gamma: Arr, beta: Arr, eps: float) -> None:
    """As ``layer_norm.ln_fwd_numba`` (row sums pairwise: within float32 rounding)."""
    R, N = x.shape
    blocks, rb = _ln_blocks(R, N, 2)
    mu, inv, g64, b64 = _carve(scratch(2 * rb + 2 * N, np.float64, 3), (rb,), (rb,), (N,), (N,))
    np.copyto(g64, gamma)
    np.copyto(b64, beta)
    for r0, r1 in blocks:
        n = r1 - r0
        xb, t = scratch(2 * n * N, np.float64, 2).reshape(2, n, N)
        m, iv = mu[:n], inv[:n]
        np.copyto(xb, x[r0:r1])
        np.sum(xb, axis=1, out=m)
        np.divide(m, N, out=m)
        _spread(t, m)
        np.subtract(xb, t, out=xb)  # d = x - mu
        np.multiply(xb, xb, out=t)
        np.sum(t, axis=1, out=iv)
        np.divide(iv, N, out=iv)  # invstd = 1 / sqrt(var + eps)
        np.add(iv, eps, out=iv)
        np.sqrt(iv, out=iv)
        np.divide(1.0, iv, out=iv)
        np.copyto(invstd[r0:r1], iv, casting="same_kind")
        _spread(t, iv)
        np.multiply(xb, t, out=xb)
        np.copyto(xhat[r0:r1], xb, casting="same_kind")
        np.copyto(t, g64)  # y = xhat * gamma + beta, from the unrounded xhat
        np.multiply(xb, t, out=xb)
        np.copyto(t, b64)
        np.add(xb, t, out=xb)
        np.copyto(y[r0:r1], xb, casting="same_kind")


def ln_bwd(dy: Arr, xhat: Arr, invstd: Arr, gamma: Arr, dx: Arr) -> None:
    """As ``layer_norm.ln_bwd_numba``: dx = invstd * (g - mean(g) - xhat * mean(g*xhat)),
    g = dy * gamma (row sums pairwise: within float32 rounding); dx may alias dy."""
    R, N = dy.shape
    blocks, rb = _ln_blocks(R, N, 3)
    m1, m2, inv, g64 = _carve(scratch(3 * rb + N, np.float64, 3), (rb,), (rb,), (rb,), (N,))
    np.copyto(g64, gamma)
    for r0, r1 in blocks:
        n = r1 - r0
        gb, xb, t = scratch(3 * n * N, np.float64, 2).reshape(3, n, N)
        a, c, iv = m1[:n], m2[:n], inv[:n]
        np.copyto(gb, dy[r0:r1])
        np.copyto(t, g64)
        np.multiply(gb, t, out=gb)
        np.copyto(xb, xhat[r0:r1])
        np.sum(gb, axis=1, out=a)
        np.multiply(gb, xb, out=t)
        np.sum(t, axis=1, out=c)
        np.divide(a, N, out=a)
        np.divide(c, N, out=c)
        np.copyto(iv, invstd[r0:r1])
        _spread(t, a)
        np.subtract(gb, t, out=gb)
        _spread(t, c)
        np.multiply(xb, t, out=xb)
        np.subtract(gb, xb, out=gb)
        _spread(t, iv)
        np.multiply(t, gb, out=gb)
        np.copyto(dx[r0:r1], gb, casting="same_kind")


def ln_param_grad(dy: Arr, xhat: Arr, dgamma: Arr, dbeta: Arr) -> None:
    """As ``layer_norm.ln_param_grad_numba``: float64 column sums of dy * xhat and dy
    (pairwise within a block, blocks in order: within float32 rounding)."""
    R, N = dy.shape
    blocks, _ = _ln_blocks(R, N, 2)
    sg, sb, part = _carve(scratch(3 * N, np.float64, 3), (N,), (N,), (N,))
    sg.fill(0.0)
    sb.fill(0.0)
    for r0, r1 in blocks:
        n = r1 - r0
        db, xb = scratch(2 * n * N, np.float64, 2).reshape(2, n, N)
        np.copyto(db, dy[r0:r1])
        np.copyto(xb, xhat[r0:r1])
        np.sum(db, axis=0, out=part)
        np.add(sb, part, out=sb)
        np.multiply(db, xb, out=db)
        np.sum(db, axis=0, out=part)
        np.add(sg, part, out=sg)
    np.copyto(dgamma, sg, casting="same_kind")
    np.copyto(dbeta, sb, casting="same_kind")


# ----------------------------------------------------------------------------- conv1d
def _taps(k: int, stride: int, pad: int, dil: int, W: int, OW: int
          ) -> Iterator[tuple[int, int, int, slice]]:
    """Each tap j with the outputs [lo, hi) that read an in-range input, and that
    strided input slice."""
    for j in range(k):
        lo, hi = _span(pad, j * dil, stride, W, OW)
        i0 = lo * stride - pad + j * dil
        yield j, lo, hi, slice(i0, i0 + (hi - lo - 1) * stride + 1, stride)


def im2col1d(x: Arr, col: Arr, k: int, stride: int, pad: int, dil: int) -> None:
    """As ``conv1d.im2col1d_numba``: one strided copy per tap, 0 outside. Bit-identical."""
    C, W = x.shape
    OW = col.shape[1]
    c3 = col.reshape(C, k, OW)
    for j, lo, hi, src in _taps(k, stride, pad, dil, W, OW):
        c3[:, j, :lo] = 0.0
        c3[:, j, hi:] = 0.0
        if hi > lo:
            np.copyto(c3[:, j, lo:hi], x[:, src])


def col2im1d(col: Arr, dx: Arr, k: int, stride: int, pad: int, dil: int) -> None:
    """As ``conv1d.col2im1d_numba``: dx zeroed, then each tap's row added in tap order
    (float32 adds, numba's order per element). Bit-identical."""
    C, W = dx.shape
    c3 = col.reshape(C, k, col.shape[1])
    dx.fill(0)
    for j, lo, hi, src in _taps(k, stride, pad, dil, W, col.shape[1]):
        if hi > lo:
            dst = dx[:, src]
            np.add(dst, c3[:, j, lo:hi], out=dst)
