"""Allocation-free numpy LSTM / GRU / RNN step kernels (see :mod:`.lean`).

Row blocks of the ``(B, ...)`` step arrays go through one float64 scratch buffer, cut
into as many ``(rows, U)`` pieces as a kernel needs; every expression of the numba
kernel in ``sequence.py`` is evaluated in the same order in float64 and rounded once
to float32 on store. The derivatives and ReLU are then bit-identical to numba; tanh and
exp come from numpy rather than libm, which may differ in the last float64 bit, so a
result may (rarely) differ from numba's by one float32 rounding.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import lean
from .lean import scratch

Arr = np.ndarray
_SLOT = 2  # lean's kernels use float64 slots 0 and 1


def _blocks(B: int, U: int, count: int) -> Iterator[tuple[slice, list[np.ndarray]]]:
    """Row slices of at most one scratch buffer's worth, each with ``count`` float64
    (rows, U) work arrays and two bool ones (the last two)."""
    step = max(1, lean.SCRATCH_BYTES // 8 // (count * max(U, 1)))
    for r0 in range(0, B, step):
        r1 = min(r0 + step, B)
        n = (r1 - r0) * U
        f = scratch(count * n, np.float64, _SLOT).reshape(count, r1 - r0, U)
        m = scratch(2 * n, np.bool_, _SLOT).reshape(2, r1 - r0, U)
        yield slice(r0, r1), [*f, *m]


def _act(v: Arr, code: int, t: Arr, pos: Arr, neg: Arr) -> None:
    """v = act(v) in place, as ``sequence._act`` (t, pos, neg: work arrays)."""
    if code == 0:
        np.tanh(v, out=v)
    elif code == 1:  # e = exp(-|v|), r = 1/(1+e); v >= 0: r, else e*r
        np.greater_equal(v, 0.0, out=pos)
        np.logical_not(pos, out=neg)
        np.abs(v, out=v)
        np.negative(v, out=v)
        np.exp(v, out=v)
        np.add(v, 1.0, out=t)
        np.divide(1.0, t, out=t)
        np.multiply(v, t, out=t, where=neg)
        np.copyto(v, t)
    else:  # v if v > 0 else 0.0 (NaN and -0.0 give 0.0)
        np.greater(v, 0.0, out=pos)
        np.logical_not(pos, out=neg)
        np.copyto(v, 0.0, where=neg)


def _dact(y: Arr, code: int, out: Arr, pos: Arr) -> None:
    """out = act'(.) from the output y, as ``sequence._dact``."""
    if code == 0:  # 1 - y*y
        np.multiply(y, y, out=out)
        np.subtract(1.0, out, out=out)
    elif code == 1:  # y * (1 - y)
        np.subtract(1.0, y, out=out)
        np.multiply(y, out, out=out)
    else:
        np.greater(y, 0.0, out=pos)
        np.copyto(out, pos)


def _pre(dst: Arr, a: Arr, b: Arr, t: Arr) -> None:
    """dst = f64(a) + f64(b) (a, b float32 views)."""
    np.copyto(dst, a)
    np.copyto(t, b)
    np.add(dst, t, out=dst)


def lstm_fwd_step(pre: Arr, gh: Arr, c_prev: Arr, gates: Arr, c: Arr, h: Arr, act: int,
                  ract: int) -> None:
    """As ``sequence.lstm_fwd_step_numba`` (``gates`` may alias ``pre``)."""
    B, U = c.shape
    for r, (i, f, g, o, t, u, pos, neg) in _blocks(B, U, 6):
        for k, (v, code) in enumerate(((i, ract), (f, ract), (g, act), (o, ract))):
            _pre(v, pre[r, k * U:(k + 1) * U], gh[r, k * U:(k + 1) * U], t)
            _act(v, code, t, pos, neg)
        for k, v in enumerate((i, f, g, o)):
            np.copyto(gates[r, k * U:(k + 1) * U], v, casting="same_kind")
        np.copyto(t, c_prev[r])  # cc = f * c_prev + i * g
        np.multiply(f, t, out=t)
        np.multiply(i, g, out=u)
        np.add(t, u, out=t)
        np.copyto(c[r], t, casting="same_kind")
        _act(t, act, u, pos, neg)  # h = o * act(cc)
        np.multiply(o, t, out=t)
        np.copyto(h[r], t, casting="same_kind")


