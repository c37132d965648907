"""Activations, forward and backward, written into caller-provided arrays.

Elementwise kernels take flat 1-D float32 views (pass ``a.reshape(-1)``); softmax
takes 2-D ``(R, K)`` and normalises the last axis. The numba kernels loop without
allocating; the ``*_numpy`` references are dtype-generic (float64 inputs give float64
results, which the numerical gradient checks rely on).

Precision: transcendentals are evaluated in float64 and rounded once into the float32
output, so results are within about an ulp of the exact value (PyTorch computes in
float32 and may be a few ulps off).

Backward kernels read each element before writing it, so ``dx`` may alias ``dy``
(softmax takes its row sum first). relu, leaky relu, sigmoid, tanh and softmax
differentiate from the forward OUTPUT ``y``, so the input can be freed or overwritten
(``y`` may alias ``x``); gelu and swish need the input ``x``.
"""

from __future__ import annotations

import math

import numpy as np

from . import lean, lean_elem
from ._jit import njit, pick, prange

Arr = np.ndarray  # float32 unless stated

_SQRT1_2 = 0.7071067811865476  # 1/sqrt(2)
_INV_SQRT_2PI = 0.3989422804014327  # 1/sqrt(2*pi)

# math.erfc is not a numpy ufunc; scipy is not a dependency. Slow, but only used by
# the reference path. erfc (not 1+erf) keeps the gelu tail accurate for x << 0.
_erfc_np = np.vectorize(math.erfc, otypes=[np.float64])


@njit
def _sigmoid64(v: float) -> float:
    # exp of a non-positive number only: no overflow for any v. The final select (not
    # an if/else around the exp) compiles branch-free: ~1.6x faster on random signs.
    e = math.exp(-abs(v))
    r = 1.0 / (1.0 + e)
    return r if v >= 0.0 else e * r


