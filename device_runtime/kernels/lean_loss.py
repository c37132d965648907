"""Allocation-free numpy loss kernels (see :mod:`.lean`): the runtime without numba.

Row (or flat) blocks through :func:`.lean.scratch`, numba's float64 expressions in the
same order. Bit-identical to ``loss.*_numba``: the gradients of the softmax and MSE
losses and the argmax count; within float32 rounding: the probabilities (pairwise row
sums of the exps) and the loss values (float64, summed pairwise, rounded by the
caller), and the sigmoid cross-entropy, whose exp / log1p are numpy's.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import lean
from .lean import scratch
from .lean_seq import _act

Arr = np.ndarray
_SLOT = 2


def _row_blocks(N: int, K: int, count: int, vecs: int) -> Iterator[tuple[slice, list[Arr]]]:
    """Row slices with ``count`` float64 (rows, K) and ``vecs`` float64 (rows,) arrays."""
    step = max(1, lean.SCRATCH_BYTES // 8 // (count * K + vecs))
    for r0 in range(0, N, step):
        n = min(r0 + step, N) - r0
        buf = scratch(n * (count * K + vecs), np.float64, _SLOT)
        mats = buf[:count * n * K].reshape(count, n, K)
        yield slice(r0, r0 + n), [*mats, *buf[count * n * K:].reshape(vecs, n)]


def _label_index(labels: Arr, r: slice, K: int) -> Arr:
    """Flat indices (row - r.start) * K + label of the rows ``r`` (intp scratch)."""
    idx = scratch(r.stop - r.start, np.intp)
    idx.fill(K)
    idx[0] = 0
    np.cumsum(idx, out=idx)
    np.add(idx, labels[r], out=idx, casting="unsafe")
    return idx


def _check_labels(labels: Arr, K: int) -> None:
    bad = scratch(labels.shape[0], np.bool_)
    low = scratch(labels.shape[0], np.bool_, 1)
    np.less(labels, 0, out=bad)
    np.greater_equal(labels, K, out=low)
    np.logical_or(bad, low, out=bad)
    if bad.any():
        r = int(np.argmax(bad))
        raise ValueError("label out of range [0, K): label, row, K =", int(labels[r]), r, K)


def _softmax_rows(x: Arr, e: Arr, m: Arr, s: Arr, inv: Arr, probs: Arr) -> None:
    """probs = exp(x - m) / s, m the row maxima, s the (unrounded) sum of the exps, in
    numba's roundings: the exps are stored in float32, then multiplied by 1/s."""
    np.max(x, axis=1, out=m)
    np.subtract(x, m[:, None], out=e)
    np.exp(e, out=e)
    np.sum(e, axis=1, out=s)
    np.copyto(probs, e, casting="same_kind")
    np.copyto(e, probs)
    np.divide(1.0, s, out=inv)
    np.multiply(e, inv[:, None], out=e)
    np.copyto(probs, e, casting="same_kind")


def softmax_xent_fwd_idx(logits: Arr, labels: Arr, probs: Arr) -> float:
    """As ``loss.softmax_xent_fwd_idx_numba``: probs = softmax(logits), returns the mean
    of (m - x_label) + log(s); probs may alias logits."""
    N, K = logits.shape
    _check_labels(labels, K)
    total = 0.0
    for r, (x, e, m, s, inv, xl) in _row_blocks(N, K, 2, 4):
        np.copyto(x, logits[r])
        np.take(x.reshape(-1), _label_index(labels, r, K), out=xl, mode="clip")
        _softmax_rows(x, e, m, s, inv, probs[r])
        np.subtract(m, xl, out=xl)
        np.log(s, out=s)
        np.add(xl, s, out=xl)
        total += float(np.sum(xl))
    return total / N


def softmax_xent_bwd_idx(probs: Arr, labels: Arr, dx: Arr) -> None:
    """As ``loss.softmax_xent_bwd_idx_numba``: dx = (probs - onehot) / N, bit-identical."""
    N, K = probs.shape
    for r, (p, v) in _row_blocks(N, K, 1, 1):
        np.copyto(p, probs[r])
        flat, idx = p.reshape(-1), _label_index(labels, r, K)
        np.take(flat, idx, out=v, mode="clip")
        np.subtract(v, 1.0, out=v)
        np.put(flat, idx, v, mode="clip")
        np.multiply(p, 1.0 / N, out=p)
        np.copyto(dx[r], p, casting="same_kind")


