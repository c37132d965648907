"""Batch normalisation over ``(N, C, S)`` float32 arrays, S = H*W (S = 1 for 1-D features).

Statistics are per channel over the ``M = N*S`` values of that channel, accumulated in
float64 (two passes: mean, then the biased variance), as PyTorch's CPU kernel does; the
numba kernel sums each pass in eight interleaved partial sums (:func:`_lanes_sum`), which
the CPU runs side by side: resnet18's batch-norm forward took 25.5 -> 18 ms of a step
(issue 17).
A channel is finished (stats, then every element) before the next one starts, so
``y`` may alias ``x`` in the forward kernels and ``dx`` may alias ``dy`` in the backward
ones. The ``*_numpy`` references are dtype-generic (used for gradient checks in float64).

Affine-free BN (PyTorch ``affine=False``) is gamma = 1, beta = 0.
"""

from __future__ import annotations

import math

import numpy as np

from . import lean
from ._jit import njit, pick, prange

Arr = np.ndarray  # float32 unless stated


def _c(a: np.ndarray) -> np.ndarray:
    """(C,) -> (1, C, 1), to broadcast per-channel values over (N, C, S)."""
    return np.asarray(a, dtype=np.float64)[None, :, None]


@njit
def bn_update_running_numba(running_mean: Arr, running_var: Arr, mean: Arr, var: Arr,
                            momentum: float, count: int) -> None:
    """running = (1 - momentum)*running + momentum*batch; ``count`` = N*S, for the unbiased var.

    PyTorch's ``momentum=None`` (cumulative average) is momentum = 1/num_batches_tracked.
    """
    # PyTorch keeps the UNBIASED variance in running_var; with count == 1 it is
    # undefined (PyTorch refuses to train on it), so the biased one is kept instead.
    unbias = count / (count - 1.0) if count > 1 else 1.0
    keep = 1.0 - momentum
    for c in range(mean.shape[0]):  # same operation order as PyTorch's CPU kernel
        rm, rv = np.float64(running_mean[c]), np.float64(running_var[c])
        running_mean[c] = momentum * np.float64(mean[c]) + keep * rm
        running_var[c] = momentum * np.float64(var[c]) * unbias + keep * rv


def bn_update_running_numpy(running_mean: Arr, running_var: Arr, mean: Arr, var: Arr,
                            momentum: float, count: int) -> None:
    unbias = count / (count - 1.0) if count > 1 else 1.0
    keep = 1.0 - momentum
    f64 = np.float64
    running_mean[...] = momentum * mean.astype(f64) + keep * running_mean.astype(f64)
    running_var[...] = momentum * var.astype(f64) * unbias + keep * running_var.astype(f64)


@njit(parallel=True)
def bn_infer_fwd_numba(x: Arr, y: Arr, running_mean: Arr, running_var: Arr, gamma: Arr,
                       beta: Arr, eps: float) -> None:
    """Eval-mode BN with the running statistics."""
    N, C, S = x.shape
    for c in prange(C):
        # y = (x - mean) * invstd * gamma + beta, folded into one multiply-add
        scale = np.float64(gamma[c]) / math.sqrt(np.float64(running_var[c]) + eps)
        shift = np.float64(beta[c]) - np.float64(running_mean[c]) * scale
        for n in range(N):
            for s in range(S):
                y[n, c, s] = np.float64(x[n, c, s]) * scale + shift


def bn_infer_fwd_numpy(x: Arr, y: Arr, running_mean: Arr, running_var: Arr, gamma: Arr,
                       beta: Arr, eps: float) -> None:
    scale = _c(gamma) / np.sqrt(_c(running_var) + eps)
    shift = _c(beta) - _c(running_mean) * scale
    y[...] = x.astype(np.float64) * scale + shift


bn_update_running = pick(bn_update_running_numba, bn_update_running_numpy)
bn_infer_fwd = pick(bn_infer_fwd_numba, bn_infer_fwd_numpy)


# --------------------------------------------------------------------------------------
# Training. One canonical normalised value,
#     xhat = float32((float64(x) - float64(mean32)) * float64(invstd32)),
# is computed the same way everywhere: in the forward pass, when the output is recomputed
# before backward (instead of being kept), and in backward (from x, or from a stored
# xhat with mean 0 and invstd 1). So keeping, recomputing or storing xhat never changes
# a single bit of the result.

@njit
def _lanes_sum(x: Arr, c: int, mu: float, square: bool) -> float:
    """Sum over channel ``c`` of ``x - mu`` (squared when ``square``) in float64, in eight
    interleaved partial sums (element s of a row goes to sum s % 8; the rows' tails past
    the last multiple of 8 to a ninth), added pairwise at the end: a fixed order, set by
    the shape alone, whose independent sums the CPU runs side by side (one running sum
    waits on each add)."""
    N, _, S = x.shape
    s8 = S - S % 8
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = tail = 0.0
    for n in range(N):
        row = x[n, c]
        for s in range(0, s8, 8):
            d0, d1 = np.float64(row[s]) - mu, np.float64(row[s + 1]) - mu
            d2, d3 = np.float64(row[s + 2]) - mu, np.float64(row[s + 3]) - mu
            d4, d5 = np.float64(row[s + 4]) - mu, np.float64(row[s + 5]) - mu
            d6, d7 = np.float64(row[s + 6]) - mu, np.float64(row[s + 7]) - mu
            if square:
                d0, d1, d2, d3 = d0 * d0, d1 * d1, d2 * d2, d3 * d3
                d4, d5, d6, d7 = d4 * d4, d5 * d5, d6 * d6, d7 * d7
            a0 += d0
            a1 += d1
            a2 += d2
            a3 += d3
            a4 += d4
            a5 += d5
            a6 += d6
            a7 += d7
        for s in range(s8, S):  # the row's tail: one more partial sum
            d = np.float64(row[s]) - mu
            tail += d * d if square else d
    return (((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))) + tail


