"""Scaled dot-product attention over heads, forward and backward.

Queries ``q (B, Tq, H*P)``, keys ``k (B, Tk, H*P)``, values ``v (B, Tk, H*Pv)``; head
``h`` owns columns ``h*P:(h+1)*P`` (the layout of one projection GEMM's output, as in
PyTorch's MultiheadAttention). ``a (B, H, Tq, Tk)`` = softmax(scale * q k^T) per head,
``o (B, Tq, H*Pv)`` = a v. With ``causal`` key j > query i is masked out. Dot products
and softmax sums are accumulated in float64 and rounded once.
"""

from __future__ import annotations

import math

import numpy as np

from . import lean_misc
from ._jit import njit, pick

Arr = np.ndarray


@njit
def attention_fwd_numba(q: Arr, k: Arr, v: Arr, a: Arr, o: Arr, scale: float,
                        causal: bool) -> None:
    B, H, Tq, Tk = a.shape
    P = q.shape[2] // H
    Pv = v.shape[2] // H
    for b in range(B):
        for h in range(H):
            for i in range(Tq):
                n = Tk if not causal else min(Tk, i + 1)
                m = -math.inf
                for j in range(n):
                    s = 0.0
                    for p in range(P):
                        s += np.float64(q[b, i, h * P + p]) * k[b, j, h * P + p]
                    s *= scale
                    a[b, h, i, j] = s
                    m = max(m, s)
                tot = 0.0
                for j in range(n):
                    e = math.exp(np.float64(a[b, h, i, j]) - m)
                    a[b, h, i, j] = e
                    tot += e
                for j in range(n):
                    a[b, h, i, j] = np.float64(a[b, h, i, j]) / tot
                for j in range(n, Tk):
                    a[b, h, i, j] = 0.0
                for p in range(Pv):
                    s = 0.0
                    for j in range(n):
                        s += np.float64(a[b, h, i, j]) * v[b, j, h * Pv + p]
                    o[b, i, h * Pv + p] = s


def _heads(x: Arr, H: int) -> np.ndarray:
    """(B, T, H*P) -> (B, H, T, P) float64."""
    B, T, HP = x.shape
    return x.astype(np.float64).reshape(B, T, H, HP // H).transpose(0, 2, 1, 3)


def attention_fwd_numpy(q: Arr, k: Arr, v: Arr, a: Arr, o: Arr, scale: float,
                        causal: bool) -> None:
    B, H, Tq, Tk = a.shape
    s = np.einsum("bhip,bhjp->bhij", _heads(q, H), _heads(k, H)) * scale
    if causal:
        s = np.where(np.tril(np.ones((Tq, Tk), bool)), s, -np.inf)
    s = np.exp(s - s.max(axis=-1, keepdims=True))
    s /= s.sum(axis=-1, keepdims=True)
    a[...] = s
    out = np.einsum("bhij,bhjp->bhip", s, _heads(v, H))
    o[...] = out.transpose(0, 2, 1, 3).reshape(o.shape)


@njit
def attention_bwd_numba(do: Arr, a: Arr, q: Arr, k: Arr, v: Arr, dq: Arr, dk: Arr,
                        dv: Arr, scale: float, ds: Arr) -> None:
    """dq, dk, dv are written (not accumulated); ds (Tq, Tk) float64 is scratch."""
    B, H, Tq, Tk = a.shape
    P = q.shape[2] // H
    Pv = v.shape[2] // H
    for b in range(B):
        for h in range(H):
            for i in range(Tq):  # ds = a * (da - rowsum(da * a)) * scale, da = do v^T
                dot = 0.0
                for j in range(Tk):
                    s = 0.0
                    for p in range(Pv):
                        s += np.float64(do[b, i, h * Pv + p]) * v[b, j, h * Pv + p]
                    ds[i, j] = s
                    dot += s * a[b, h, i, j]
                for j in range(Tk):
                    ds[i, j] = a[b, h, i, j] * (ds[i, j] - dot) * scale
                for p in range(P):
                    s = 0.0
                    for j in range(Tk):
                        s += ds[i, j] * k[b, j, h * P + p]
                    dq[b, i, h * P + p] = s
            for j in range(Tk):
                for p in range(P):
                    s = 0.0
                    for i in range(Tq):
                        s += ds[i, j] * q[b, i, h * P + p]
                    dk[b, j, h * P + p] = s
                for p in range(Pv):
                    s = 0.0
                    for i in range(Tq):
                        s += np.float64(a[b, h, i, j]) * do[b, i, h * Pv + p]
                    dv[b, j, h * Pv + p] = s


def attention_bwd_numpy(do: Arr, a: Arr, q: Arr, k: Arr, v: Arr, dq: Arr, dk: Arr,
                        dv: Arr, scale: float, ds: Arr) -> None:
    H = a.shape[1]
    A = a.astype(np.float64)
    dO = _heads(do, H)
    da = np.einsum("bhip,bhjp->bhij", dO, _heads(v, H))
    dS = A * (da - (da * A).sum(axis=-1, keepdims=True)) * scale
    back = lambda t, shape: t.transpose(0, 2, 1, 3).reshape(shape)  # noqa: E731
    dq[...] = back(np.einsum("bhij,bhjp->bhip", dS, _heads(k, H)), dq.shape)
    dk[...] = back(np.einsum("bhij,bhip->bhjp", dS, _heads(q, H)), dk.shape)
    dv[...] = back(np.einsum("bhij,bhip->bhjp", A, dO), dv.shape)


attention_fwd = pick(attention_fwd_numba, lean_misc.attention_fwd)
attention_bwd = pick(attention_bwd_numba, lean_misc.attention_bwd)