def softmax_xent_fwd_soft(logits: Arr, targets: Arr, probs: Arr) -> float:
    """As ``loss.softmax_xent_fwd_soft_numba``: the mean of sum t*(m - x) + log(s)*sum t."""
    N, K = logits.shape
    total = 0.0
    for r, (x, e, t, m, s, inv, st) in _row_blocks(N, K, 3, 4):
        np.copyto(x, logits[r])
        np.copyto(t, targets[r])
        np.sum(t, axis=1, out=st)
        np.max(x, axis=1, out=m)
        np.subtract(m[:, None], x, out=e)  # t * (m - x)
        np.multiply(t, e, out=e)
        np.sum(e, axis=1, out=inv)
        total += float(np.sum(inv))
        _softmax_rows(x, e, m, s, inv, probs[r])
        np.log(s, out=s)
        np.multiply(st, s, out=s)
        total += float(np.sum(s))
    return total / N


def softmax_xent_bwd_soft(probs: Arr, targets: Arr, dx: Arr) -> None:
    """As ``loss.softmax_xent_bwd_soft_numba``: dx = (probs * sum(t) - t) / N (the sum
    of t pairwise: within float32 rounding)."""
    N, K = probs.shape
    for r, (p, t, st) in _row_blocks(N, K, 2, 1):
        np.copyto(p, probs[r])
        np.copyto(t, targets[r])
        np.sum(t, axis=1, out=st)
        np.multiply(p, st[:, None], out=p)
        np.subtract(p, t, out=p)
        np.multiply(p, 1.0 / N, out=p)
        np.copyto(dx[r], p, casting="same_kind")


def _flat(n: int, count: int) -> Iterator[tuple[slice, list[Arr]]]:
    for r, mats in _row_blocks(n, 1, count, 0):
        yield r, [a.reshape(-1) for a in mats]


def sigmoid_xent_fwd(logits: Arr, targets: Arr) -> float:
    """As ``loss.sigmoid_xent_fwd_numba``: mean of max(x, 0) - x*t + log1p(exp(-|x|))."""
    n = logits.shape[0]
    total = 0.0
    for r, (x, a, t) in _flat(n, 3):
        np.copyto(x, logits[r])
        np.copyto(t, targets[r])
        np.multiply(x, t, out=t)
        np.maximum(x, 0.0, out=a)
        np.subtract(a, t, out=t)
        np.abs(x, out=a)
        np.negative(a, out=a)
        np.exp(a, out=a)
        np.log1p(a, out=a)
        np.add(t, a, out=t)
        total += float(np.sum(t))
    return total / n


def sigmoid_xent_bwd(logits: Arr, targets: Arr, dx: Arr) -> None:
    """As ``loss.sigmoid_xent_bwd_numba``: dx = (sigmoid(x) - t) / n; dx may alias x."""
    n = logits.shape[0]
    for r, (x, t, u) in _flat(n, 3):
        np.copyto(x, logits[r])
        pos, neg = scratch(2 * x.size, np.bool_, _SLOT).reshape(2, -1)
        _act(x, 1, u, pos, neg)
        np.copyto(t, targets[r])
        np.subtract(x, t, out=x)
        np.multiply(x, 1.0 / n, out=x)
        np.copyto(dx[r], x, casting="same_kind")


def mse_fwd(pred: Arr, target: Arr) -> float:
    """As ``loss.mse_fwd_numba``: the mean of (pred - target)^2 (summed pairwise)."""
    n = pred.shape[0]
    total = 0.0
    for r, (d, t) in _flat(n, 2):
        np.copyto(d, pred[r])
        np.copyto(t, target[r])
        np.subtract(d, t, out=d)
        np.multiply(d, d, out=d)
        total += float(np.sum(d))
    return total / n


def mse_bwd(pred: Arr, target: Arr, dx: Arr) -> None:
    """As ``loss.mse_bwd_numba``: dx = (pred - target) * (2 / n), bit-identical."""
    n = pred.shape[0]
    for r, (d, t) in _flat(n, 2):
        np.copyto(d, pred[r])
        np.copyto(t, target[r])
        np.subtract(d, t, out=d)
        np.multiply(d, 2.0 / n, out=d)
        np.copyto(dx[r], d, casting="same_kind")


def argmax_accuracy(logits: Arr, labels: Arr) -> int:
    """As ``loss.argmax_accuracy_numba`` (np.argmax's rule: first maximum, first NaN)."""
    N, K = logits.shape
    correct = 0
    step = max(1, lean.SCRATCH_BYTES // 8)
    for r0 in range(0, N, step):
        r1 = min(r0 + step, N)
        best = scratch(r1 - r0, np.intp)
        hit = scratch(r1 - r0, np.bool_)
        np.argmax(logits[r0:r1], axis=1, out=best)
        np.equal(best, labels[r0:r1], out=hit)
        correct += int(np.count_nonzero(hit))
    return correct
