"""Optimizer steps on flat float32 parameter arrays, in place, without allocation.

The per-element arithmetic follows ``torch.optim`` (``foreach=False``) operation by
operation, in float32, so results agree with PyTorch to an ulp or so per step:
scalars are cast to float32 where PyTorch casts them, and the ops PyTorch's CPU
kernels fuse into a multiply-add (``add(alpha=)``, ``lerp``, ``addcmul``) are fused
here too, via :func:`_fma32`. The gradient ``g`` is never written.
"""

from __future__ import annotations

import math

import numpy as np

from . import lean, lean_optim
from ._jit import njit, pick


@njit
def _fma32(a, b, c):
    # a*b + c rounded once, like the FMA PyTorch's vectorised kernels use: the product
    # of two float32 values is exact in float64, so only the final roundings remain
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def _fma32_np(a, b, c):
    f64 = np.float64
    return (np.asarray(a, f64) * np.asarray(b, f64) + np.asarray(c, f64)).astype(np.float32)


# ---------------------------------------------------------------------------- SGD
@njit
def sgd_step_numba(w, g, buf, lr: float, momentum: float, weight_decay: float,
                   nesterov: bool, first_step: bool) -> None:
    """torch.optim.SGD (dampening 0); ``buf`` is unused when momentum == 0."""
    nlr = np.float32(-lr)
    mom = np.float32(momentum)
    wd = np.float32(weight_decay)
    for i in range(w.shape[0]):
        d = g[i]
        if weight_decay != 0.0:
            d = _fma32(w[i], wd, d)  # grad.add(param, alpha=wd)
        if momentum != 0.0:
            if first_step:
                b = d  # buf = grad.clone()
            else:
                b = buf[i] * mom + d  # buf.mul_(momentum).add_(grad)
            buf[i] = b
            if nesterov:
                d = _fma32(b, mom, d)  # grad.add(buf, alpha=momentum)
            else:
                d = b
        w[i] = _fma32(d, nlr, w[i])  # param.add_(grad, alpha=-lr)


def sgd_step_numpy(w, g, buf, lr: float, momentum: float, weight_decay: float,
                   nesterov: bool, first_step: bool) -> None:
    f32 = np.float32
    d = g.copy()
    if weight_decay != 0.0:
        d = _fma32_np(w, f32(weight_decay), d)
    if momentum != 0.0:
        if first_step:
            buf[...] = d
        else:
            buf[...] = buf * f32(momentum) + d
        d = _fma32_np(buf, f32(momentum), d) if nesterov else buf.copy()
    w[...] = _fma32_np(d, f32(-lr), w)


# ------------------------------------------------------------------- Adam / AdamW
@njit
def adam_step_numba(w, g, m, v, lr: float, beta1: float, beta2: float, eps: float,
                    weight_decay: float, step: int, decoupled: bool) -> None:
    """torch.optim.Adam (decoupled=False) / AdamW (decoupled=True), no amsgrad.

    ``step`` counts this update, starting at 1. Kingma & Ba, arXiv:1412.6980;
    decoupled weight decay: Loshchilov & Hutter, arXiv:1711.05101.
    """
    # scalar maths in float64, as PyTorch does it in Python
    bc1 = 1.0 - beta1 ** np.float64(step)
    bc2 = 1.0 - beta2 ** np.float64(step)
    nstep = np.float32(-(lr / bc1))
    bc2_sqrt = np.float32(bc2**0.5)
    eps32 = np.float32(eps)
    wd = np.float32(weight_decay)
    decay = np.float32(1.0 - lr * weight_decay)
    b2 = np.float32(beta2)
    omb2 = np.float32(1.0 - beta2)
    # lerp(m, g, wt) = m + wt*(g - m) for |wt| < 0.5, else g + (wt - 1)*(g - m)
    wt = np.float32(1.0 - beta1)
    small = abs(wt) < 0.5
    coeff = wt if small else wt - np.float32(1.0)
    for i in range(w.shape[0]):
        d = g[i]
        if weight_decay != 0.0:
            if decoupled:
                w[i] = w[i] * decay  # param.mul_(1 - lr*wd)
            else:
                d = _fma32(w[i], wd, d)  # grad.add(param, alpha=wd)
        mi = m[i]
        mi = _fma32(coeff, d - mi, mi if small else d)  # exp_avg.lerp_(grad, 1 - beta1)
        m[i] = mi
        vi = _fma32(omb2 * d, d, v[i] * b2)  # exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
        v[i] = vi
        denom = np.float32(math.sqrt(vi)) / bc2_sqrt + eps32
        w[i] = w[i] + (nstep * mi) / denom  # param.addcdiv_(exp_avg, denom, -step_size)


def adam_step_numpy(w, g, m, v, lr: float, beta1: float, beta2: float, eps: float,
                    weight_decay: float, step: int, decoupled: bool) -> None:
    f32 = np.float32
    bc1 = 1.0 - beta1 ** float(step)
    bc2 = 1.0 - beta2 ** float(step)
    d = g.copy()
    if weight_decay != 0.0:
        if decoupled:
            w *= f32(1.0 - lr * weight_decay)
        else:
            d = _fma32_np(w, f32(weight_decay), d)
    wt = f32(1.0 - beta1)
    if abs(wt) < 0.5:
        m[...] = _fma32_np(wt, d - m, m)
    else:
        m[...] = _fma32_np(wt - f32(1.0), d - m, d)
    v[...] = _fma32_np(f32(1.0 - beta2) * d, d, v * f32(beta2))
    denom = np.sqrt(v) / f32(bc2**0.5) + f32(eps)
    w += (f32(-(lr / bc1)) * m) / denom


# ------------------------------------------------------------- gradient clipping
@njit
def global_sq_norm_numba(g) -> float:
    """Sum of squares of ``g`` in float64 (add over parameters, then sqrt, to clip)."""
    acc = 0.0
    for i in range(g.shape[0]):
        x = np.float64(g[i])
        acc += x * x
    return acc


def global_sq_norm_numpy(g) -> float:
    g64 = g.astype(np.float64)
    return float(np.dot(g64, g64))


@njit
def scale_inplace_numba(g, s: float) -> None:
    """g *= s, in float32 (as clip_grad_norm_ multiplies by a float32 coefficient)."""
    s32 = np.float32(s)
    for i in range(g.shape[0]):
        g[i] = g[i] * s32


def scale_inplace_numpy(g, s: float) -> None:
    g *= np.float32(s)


sgd_step = pick(sgd_step_numba, lean.sgd_step)
adam_step = pick(adam_step_numba, lean_optim.adam_step)
global_sq_norm = pick(global_sq_norm_numba, lean_optim.global_sq_norm)
scale_inplace = pick(scale_inplace_numba, scale_inplace_numpy)