def _sigmoid64_np(x64: Arr) -> np.ndarray:
    e = np.exp(-np.abs(x64))
    return np.where(x64 >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _f64(a: Arr) -> np.ndarray:
    return a.astype(np.float64)


# ---------------------------------------------------------------- relu / leaky relu
@njit
def relu_fwd_numba(x: Arr, y: Arr) -> None:
    """y = max(x, 0); y may alias x."""
    for i in range(x.shape[0]):
        v = x[i]
        # `v <= 0` (not `v > 0`) lets NaN through, as torch.relu does
        y[i] = np.float32(0.0) if v <= 0 else v


def relu_fwd_numpy(x: Arr, y: Arr) -> None:
    y[...] = np.where(x <= 0, 0, x)


@njit
def relu_bwd_numba(y: Arr, dy: Arr, dx: Arr) -> None:
    """dx = dy where y > 0, else 0 (from the output)."""
    for i in range(y.shape[0]):
        dx[i] = np.float32(0.0) if y[i] <= 0 else dy[i]


def relu_bwd_numpy(y: Arr, dy: Arr, dx: Arr) -> None:
    dx[...] = np.where(y <= 0, 0, dy)


@njit
def leaky_relu_fwd_numba(x: Arr, y: Arr, slope: float) -> None:
    """y = x if x > 0 else slope*x; y may alias x."""
    s = np.float32(slope)  # PyTorch casts the slope to the tensor dtype
    for i in range(x.shape[0]):
        v = x[i]
        y[i] = v if v > 0 else v * s


def leaky_relu_fwd_numpy(x: Arr, y: Arr, slope: float) -> None:
    y[...] = np.where(x > 0, x, x * x.dtype.type(slope))


@njit
def leaky_relu_bwd_numba(y: Arr, dy: Arr, dx: Arr, slope: float) -> None:
    """dx = dy if y > 0 else slope*dy (from the output; needs slope > 0)."""
    # with slope > 0, y > 0 exactly where x > 0
    s = np.float32(slope)
    for i in range(y.shape[0]):
        g = dy[i]
        dx[i] = g if y[i] > 0 else g * s


def leaky_relu_bwd_numpy(y: Arr, dy: Arr, dx: Arr, slope: float) -> None:
    dx[...] = np.where(y > 0, dy, dy * dy.dtype.type(slope))


# ------------------------------------------------------------------ sigmoid / tanh
@njit
def sigmoid_fwd_numba(x: Arr, y: Arr) -> None:
    """y = 1/(1 + exp(-x)), without overflow for any x."""
    for i in range(x.shape[0]):
        y[i] = _sigmoid64(np.float64(x[i]))


def sigmoid_fwd_numpy(x: Arr, y: Arr) -> None:
    y[...] = _sigmoid64_np(_f64(x))


@njit
def sigmoid_bwd_numba(y: Arr, dy: Arr, dx: Arr) -> None:
    """dx = dy*y*(1 - y)."""
    for i in range(y.shape[0]):
        v = np.float64(y[i])
        dx[i] = np.float64(dy[i]) * v * (1.0 - v)


def sigmoid_bwd_numpy(y: Arr, dy: Arr, dx: Arr) -> None:
    v = _f64(y)
    dx[...] = _f64(dy) * v * (1.0 - v)


@njit
def tanh_fwd_numba(x: Arr, y: Arr) -> None:
    """y = tanh(x)."""
    # tanh(a) = (1 - e)/(1 + e), e = exp(-2a), a = |x|: ~3.5x faster than libm tanh.
    # 1 - e cancels for tiny a (relative error ~1e-16/a), so below 1e-4 use the series
    # a - a^3/3 (next term 2a^5/15 is below float64 precision there).
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        a = abs(v)
        t: float  # np.float64 in one branch, a Python float (also a double) in the other
        if a < 1e-4:
            t = a - a * a * a / 3.0
        else:
            e = math.exp(-2.0 * a)
            t = (1.0 - e) / (1.0 + e)
        y[i] = math.copysign(t, v)


def tanh_fwd_numpy(x: Arr, y: Arr) -> None:
    y[...] = np.tanh(_f64(x))


@njit
def tanh_bwd_numba(y: Arr, dy: Arr, dx: Arr) -> None:
    """dx = dy*(1 - y^2)."""
    for i in range(y.shape[0]):
        v = np.float64(y[i])
        dx[i] = np.float64(dy[i]) * (1.0 - v * v)


def tanh_bwd_numpy(y: Arr, dy: Arr, dx: Arr) -> None:
    v = _f64(y)
    dx[...] = _f64(dy) * (1.0 - v * v)


# -------------------------------------------------------------------- softmax (R, K)
@njit(parallel=True)
def softmax_fwd_numba(x: Arr, y: Arr) -> None:
    """Row softmax of (R, K), max-subtracted, sums in float64; y may alias x."""
    R, K = x.shape
    for r in prange(R):  # rows are independent: 1.5-2x on 2 cores from (256, 10) up
        m = np.float64(x[r, 0])
        for k in range(1, K):
            if x[r, k] > m:
                m = np.float64(x[r, k])
        s = 0.0
        for k in range(K):
            # y holds exp(x - m) until the sum is known; reading x[r, k] before writing
            # y[r, k] keeps this correct when y aliases x
            e = math.exp(np.float64(x[r, k]) - m)
            s += e
            y[r, k] = e
        inv = 1.0 / s
        for k in range(K):
            y[r, k] = np.float64(y[r, k]) * inv


def softmax_fwd_numpy(x: Arr, y: Arr) -> None:
    x64 = _f64(x)
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    y[...] = e / e.sum(axis=1, keepdims=True)


@njit(parallel=True)
def softmax_bwd_numba(y: Arr, dy: Arr, dx: Arr) -> None:
    """dx = y*(dy - sum_k(dy*y)) per row."""
    R, K = y.shape
    for r in prange(R):
        dot = 0.0
        for k in range(K):
            dot += np.float64(dy[r, k]) * np.float64(y[r, k])
        for k in range(K):
            dx[r, k] = np.float64(y[r, k]) * (np.float64(dy[r, k]) - dot)


def softmax_bwd_numpy(y: Arr, dy: Arr, dx: Arr) -> None:
    y64, dy64 = _f64(y), _f64(dy)
    dot = np.sum(dy64 * y64, axis=1, keepdims=True)
    dx[...] = y64 * (dy64 - dot)


# ------------------------------------------------------------------- gelu / swish
@njit
def gelu_fwd_numba(x: Arr, y: Arr) -> None:
    """Exact GELU (PyTorch approximate='none'): y = x*Phi(x)."""
    # Phi(x) = erfc(-x/sqrt2)/2
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        y[i] = 0.5 * v * math.erfc(-v * _SQRT1_2)


def gelu_fwd_numpy(x: Arr, y: Arr) -> None:
    v = _f64(x)
    y[...] = 0.5 * v * _erfc_np(-v * _SQRT1_2)


@njit
def gelu_bwd_numba(x: Arr, dy: Arr, dx: Arr) -> None:
    """dx = dy*(Phi(x) + x*phi(x)) (from the input)."""
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        cdf = 0.5 * math.erfc(-v * _SQRT1_2)
        pdf = _INV_SQRT_2PI * math.exp(-0.5 * v * v)
        dx[i] = np.float64(dy[i]) * (cdf + v * pdf)


def gelu_bwd_numpy(x: Arr, dy: Arr, dx: Arr) -> None:
    v = _f64(x)
    cdf = 0.5 * _erfc_np(-v * _SQRT1_2)
    pdf = _INV_SQRT_2PI * np.exp(-0.5 * v * v)
    dx[...] = _f64(dy) * (cdf + v * pdf)


@njit
def swish_fwd_numba(x: Arr, y: Arr) -> None:
    """y = x*sigmoid(x) (PyTorch SiLU)."""
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        y[i] = v * _sigmoid64(v)


def swish_fwd_numpy(x: Arr, y: Arr) -> None:
    v = _f64(x)
    y[...] = v * _sigmoid64_np(v)


@njit
def swish_bwd_numba(x: Arr, dy: Arr, dx: Arr) -> None:
    """dx = dy*s*(1 + x*(1 - s)), s = sigmoid(x) (from the input)."""
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        s = _sigmoid64(v)
        dx[i] = np.float64(dy[i]) * s * (1.0 + v * (1.0 - s))


def swish_bwd_numpy(x: Arr, dy: Arr, dx: Arr) -> None:
    v = _f64(x)
    s = _sigmoid64_np(v)
    dx[...] = _f64(dy) * s * (1.0 + v * (1.0 - s))


relu_fwd = pick(relu_fwd_numba, lean.relu_fwd)
relu_bwd = pick(relu_bwd_numba, lean_elem.relu_bwd)
leaky_relu_fwd = pick(leaky_relu_fwd_numba, lean_elem.leaky_relu_fwd)
leaky_relu_bwd = pick(leaky_relu_bwd_numba, lean_elem.leaky_relu_bwd)
sigmoid_fwd = pick(sigmoid_fwd_numba, lean_elem.sigmoid_fwd)
sigmoid_bwd = pick(sigmoid_bwd_numba, lean_elem.sigmoid_bwd)
tanh_fwd = pick(tanh_fwd_numba, lean_elem.tanh_fwd)
tanh_bwd = pick(tanh_bwd_numba, lean_elem.tanh_bwd)
softmax_fwd = pick(softmax_fwd_numba, lean_elem.softmax_fwd)
softmax_bwd = pick(softmax_bwd_numba, lean_elem.softmax_bwd)
gelu_fwd = pick(gelu_fwd_numba, gelu_fwd_numpy)
gelu_bwd = pick(gelu_bwd_numba, gelu_bwd_numpy)
swish_fwd = pick(swish_fwd_numba, lean_elem.swish_fwd)
swish_bwd = pick(swish_bwd_numba, lean_elem.swish_bwd)
