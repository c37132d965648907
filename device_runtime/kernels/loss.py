"""Losses (mean reduction, as PyTorch's default) and their gradients.

Each forward returns the loss as a Python float accumulated in float64; each backward
writes d(loss)/d(input) into a caller array. Logits for the softmax losses are
``(N, K)``; ``sigmoid_xent`` and ``mse`` take flat 1-D views and average over every
element. ``probs`` may alias ``logits`` (each logit is read before its slot is
written), and every backward may write into its first argument (``dx`` is ``probs``
or ``dx`` is ``logits``/``pred``), since each element is read before it is written.

Labels are int64 class indices in ``[0, K)``; PyTorch's ``ignore_index`` is not
supported (an out-of-range label raises ``ValueError``).
"""

from __future__ import annotations

import math

import numpy as np

from . import lean_loss
from ._jit import njit, pick
from .activation import _sigmoid64, _sigmoid64_np

Arr = np.ndarray  # float32 unless stated; labels are int64


def _check_labels_numpy(labels: Arr, K: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= K))
    if bad.size:
        r = int(bad[0])
        raise ValueError("label out of range [0, K): label, row, K =", int(labels[r]), r, K)


def _log_softmax_numpy(logits: Arr) -> np.ndarray:
    x64 = logits.astype(np.float64)
    z = x64 - x64.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


# ------------------------------------------------------ softmax cross-entropy, index
@njit
def softmax_xent_fwd_idx_numba(logits: Arr, labels: Arr, probs: Arr) -> float:
    """probs = softmax(logits); return mean_n(-log_softmax(logits)[n, labels[n]])."""
    N, K = logits.shape
    for r in range(N):  # validate first, so a bad label leaves probs untouched
        if labels[r] < 0 or labels[r] >= K:
            raise ValueError("label out of range [0, K): label, row, K =", labels[r], r, K)
    total = 0.0
    for r in range(N):
        m = np.float64(logits[r, 0])
        for k in range(1, K):
            if logits[r, k] > m:
                m = np.float64(logits[r, k])
        xl = np.float64(logits[r, labels[r]])  # read before probs (maybe logits) is written
        s = 0.0
        for k in range(K):
            e = math.exp(np.float64(logits[r, k]) - m)
            s += e
            probs[r, k] = e
        # -log_softmax at the label = logsumexp - x_label = (m - x_label) + log(s),
        # a sum of two non-negative terms: no cancellation, unlike -log(probs)
        total += (m - xl) + math.log(s)
        inv = 1.0 / s
        for k in range(K):
            probs[r, k] = np.float64(probs[r, k]) * inv
    return total / N


def softmax_xent_fwd_idx_numpy(logits: Arr, labels: Arr, probs: Arr) -> float:
    _check_labels_numpy(labels, logits.shape[1])
    lsm = _log_softmax_numpy(logits)
    probs[...] = np.exp(lsm)
    return float(-lsm[np.arange(logits.shape[0]), labels].mean())


@njit
def softmax_xent_bwd_idx_numba(probs: Arr, labels: Arr, dx: Arr) -> None:
    """dx = (probs - onehot(labels)) / N."""
    N, K = probs.shape
    inv = 1.0 / N
    for r in range(N):
        lab = labels[r]
        for k in range(K):
            p = np.float64(probs[r, k])
            dx[r, k] = ((p - 1.0) if k == lab else p) * inv


def softmax_xent_bwd_idx_numpy(probs: Arr, labels: Arr, dx: Arr) -> None:
    N, K = probs.shape
    onehot = np.arange(K)[None, :] == labels[:, None]
    dx[...] = (probs.astype(np.float64) - onehot) / N


# ---------------------------------------------- softmax cross-entropy, soft targets
@njit
def softmax_xent_fwd_soft_numba(logits: Arr, targets: Arr, probs: Arr) -> float:
    """probs = softmax(logits); return mean_n(-sum_k targets * log_softmax(logits))."""
    N, K = logits.shape
    total = 0.0
    for r in range(N):
        m = np.float64(logits[r, 0])
        for k in range(1, K):
            if logits[r, k] > m:
                m = np.float64(logits[r, k])
        # -sum t*(x - lse) = sum t*(m - x) + log(s)*sum t with lse = m + log(s):
        # one pass, and both terms are non-negative for non-negative targets
        s = 0.0
        st = 0.0
        tdm = 0.0
        for k in range(K):
            xv = np.float64(logits[r, k])
            tv = np.float64(targets[r, k])
            st += tv
            tdm += tv * (m - xv)
            e = math.exp(xv - m)
            s += e
            probs[r, k] = e
        total += tdm + st * math.log(s)
        inv = 1.0 / s
        for k in range(K):
            probs[r, k] = np.float64(probs[r, k]) * inv
    return total / N


def softmax_xent_fwd_soft_numpy(logits: Arr, targets: Arr, probs: Arr) -> float:
    lsm = _log_softmax_numpy(logits)
    probs[...] = np.exp(lsm)
    return float(-(targets.astype(np.float64) * lsm).sum(axis=1).mean())


