"""Allocation-free numpy max-pool backward (see :mod:`.lean`): the runtime without numba.

Bit-identical to ``pool.maxpool2d_bwd_numba``: the window's argmax is found over the
window offsets in row-major order with numba's rule (start at the first in-range
element, replace on ``>`` or NaN), and dy is added into dx over the offsets in reverse
order, which is ascending (oy, ox) for every dx element, numba's summation order.
"""

from __future__ import annotations

import numpy as np

from . import lean
from .lean import _offsets, _rows, scratch

Arr = np.ndarray


def maxpool2d_bwd(x: Arr, dy: Arr, dx: Arr, kh: int, kw: int, sh: int, sw: int, pt: int,
                  pl: int) -> None:
    """As ``pool.maxpool2d_bwd_numba``: dx (overwritten) = dy routed to each window's
    first maximum (the last NaN if any); windows all in the padding credit nothing."""
    nb, nc, h, w = x.shape
    oh, ow = dy.shape[2:]
    xp, dyp, dxp = x.reshape(nb * nc, h, w), dy.reshape(nb * nc, oh, ow), dx.reshape(nb * nc, h, w)
    offs = list(_offsets(kh, kw, sh, sw, pt, pl, h, w, oh, ow))
    dx.fill(0)
    disjoint = sh >= kh and sw >= kw  # each dx element is in one window at most
    for p0, p1 in _rows(nb * nc, oh * ow, lean.SCRATCH_BYTES // 4):
        n = (p1 - p0) * oh * ow
        best = scratch(n, np.float32).reshape(p1 - p0, oh, ow)
        arg = scratch(n, np.int32).reshape(p1 - p0, oh, ow)  # window offset, -1: none yet
        best.fill(-np.inf)
        arg.fill(-1)
        for i, j, (y0, y1, x0, x1), src in offs:
            if y1 <= y0 or x1 <= x0:
                continue
            v = xp[p0:p1, src[0], src[1]]
            bv, av = best[:, y0:y1, x0:x1], arg[:, y0:y1, x0:x1]
            take = scratch(v.size, np.bool_).reshape(v.shape)
            tmp = scratch(v.size, np.bool_, 1).reshape(v.shape)
            np.greater(v, bv, out=take)
            np.isnan(v, out=tmp)
            np.logical_or(take, tmp, out=take)
            np.equal(av, -1, out=tmp)
            np.logical_or(take, tmp, out=take)
            np.copyto(bv, v, where=take)
            np.copyto(av, i * kw + j, where=take)
        for i, j, (y0, y1, x0, x1), src in reversed(offs):
            if y1 <= y0 or x1 <= x0:
                continue
            av = arg[:, y0:y1, x0:x1]
            hit = scratch(av.size, np.bool_).reshape(av.shape)
            np.equal(av, i * kw + j, out=hit)
            dst = dxp[p0:p1, src[0], src[1]]
            if disjoint:  # numpy would buffer an in-place add into a strided view
                np.copyto(dst, dyp[p0:p1, y0:y1, x0:x1], where=hit)
            else:
                np.add(dst, dyp[p0:p1, y0:y1, x0:x1], out=dst, where=hit)
    if disjoint:  # 0.0 + dy, as numba adds: -0.0 becomes +0.0, nothing else changes
        np.add(dx, np.float32(0), out=dx)
