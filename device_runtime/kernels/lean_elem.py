"""Allocation-free numpy element-wise kernels (see :mod:`.lean`): activations other
than ReLU's forward, dropout, positional encoding and the L2 gradient term.

Flat (or row) blocks through :func:`.lean.scratch`, each numba expression evaluated in
the same order and precision. Bit-identical to numba: ReLU / leaky ReLU backward and
leaky forward, the sigmoid / tanh / softmax backward, dropout (the same splitmix64 hash
in uint64), the L2 term. Within float32 rounding: the sigmoid, tanh and swish forward
(numpy's exp, not libm's, may differ in the last float64 bit), softmax (pairwise row
sums) and the positional table (numpy's sin / cos / pow).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import lean
from .lean import _fma, scratch
from .lean_seq import _act

Arr = np.ndarray
_SLOT = 2


def _blocks(n: int, count: int) -> Iterator[tuple[slice, list[np.ndarray]]]:
    """Element ranges of a flat array, each with ``count`` float64 and two bool work
    arrays (the last two) of its length."""
    step = max(1, lean.SCRATCH_BYTES // 8 // max(count, 1))
    for a in range(0, n, step):
        b = min(a + step, n)
        f = scratch(count * (b - a), np.float64, _SLOT).reshape(count, b - a)
        m = scratch(2 * (b - a), np.bool_, _SLOT).reshape(2, b - a)
        yield slice(a, b), [*f, *m]


# ----------------------------------------------------------------------------- relu family
def relu_bwd(y: Arr, dy: Arr, dx: Arr) -> None:
    """As ``activation.relu_bwd_numba``: dx = 0 where y <= 0, else dy (NaN y passes dy)."""
    for s, (zero, _) in _blocks(y.shape[0], 0):
        np.less_equal(y[s], 0, out=zero)
        if dx is not dy:
            np.copyto(dx[s], dy[s])
        np.copyto(dx[s], 0.0, where=zero)


def _leaky(src: Arr, cond: Arr, out: Arr, slope: float) -> None:
    """out = src where cond > 0, else src * float32(slope)."""
    for s, (pos, neg) in _blocks(src.shape[0], 0):
        np.greater(cond[s], 0, out=pos)
        np.logical_not(pos, out=neg)
        if out is not src:
            np.copyto(out[s], src[s], where=pos)
        np.multiply(src[s], np.float32(slope), out=out[s], where=neg)


def leaky_relu_fwd(x: Arr, y: Arr, slope: float) -> None:
    """As ``activation.leaky_relu_fwd_numba``: y = x if x > 0 else slope * x."""
    _leaky(x, x, y, slope)


def leaky_relu_bwd(y: Arr, dy: Arr, dx: Arr, slope: float) -> None:
    """As ``activation.leaky_relu_bwd_numba``: dx = dy if y > 0 else slope * dy."""
    _leaky(dy, y, dx, slope)


# ----------------------------------------------------------------------------- sigmoid, tanh
def sigmoid_fwd(x: Arr, y: Arr) -> None:
    """As ``activation.sigmoid_fwd_numba`` (e = exp(-|x|); r = 1/(1+e); x >= 0: r, else e*r)."""
    for s, (v, t, pos, neg) in _blocks(x.shape[0], 2):
        np.copyto(v, x[s])
        _act(v, 1, t, pos, neg)
        np.copyto(y[s], v, casting="same_kind")


def tanh_fwd(x: Arr, y: Arr) -> None:
    """As ``activation.tanh_fwd_numba``: copysign((1 - e)/(1 + e), x), e = exp(-2|x|), and
    |x| - |x|^3/3 below 1e-4."""
    for s, (v, a, e, t, small, _) in _blocks(x.shape[0], 4):
        np.copyto(v, x[s])
        np.abs(v, out=a)
        np.multiply(a, -2.0, out=e)
        np.exp(e, out=e)
        np.add(e, 1.0, out=t)
        np.subtract(1.0, e, out=e)
        np.divide(e, t, out=e)
        np.less(a, 1e-4, out=small)
        np.multiply(a, a, out=t)  # a - a*a*a / 3
        np.multiply(t, a, out=t)
        np.divide(t, 3.0, out=t)
        np.subtract(a, t, out=t)
        np.copyto(e, t, where=small)
        np.copysign(e, v, out=e)
        np.copyto(y[s], e, casting="same_kind")


def _bwd_from_y(y: Arr, dy: Arr, dx: Arr, tanh: bool) -> None:
    for s, (v, d, t, _, _) in _blocks(y.shape[0], 3):
        np.copyto(v, y[s])
        np.copyto(d, dy[s])
        if tanh:  # dy * (1 - v*v)
            np.multiply(v, v, out=t)
            np.subtract(1.0, t, out=t)
        else:  # dy * v * (1 - v)
            np.subtract(1.0, v, out=t)
            np.multiply(d, v, out=d)
        np.multiply(d, t, out=d)
        np.copyto(dx[s], d, casting="same_kind")


def sigmoid_bwd(y: Arr, dy: Arr, dx: Arr) -> None:
    """As ``activation.sigmoid_bwd_numba``: dx = dy * y * (1 - y)."""
    _bwd_from_y(y, dy, dx, False)


def tanh_bwd(y: Arr, dy: Arr, dx: Arr) -> None:
    """As ``activation.tanh_bwd_numba``: dx = dy * (1 - y*y)."""
    _bwd_from_y(y, dy, dx, True)


def swish_fwd(x: Arr, y: Arr) -> None:
    """As ``activation.swish_fwd_numba``: y = x * sigmoid(x)."""
    for s, (v, sg, t, pos, neg) in _blocks(x.shape[0], 3):
        np.copyto(v, x[s])
        np.copyto(sg, v)
        _act(sg, 1, t, pos, neg)
        np.multiply(v, sg, out=v)
        np.copyto(y[s], v, casting="same_kind")


def swish_bwd(x: Arr, dy: Arr, dx: Arr) -> None:
    """As ``activation.swish_bwd_numba``: dx = dy * s * (1 + x * (1 - s))."""
    for s, (v, sg, t, d, pos, neg) in _blocks(x.shape[0], 4):
        np.copyto(v, x[s])
        np.copyto(sg, v)
        _act(sg, 1, t, pos, neg)
        np.subtract(1.0, sg, out=t)
        np.multiply(v, t, out=t)
        np.add(t, 1.0, out=t)
        np.copyto(d, dy[s])
        np.multiply(d, sg, out=d)
        np.multiply(d, t, out=d)
        np.copyto(dx[s], d, casting="same_kind")


# ----------------------------------------------------------------------------- softmax
def _row_blocks(R: int, K: int, count: int) -> Iterator[tuple[slice, list[np.ndarray]]]:
    step = max(1, lean.SCRATCH_BYTES // 8 // (count * K + 1))
    for r0 in range(0, R, step):
        n = min(r0 + step, R) - r0
        buf = scratch(n * (count * K + 1), np.float64, _SLOT)
        yield slice(r0, r0 + n), [*buf[:count * n * K].reshape(count, n, K), buf[count * n * K:]]


def softmax_fwd(x: Arr, y: Arr) -> None:
    """As ``activation.softmax_fwd_numba`` (row sums pairwise): y may alias x."""
    R, K = x.shape
    for r, (e, tot) in _row_blocks(R, K, 1):
        np.copyto(e, x[r])
        np.max(e, axis=1, out=tot)
        np.subtract(e, tot[:, None], out=e)
        np.exp(e, out=e)
        np.sum(e, axis=1, out=tot)
        np.copyto(y[r], e, casting="same_kind")  # numba keeps the float32 exps in y
        np.copyto(e, y[r])
        np.divide(1.0, tot, out=tot)
        np.multiply(e, tot[:, None], out=e)
        np.copyto(y[r], e, casting="same_kind")


def softmax_bwd(y: Arr, dy: Arr, dx: Arr) -> None:
    """As ``activation.softmax_bwd_numba``: dx = y * (dy - sum(dy * y)) per row (row sums
    pairwise: within float32 rounding); dx may alias dy."""
    R, K = y.shape
    for r, (v, d, t, dot) in _row_blocks(R, K, 3):
        np.copyto(v, y[r])
        np.copyto(d, dy[r])
        np.multiply(d, v, out=t)
        np.sum(t, axis=1, out=dot)
        np.subtract(d, dot[:, None], out=d)
        np.multiply(v, d, out=d)
        np.copyto(dx[r], d, casting="same_kind")


# ----------------------------------------------------------------------------- dropout
_U64 = np.uint64


def dropout_fwd(x: Arr, y: Arr, mask: Arr, rate: float, seed: int, call: int) -> None:
    """As ``dropout.dropout_fwd_numba``: the same splitmix64 hash of (seed, call, i)
    (uint64, wrapping), keep where its high 32 bits >= rate * 2^32. Bit-identical."""
    thr = _U64(min(int(rate * 4294967296.0), 4294967295))
    scale = np.float32(1.0 / (1.0 - rate))
    with np.errstate(over="ignore"):
        base = _U64(seed) * _U64(0x9E3779B97F4A7C15) + _U64(call) * _U64(0xD1B54A32D192ED03)
    n = x.shape[0]
    step = max(1, lean.SCRATCH_BYTES // 16)
    for a in range(0, n, step):
        b = min(a + step, n)
        z, t = scratch(2 * (b - a), np.uint64).reshape(2, b - a)
        keep, drop = scratch(2 * (b - a), np.bool_).reshape(2, b - a)
        z[0] = a  # z = base + i * golden, i = a .. b-1
        z[1:] = 1
        np.cumsum(z, out=z)
        np.multiply(z, _U64(0x9E3779B97F4A7C15), out=z)
        np.add(z, base, out=z)
        for sh, k in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            np.right_shift(z, _U64(sh), out=t)
            np.bitwise_xor(z, t, out=z)
            np.multiply(z, _U64(k), out=z)
        np.right_shift(z, _U64(31), out=t)
        np.bitwise_xor(z, t, out=z)
        np.right_shift(z, _U64(32), out=z)
        np.greater_equal(z, thr, out=keep)
        np.copyto(mask[a:b], keep)
        np.logical_not(keep, out=drop)
        np.multiply(x[a:b], scale, out=y[a:b])
        np.copyto(y[a:b], 0.0, where=drop)


def dropout_bwd(dy: Arr, mask: Arr, dx: Arr, rate: float) -> None:
    """As ``dropout.dropout_bwd_numba``: dx = dy * scale where kept, else 0."""
    scale = np.float32(1.0 / (1.0 - rate))
    for s, (drop, _) in _blocks(dy.shape[0], 0):
        np.equal(mask[s], 0, out=drop)
        np.multiply(dy[s], scale, out=dx[s])
        np.copyto(dx[s], 0.0, where=drop)


# ----------------------------------------------------------------------------- others
def pe_add(x: Arr, y: Arr) -> None:
    """As ``positional.pe_add_numba``: y = x + pe (float64 sum), the table computed per
    block of time steps; y may alias x."""
    B, T, D = x.shape
    step = max(1, lean.SCRATCH_BYTES // 8 // (2 * D) - 1)
    buf = scratch(D + step, np.float64, 3)
    den, col = buf[:D], buf[D:]
    _iota(den, 0)
    np.floor_divide(den, 2, out=den)
    np.multiply(den, 2, out=den)
    np.divide(den, D, out=den)  # (2*(d//2)) / D
    np.power(10000.0, den, out=den)
    for t0 in range(0, T, step):
        t1 = min(t0 + step, T)
        pe, v = scratch(2 * (t1 - t0) * D, np.float64, _SLOT).reshape(2, t1 - t0, D)
        c = col[:t1 - t0]
        _iota(c, t0)
        np.divide(c[:, None], den, out=pe)  # ang = t / 10000^(...)
        np.sin(pe[:, 0::2], out=pe[:, 0::2])
        np.cos(pe[:, 1::2], out=pe[:, 1::2])
        for b in range(B):
            np.copyto(v, x[b, t0:t1])
            np.add(v, pe, out=v)
            np.copyto(y[b, t0:t1], v, casting="same_kind")


def _iota(out: Arr, start: int) -> None:
    """out = start, start+1, ... (np.arange would allocate)."""
    out.fill(1.0)
    out[0] = start
    np.cumsum(out, out=out)


def l2_add(g: Arr, w: Arr, c: float) -> None:
    """As ``regularize.l2_add_numba``: g = float32(f64(w) * f64(float32(c)) + f64(g)),
    bit-identical."""
    cf = np.float64(np.float32(c))
    for s, (t, u, _, _) in _blocks(g.shape[0], 2):
        _fma(w[s], cf, g[s], t, u, g[s])
