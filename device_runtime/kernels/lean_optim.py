"""Allocation-free numpy Adam / AdamW step and gradient norm (see :mod:`.lean`).

Block by block through :func:`.lean.scratch`, the same float32 operations as
``optim.adam_step_numba`` and the same fused multiply-adds (float32 operands widened
to float64, whose product is exact, then one rounding of the sum): bit-identical to
numba. ``g`` is never written.
"""

from __future__ import annotations

import numpy as np

from . import lean
from .lean import _fma, _rows, scratch

Arr = np.ndarray


def adam_step(w: Arr, g: Arr, m: Arr, v: Arr, lr: float, beta1: float, beta2: float,
              eps: float, weight_decay: float, step: int, decoupled: bool) -> None:
    """As ``optim.adam_step_numba`` (torch.optim.Adam / AdamW), bit-identical."""
    f32, f64 = np.float32, np.float64
    bc1 = 1.0 - beta1 ** f64(step)
    bc2 = 1.0 - beta2 ** f64(step)
    nstep, bc2_sqrt, eps32 = f32(-(lr / bc1)), f32(bc2**0.5), f32(eps)
    wd, decay = f32(weight_decay), f32(1.0 - lr * weight_decay)
    b2, omb2 = f32(beta2), f32(1.0 - beta2)
    wt = f32(1.0 - beta1)
    small = abs(wt) < 0.5
    coeff = f64(wt if small else wt - f32(1.0))
    # float64 blocks: two float64 and two float32 buffers of the block's length
    for a, b in _rows(w.shape[0], 1, lean.SCRATCH_BYTES // 16):
        n = b - a
        t64, u64 = scratch(2 * n, np.float64).reshape(2, n)
        d, e = scratch(2 * n, np.float32).reshape(2, n)
        wb, mb, vb = w[a:b], m[a:b], v[a:b]
        np.copyto(d, g[a:b])
        if weight_decay != 0.0:
            if decoupled:
                np.multiply(wb, decay, out=wb)  # param.mul_(1 - lr*wd)
            else:
                _fma(wb, f64(wd), d, t64, u64, d)  # grad.add(param, alpha=wd)
        np.subtract(d, mb, out=e)  # exp_avg.lerp_(grad, 1 - beta1)
        _fma(e, coeff, mb if small else d, t64, u64, mb)
        np.multiply(d, omb2, out=e)  # exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
        np.multiply(vb, b2, out=vb)
        np.copyto(t64, e)
        np.copyto(u64, d)
        np.multiply(t64, u64, out=t64)
        np.copyto(u64, vb)
        np.add(t64, u64, out=t64)
        np.copyto(vb, t64, casting="same_kind")
        np.sqrt(vb, out=e)  # denom = sqrt(v) / bc2_sqrt + eps
        np.divide(e, bc2_sqrt, out=e)
        np.add(e, eps32, out=e)
        np.multiply(mb, nstep, out=d)  # param.addcdiv_(exp_avg, denom, -step_size)
        np.divide(d, e, out=d)
        np.add(wb, d, out=wb)


def global_sq_norm(g: Arr) -> float:
    """As ``optim.global_sq_norm_numba``: the float64 sum of squares of ``g`` (summed
    pairwise, in blocks: within float64 rounding of numba's sequential sum)."""
    acc = 0.0
    for a, b in _rows(g.shape[0], 1):
        t = scratch(b - a, np.float64)
        np.copyto(t, g[a:b])
        np.multiply(t, t, out=t)
        acc += float(np.sum(t))
    return acc