@njit
def softmax_xent_bwd_soft_numba(probs: Arr, targets: Arr, dx: Arr) -> None:
    """dx = (probs * sum_k(targets) - targets) / N (= (probs - targets)/N for rows summing to 1)."""
    N, K = probs.shape
    inv = 1.0 / N
    for r in range(N):
        st = 0.0
        for k in range(K):
            st += np.float64(targets[r, k])
        for k in range(K):
            dx[r, k] = (np.float64(probs[r, k]) * st - np.float64(targets[r, k])) * inv


def softmax_xent_bwd_soft_numpy(probs: Arr, targets: Arr, dx: Arr) -> None:
    t64 = targets.astype(np.float64)
    st = t64.sum(axis=1, keepdims=True)
    dx[...] = (probs.astype(np.float64) * st - t64) / probs.shape[0]


# ------------------------------------------------- binary cross-entropy with logits
@njit
def sigmoid_xent_fwd_numba(logits: Arr, targets: Arr) -> float:
    """Mean over all elements of BCEWithLogits: max(x,0) - x*t + log1p(exp(-|x|))."""
    n = logits.shape[0]
    total = 0.0
    for i in range(n):
        x = np.float64(logits[i])
        total += max(x, 0.0) - x * np.float64(targets[i]) + math.log1p(math.exp(-abs(x)))
    return total / n


def sigmoid_xent_fwd_numpy(logits: Arr, targets: Arr) -> float:
    x = logits.astype(np.float64)
    t = targets.astype(np.float64)
    return float(np.mean(np.maximum(x, 0.0) - x * t + np.log1p(np.exp(-np.abs(x)))))


@njit
def sigmoid_xent_bwd_numba(logits: Arr, targets: Arr, dx: Arr) -> None:
    """dx = (sigmoid(logits) - targets) / numel; dx may alias logits."""
    n = logits.shape[0]
    inv = 1.0 / n
    for i in range(n):
        dx[i] = (_sigmoid64(np.float64(logits[i])) - np.float64(targets[i])) * inv


def sigmoid_xent_bwd_numpy(logits: Arr, targets: Arr, dx: Arr) -> None:
    s = _sigmoid64_np(logits.astype(np.float64))
    dx[...] = (s - targets.astype(np.float64)) / logits.size


# ---------------------------------------------------------------------------- mse
@njit
def mse_fwd_numba(pred: Arr, target: Arr) -> float:
    """Mean over all elements of (pred - target)^2."""
    n = pred.shape[0]
    total = 0.0
    for i in range(n):
        d = np.float64(pred[i]) - np.float64(target[i])
        total += d * d
    return total / n


def mse_fwd_numpy(pred: Arr, target: Arr) -> float:
    d = pred.astype(np.float64) - target.astype(np.float64)
    return float(np.mean(d * d))


@njit
def mse_bwd_numba(pred: Arr, target: Arr, dx: Arr) -> None:
    """dx = 2 * (pred - target) / numel; dx may alias pred or target."""
    n = pred.shape[0]
    k = 2.0 / n
    for i in range(n):
        dx[i] = (np.float64(pred[i]) - np.float64(target[i])) * k


def mse_bwd_numpy(pred: Arr, target: Arr, dx: Arr) -> None:
    dx[...] = (pred.astype(np.float64) - target.astype(np.float64)) * (2.0 / pred.size)


# ----------------------------------------------------------------------- accuracy
@njit
def argmax_accuracy_numba(logits: Arr, labels: Arr) -> int:
    """Number of rows whose argmax equals the label (np.argmax ties: first max, first NaN)."""
    N, K = logits.shape
    correct = 0
    for r in range(N):
        best = 0
        bv = logits[r, 0]
        if not math.isnan(bv):
            for k in range(1, K):
                v = logits[r, k]
                if math.isnan(v):
                    best = k
                    break
                if v > bv:
                    best = k
                    bv = v
        if best == labels[r]:
            correct += 1
    return correct


def argmax_accuracy_numpy(logits: Arr, labels: Arr) -> int:
    return int(np.count_nonzero(np.argmax(logits, axis=1) == labels))


softmax_xent_fwd_idx = pick(softmax_xent_fwd_idx_numba, lean_loss.softmax_xent_fwd_idx)
softmax_xent_bwd_idx = pick(softmax_xent_bwd_idx_numba, lean_loss.softmax_xent_bwd_idx)
softmax_xent_fwd_soft = pick(softmax_xent_fwd_soft_numba, lean_loss.softmax_xent_fwd_soft)
softmax_xent_bwd_soft = pick(softmax_xent_bwd_soft_numba, lean_loss.softmax_xent_bwd_soft)
sigmoid_xent_fwd = pick(sigmoid_xent_fwd_numba, lean_loss.sigmoid_xent_fwd)
sigmoid_xent_bwd = pick(sigmoid_xent_bwd_numba, lean_loss.sigmoid_xent_bwd)
mse_fwd = pick(mse_fwd_numba, lean_loss.mse_fwd)
mse_bwd = pick(mse_bwd_numba, lean_loss.mse_bwd)
argmax_accuracy = pick(argmax_accuracy_numba, lean_loss.argmax_accuracy)