@njit
def bn_stats_numba(x: Arr, mean: Arr, var: Arr, invstd: Arr, eps: float) -> None:
    """Per-channel batch mean, biased variance and 1/sqrt(var+eps) (float64 sums)."""
    N, C, S = x.shape
    M = N * S
    for c in range(C):
        mu = _lanes_sum(x, c, 0.0, False) / M
        v = _lanes_sum(x, c, mu, True) / M
        mean[c] = mu
        var[c] = v
        invstd[c] = 1.0 / math.sqrt(v + eps)


def bn_stats_numpy(x: Arr, mean: Arr, var: Arr, invstd: Arr, eps: float) -> None:
    x64 = x.astype(np.float64)
    mu = x64.mean(axis=(0, 2))
    v = np.mean((x64 - mu[None, :, None]) ** 2, axis=(0, 2))
    mean[...] = mu
    var[...] = v
    invstd[...] = 1.0 / np.sqrt(v + eps)


@njit
def bn_normalize_numba(x: Arr, mean: Arr, invstd: Arr, out: Arr) -> None:
    """out = xhat (float32); out may alias x."""
    N, C, S = x.shape
    for c in range(C):
        m, k = np.float64(mean[c]), np.float64(invstd[c])
        for n in range(N):
            for s in range(S):
                out[n, c, s] = np.float32((np.float64(x[n, c, s]) - m) * k)


def bn_normalize_numpy(x: Arr, mean: Arr, invstd: Arr, out: Arr) -> None:
    out[...] = ((x.astype(np.float64) - _c(mean)) * _c(invstd)).astype(np.float32)


@njit
def bn_affine_numba(x: Arr, mean: Arr, invstd: Arr, gamma: Arr, beta: Arr, y: Arr) -> None:
    """y = gamma * xhat + beta, xhat recomputed canonically from x; y may alias x."""
    N, C, S = x.shape
    for c in range(C):
        m, k = np.float64(mean[c]), np.float64(invstd[c])
        g, b = np.float64(gamma[c]), np.float64(beta[c])
        for n in range(N):
            for s in range(S):
                xh = np.float64(np.float32((np.float64(x[n, c, s]) - m) * k))
                y[n, c, s] = np.float32(g * xh + b)


def bn_affine_numpy(x: Arr, mean: Arr, invstd: Arr, gamma: Arr, beta: Arr, y: Arr) -> None:
    xh = ((x.astype(np.float64) - _c(mean)) * _c(invstd)).astype(np.float32).astype(np.float64)
    y[...] = (_c(gamma) * xh + _c(beta)).astype(np.float32)


@njit
def bn_backward_numba(dy: Arr, x: Arr, mean: Arr, knorm: Arr, invstd: Arr, gamma: Arr,
                      dx: Arr, dgamma: Arr, dbeta: Arr) -> None:
    """dgamma, dbeta and dx from dy and x, xhat = canonical((x - mean) * knorm): pass
    (x, mean, invstd) to recompute it, or (stored xhat, 0, 1). dx may alias dy."""
    N, C, S = dy.shape
    M = N * S
    for c in range(C):
        m, k = np.float64(mean[c]), np.float64(knorm[c])
        sdy = 0.0
        sdyx = 0.0
        for n in range(N):
            for s in range(S):
                xh = np.float64(np.float32((np.float64(x[n, c, s]) - m) * k))
                g = np.float64(dy[n, c, s])
                sdy += g
                sdyx += g * xh
        dgamma[c] = sdyx
        dbeta[c] = sdy
        f = np.float64(gamma[c]) * np.float64(invstd[c])
        a = sdy / M
        bq = sdyx / M
        for n in range(N):
            for s in range(S):
                xh = np.float64(np.float32((np.float64(x[n, c, s]) - m) * k))
                dx[n, c, s] = f * (np.float64(dy[n, c, s]) - a - xh * bq)


def bn_backward_numpy(dy: Arr, x: Arr, mean: Arr, knorm: Arr, invstd: Arr, gamma: Arr,
                      dx: Arr, dgamma: Arr, dbeta: Arr) -> None:
    xh = ((x.astype(np.float64) - _c(mean)) * _c(knorm)).astype(np.float32).astype(np.float64)
    d64 = dy.astype(np.float64)
    M = dy.shape[0] * dy.shape[2]
    sdy, sdyx = d64.sum(axis=(0, 2)), (d64 * xh).sum(axis=(0, 2))
    dgamma[...] = sdyx
    dbeta[...] = sdy
    dx[...] = _c(gamma) * _c(invstd) * (d64 - _c(sdy) / M - xh * _c(sdyx) / M)


bn_stats = pick(bn_stats_numba, lean.bn_stats)
bn_normalize = pick(bn_normalize_numba, lean.bn_normalize)
bn_affine = pick(bn_affine_numba, lean.bn_affine)
bn_backward = pick(bn_backward_numba, lean.bn_backward)
