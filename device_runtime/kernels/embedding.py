"""Embedding lookup and its scatter-add gradient.

Ids arrive as float32 (the input tensor's dtype, as in NNTrainer) and are truncated to
integers. The kernels return the number of ids outside ``[0, vocab)`` instead of raising,
so the layer can name the problem in a one-line error; such rows are left untouched.
"""

from __future__ import annotations

import numpy as np

from . import lean_misc
from ._jit import njit, pick

Arr = np.ndarray


@njit
def embedding_fwd_numba(ids: Arr, w: Arr, y: Arr, mask_id: int) -> int:
    """ids (R,) float32, w (V, D), y (R, D): y[r] = w[ids[r]]; ``mask_id`` rows are 0."""
    V, D = w.shape
    bad = 0
    for r in range(ids.shape[0]):
        v = ids[r]
        if not (v > -1.0 and v < V):  # also catches NaN, before any int conversion
            bad += 1
            continue
        k = int(v)
        if k == mask_id:
            for d in range(D):
                y[r, d] = 0.0
        else:
            for d in range(D):
                y[r, d] = w[k, d]
    return bad


def embedding_fwd_numpy(ids: Arr, w: Arr, y: Arr, mask_id: int) -> int:
    V = w.shape[0]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(ids) & (ids > -1) & (ids < V)
    k = np.where(ok, ids, 0).astype(np.int64)
    y[ok] = w[k[ok]]
    y[ok & (k == mask_id)] = 0.0
    return int(np.count_nonzero(~ok))


@njit
def embedding_bwd_numba(ids: Arr, dy: Arr, g: Arr, mask_id: int) -> None:
    """g (V, D) = sum over rows r with ids[r] == v of dy[r] (zeroed first)."""
    V, D = g.shape
    for v in range(V):
        for d in range(D):
            g[v, d] = 0.0
    for r in range(ids.shape[0]):
        v = ids[r]
        if not (v > -1.0 and v < V):
            continue
        k = int(v)
        if k == mask_id:
            continue
        for d in range(D):
            g[k, d] += dy[r, d]


def embedding_bwd_numpy(ids: Arr, dy: Arr, g: Arr, mask_id: int) -> None:
    V = g.shape[0]
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(ids) & (ids > -1) & (ids < V)
    k = np.where(ok, ids, 0).astype(np.int64)
    ok &= k != mask_id
    acc = np.zeros(g.shape, np.float64)
    np.add.at(acc, k[ok], dy[ok].astype(np.float64))
    g[...] = acc


embedding_fwd = pick(embedding_fwd_numba, lean_misc.embedding_fwd)
embedding_bwd = pick(embedding_bwd_numba, lean_misc.embedding_bwd)
