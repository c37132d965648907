"""Layer normalisation over the last axis of ``(R, N)`` rows (torch.nn.LayerNorm).

Statistics per row in float64 (mean, then biased variance). A row is finished before
the next, so ``y`` may alias ``x`` and ``dx`` may alias ``dy``.
"""

from __future__ import annotations

import math

import numpy as np

from . import lean_misc
from ._jit import njit, pick

Arr = np.ndarray


@njit
def ln_fwd_numba(x: Arr, y: Arr, xhat: Arr, invstd: Arr, gamma: Arr, beta: Arr,
                 eps: float) -> None:
    R, N = x.shape
    for r in range(R):
        acc = np.float64(0.0)  # not 0.0: plain Python (NUMBA_DISABLE_JIT) would sum in float32
        for n in range(N):
            acc += x[r, n]
        mu = acc / N
        acc = np.float64(0.0)
        for n in range(N):
            d = np.float64(x[r, n]) - mu
            acc += d * d
        inv = 1.0 / math.sqrt(acc / N + eps)
        invstd[r] = inv
        for n in range(N):
            xh = (np.float64(x[r, n]) - mu) * inv
            xhat[r, n] = xh
            y[r, n] = xh * gamma[n] + beta[n]


def ln_fwd_numpy(x: Arr, y: Arr, xhat: Arr, invstd: Arr, gamma: Arr, beta: Arr,
                 eps: float) -> None:
    x64 = x.astype(np.float64)
    d = x64 - x64.mean(axis=1, keepdims=True)
    inv = 1.0 / np.sqrt((d * d).mean(axis=1) + eps)
    xh = d * inv[:, None]
    invstd[...] = inv
    xhat[...] = xh
    y[...] = xh * gamma.astype(np.float64) + beta.astype(np.float64)


@njit
def ln_bwd_numba(dy: Arr, xhat: Arr, invstd: Arr, gamma: Arr, dx: Arr) -> None:
    """dx = invstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * gamma."""
    R, N = dy.shape
    for r in range(R):
        s1 = 0.0
        s2 = 0.0
        for n in range(N):
            gn = np.float64(dy[r, n]) * gamma[n]
            s1 += gn
            s2 += gn * xhat[r, n]
        m1 = s1 / N
        m2 = s2 / N
        inv = np.float64(invstd[r])
        for n in range(N):
            gn = np.float64(dy[r, n]) * gamma[n]
            dx[r, n] = inv * (gn - m1 - xhat[r, n] * m2)


def ln_bwd_numpy(dy: Arr, xhat: Arr, invstd: Arr, gamma: Arr, dx: Arr) -> None:
    g = dy.astype(np.float64) * gamma.astype(np.float64)
    xh = xhat.astype(np.float64)
    m1 = g.mean(axis=1, keepdims=True)
    m2 = (g * xh).mean(axis=1, keepdims=True)
    dx[...] = invstd.astype(np.float64)[:, None] * (g - m1 - xh * m2)


@njit
def ln_param_grad_numba(dy: Arr, xhat: Arr, dgamma: Arr, dbeta: Arr) -> None:
    """dgamma = sum over rows of dy * xhat, dbeta = sum of dy (float64 sums)."""
    R, N = dy.shape
    for n in range(N):
        sg = np.float64(0.0)
        sb = np.float64(0.0)
        for r in range(R):
            sg += np.float64(dy[r, n]) * xhat[r, n]
            sb += dy[r, n]
        dgamma[n] = sg
        dbeta[n] = sb


def ln_param_grad_numpy(dy: Arr, xhat: Arr, dgamma: Arr, dbeta: Arr) -> None:
    d = dy.astype(np.float64)
    dgamma[...] = (d * xhat.astype(np.float64)).sum(axis=0)
    dbeta[...] = d.sum(axis=0)


ln_fwd = pick(ln_fwd_numba, lean_misc.ln_fwd)
ln_bwd = pick(ln_bwd_numba, lean_misc.ln_bwd)
ln_param_grad = pick(ln_param_grad_numba, lean_misc.ln_param_grad)