def lstm_bwd_step(gates: Arr, c: Arr, c_prev: Arr, dh: Arr, dc: Arr, dpre: Arr, act: int,
                  ract: int) -> None:
    """As ``sequence.lstm_bwd_step_numba``."""
    B, U = c.shape
    for r, (i, f, g, o, tc, d, dcc, cp, t, q, pos, neg) in _blocks(B, U, 10):
        for k, v in enumerate((i, f, g, o)):
            np.copyto(v, gates[r, k * U:(k + 1) * U])
        np.copyto(tc, c[r])
        _act(tc, act, t, pos, neg)
        np.copyto(d, dh[r])
        np.multiply(d, o, out=dcc)  # dcc = dc + d * o * act'(tc)
        _dact(tc, act, q, pos)
        np.multiply(dcc, q, out=dcc)
        np.copyto(t, dc[r])
        np.add(t, dcc, out=dcc)
        np.copyto(cp, c_prev[r])
        # dpre = dcc*g*act'(i), dcc*c_prev*act'(f), dcc*i*act'(g), d*tc*act'(o)
        for k, (a, b, y, code) in enumerate(((dcc, g, i, ract), (dcc, cp, f, ract),
                                             (dcc, i, g, act), (d, tc, o, ract))):
            np.multiply(a, b, out=t)
            _dact(y, code, q, pos)
            np.multiply(t, q, out=t)
            np.copyto(dpre[r, k * U:(k + 1) * U], t, casting="same_kind")
        np.multiply(dcc, f, out=dcc)
        np.copyto(dc[r], dcc, casting="same_kind")


def gru_fwd_step(gates: Arr, gh: Arr, h_prev: Arr, h: Arr, act: int, ract: int) -> None:
    """As ``sequence.gru_fwd_step_numba``."""
    B, U = h.shape
    for r, (z, rr, n, ghn, t, pos, neg) in _blocks(B, U, 5):
        _pre(z, gates[r, :U], gh[r, :U], t)
        _act(z, ract, t, pos, neg)
        _pre(rr, gates[r, U:2 * U], gh[r, U:2 * U], t)
        _act(rr, ract, t, pos, neg)
        np.copyto(ghn, gh[r, 2 * U:3 * U])  # n = act(gx_n + r * ghn)
        np.multiply(rr, ghn, out=n)
        np.copyto(t, gates[r, 2 * U:3 * U])
        np.add(t, n, out=n)
        _act(n, act, t, pos, neg)
        for k, v in enumerate((z, rr, n, ghn)):
            np.copyto(gates[r, k * U:(k + 1) * U], v, casting="same_kind")
        np.subtract(1.0, z, out=t)  # h = (1 - z) * n + z * h_prev
        np.multiply(t, n, out=t)
        np.copyto(rr, h_prev[r])
        np.multiply(z, rr, out=rr)
        np.add(t, rr, out=t)
        np.copyto(h[r], t, casting="same_kind")


def gru_bwd_step(gates: Arr, h_prev: Arr, dh: Arr, dgx: Arr, dgh: Arr, act: int,
                 ract: int) -> None:
    """As ``sequence.gru_bwd_step_numba``."""
    B, U = dh.shape
    for r, (z, rr, n, ghn, d, dn, t, q, pos, neg) in _blocks(B, U, 8):
        for k, v in enumerate((z, rr, n, ghn)):
            np.copyto(v, gates[r, k * U:(k + 1) * U])
        np.copyto(d, dh[r])
        np.subtract(1.0, z, out=dn)  # dn = d * (1 - z) * act'(n)
        np.multiply(d, dn, out=dn)
        _dact(n, act, q, pos)
        np.multiply(dn, q, out=dn)
        np.copyto(t, h_prev[r])  # dz = d * (h_prev - n) * act'(z)
        np.subtract(t, n, out=t)
        np.multiply(d, t, out=t)
        _dact(z, ract, q, pos)
        np.multiply(t, q, out=t)
        np.copyto(dgx[r, :U], t, casting="same_kind")
        np.copyto(dgh[r, :U], t, casting="same_kind")
        np.multiply(dn, ghn, out=t)  # dr = dn * ghn * act'(r)
        _dact(rr, ract, q, pos)
        np.multiply(t, q, out=t)
        np.copyto(dgx[r, U:2 * U], t, casting="same_kind")
        np.copyto(dgh[r, U:2 * U], t, casting="same_kind")
        np.copyto(dgx[r, 2 * U:3 * U], dn, casting="same_kind")
        np.multiply(dn, rr, out=t)
        np.copyto(dgh[r, 2 * U:3 * U], t, casting="same_kind")
        np.multiply(d, z, out=t)
        np.copyto(dh[r], t, casting="same_kind")


def rnn_fwd_step(h: Arr, gh: Arr, act: int) -> None:
    """As ``sequence.rnn_fwd_step_numba``: h = act(h + gh)."""
    B, U = h.shape
    for r, (v, t, pos, neg) in _blocks(B, U, 2):
        _pre(v, h[r], gh[r], t)
        _act(v, act, t, pos, neg)
        np.copyto(h[r], v, casting="same_kind")


def rnn_bwd_step(h: Arr, dh: Arr, dpre: Arr, act: int) -> None:
    """As ``sequence.rnn_bwd_step_numba``: dpre = dh * act'(h)."""
    B, U = h.shape
    for r, (y, t, pos, _) in _blocks(B, U, 2):
        np.copyto(y, h[r])
        _dact(y, act, t, pos)
        np.copyto(y, dh[r])
        np.multiply(y, t, out=y)
        np.copyto(dpre[r], y, casting="same_kind")
