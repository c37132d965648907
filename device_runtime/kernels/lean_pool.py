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


def _argmax(xp: Arr, p0: int, p1: int, offs: list, kw: int, oh: int, ow: int) -> tuple[Arr, Arr]:
    """Planes p0..p1's window maxima and their window offsets (scratch; -1: a window all
    in the padding), numba's rule: start at the first in-range element, replace on ``>``
    or NaN."""
    n = (p1 - p0) * oh * ow
    best = scratch(n, np.float32).reshape(p1 - p0, oh, ow)
    arg = scratch(n, np.int32).reshape(p1 - p0, oh, ow)
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
    return best, arg


def _route(arg: Arr, dyp: Arr, dxp: Arr, p0: int, p1: int, offs: list, kw: int,
           disjoint: bool) -> None:
    """Add planes p0..p1 of dy at their windows' offsets ``arg`` into dx, over the offsets
    in reverse order (ascending (oy, ox) for every dx element, numba's order)."""
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


def _planes(a: Arr) -> Arr:
    return a.reshape(a.shape[0] * a.shape[1], a.shape[2], a.shape[3])


def maxpool2d_bwd(x: Arr, dy: Arr, dx: Arr, kh: int, kw: int, sh: int, sw: int, pt: int,
                  pl: int) -> None:
    """As ``pool.maxpool2d_bwd_numba``: dx (overwritten) = dy routed to each window's
    first maximum (the last NaN if any); windows all in the padding credit nothing."""
    nb, nc, h, w = x.shape
    oh, ow = dy.shape[2:]
    offs = list(_offsets(kh, kw, sh, sw, pt, pl, h, w, oh, ow))
    dx.fill(0)
    disjoint = sh >= kh and sw >= kw  # each dx element is in one window at most
    for p0, p1 in _rows(nb * nc, oh * ow, lean.SCRATCH_BYTES // 4):
        _, arg = _argmax(_planes(x), p0, p1, offs, kw, oh, ow)
        _route(arg, _planes(dy), _planes(dx), p0, p1, offs, kw, disjoint)
    if disjoint:  # 0.0 + dy, as numba adds: -0.0 becomes +0.0, nothing else changes
        np.add(dx, np.float32(0), out=dx)


def maxpool2d_fwd_arg(x: Arr, y: Arr, arg: Arr, none: int, kh: int, kw: int, sh: int,
                      sw: int, pt: int, pl: int) -> None:
    """As ``pool.maxpool2d_fwd_arg_numba``: y = the window maxima, arg = their offsets."""
    nb, nc, h, w = x.shape
    oh, ow = y.shape[2:]
    assert none == np.iinfo(arg.dtype).max, "maxpool2d_fwd_arg: none is the dtype's largest"
    offs = list(_offsets(kh, kw, sh, sw, pt, pl, h, w, oh, ow))
    yp, ap = _planes(y), _planes(arg)
    for p0, p1 in _rows(nb * nc, oh * ow, lean.SCRATCH_BYTES // 4):
        best, a = _argmax(_planes(x), p0, p1, offs, kw, oh, ow)
        np.copyto(yp[p0:p1], best)
        np.copyto(ap[p0:p1], a, casting="unsafe")  # -1 wraps to the unsigned ``none``


def maxpool2d_bwd_arg(arg: Arr, dy: Arr, dx: Arr, none: int, kh: int, kw: int, sh: int,
                      sw: int, pt: int, pl: int) -> None:
    """As ``pool.maxpool2d_bwd_arg_numba``: dx (overwritten) = dy routed to ``arg``."""
    nb, nc, h, w = dx.shape
    oh, ow = dy.shape[2:]
    offs = list(_offsets(kh, kw, sh, sw, pt, pl, h, w, oh, ow))
    dx.fill(0)
    disjoint = sh >= kh and sw >= kw
    for p0, p1 in _rows(nb * nc, oh * ow, lean.SCRATCH_BYTES // 4):
        _route(_planes(arg)[p0:p1], _planes(dy), _planes(dx), p0, p1, offs, kw, disjoint)
    if disjoint:
        np.add(dx, np.float32(0), out=dx)
