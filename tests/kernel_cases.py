"""Inputs and comparisons shared by the kernel tests (``tests/test_kernels_*.py``).

Convolution and pooling cases are tuples ``(B, C, H, W, kh, kw, sh, sw, pt, pb, pl, pr)``;
the math helpers build float32 inputs and compare with a message.
"""

from __future__ import annotations

import numpy as np
import pytest

F32 = np.float32
SLOPE = 0.1  # leaky relu slope used throughout
EPS = 1e-5  # batch-norm epsilon
ELEMENTWISE = ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "swish"]


# ---------------------------------------------------------------------- conv and pool cases


def out_size(size: int, k: int, s: int, p0: int, p1: int) -> int:
    return (size + p0 + p1 - k) // s + 1


def _cases(seed: int, n: int, max_pad_frac: bool = False) -> list[tuple[int, ...]]:
    """Random (B, C, H, W, kh, kw, sh, sw, pt, pb, pl, pr) with at least one output.

    ``max_pad_frac`` limits pads to k//2 (PyTorch's pooling rule); else pads are 0..k-1,
    so windows may lie partly (never wholly) in the padding.
    """
    rng = np.random.default_rng(seed)
    cases = []
    while len(cases) < n:
        b, c = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        h, w = int(rng.integers(1, 10)), int(rng.integers(1, 10))
        kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
        sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        lim_h, lim_w = (kh // 2, kw // 2) if max_pad_frac else (kh - 1, kw - 1)
        pt, pb = (int(v) for v in rng.integers(0, lim_h + 1, 2))
        pl, pr = (int(v) for v in rng.integers(0, lim_w + 1, 2))
        if out_size(h, kh, sh, pt, pb) >= 1 and out_size(w, kw, sw, pl, pr) >= 1:
            cases.append((b, c, h, w, kh, kw, sh, sw, pt, pb, pl, pr))
    return cases


# a few fixed cases first: 3x3 'same', even kernel 'same' (asymmetric), 1x1, strided
FIXED = [
    (2, 3, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1),
    (2, 2, 6, 5, 2, 2, 1, 1, 0, 1, 0, 1),
    (1, 3, 5, 7, 4, 4, 1, 1, 1, 2, 2, 1),
    (3, 2, 7, 4, 1, 1, 1, 1, 0, 0, 0, 0),
    (4, 1, 9, 6, 3, 3, 2, 2, 1, 1, 1, 1),
    (1, 2, 2, 3, 5, 5, 1, 3, 2, 2, 4, 0),  # kernel larger than the input
]
# stride 1 with ow == w takes im2col's whole-plane copy path: every kernel shape with
# 'same' padding (asymmetric for even kernels), on tiny and thin inputs
SAME = [(1, 2) + hw + (kh, kw, 1, 1, (kh - 1) // 2, kh // 2, (kw - 1) // 2, kw // 2)
        for hw, (kh, kw) in zip([(1, 1), (1, 3), (2, 5), (5, 2), (4, 4)] * 5,
                                [(kh, kw) for kh in range(1, 6) for kw in range(1, 6)])]
CONV_CASES = FIXED + _cases(0, 20) + SAME
POOL_CASES = FIXED[:2] + [(2, 3, 8, 8, 2, 2, 2, 2, 0, 0, 0, 0)] + _cases(1, 20, True)


def rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(F32)


def col_shapes(case: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, int], int, int]:
    b, c, h, w, kh, kw, sh, sw, pt, pb, pl, pr = case
    oh, ow = out_size(h, kh, sh, pt, pb), out_size(w, kw, sw, pl, pr)
    return (b, c, h, w), (c * kh * kw, b * oh * ow), oh, ow


def geom(case: tuple[int, ...]) -> tuple[int, ...]:
    """(kh, kw, sh, sw, pt, pl) of a case."""
    return case[4], case[5], case[6], case[7], case[8], case[10]


def pool_arrays(case: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    b, c, h, w, kh, kw, sh, sw, pt, pb, pl, pr = case
    rng = np.random.default_rng(seed)
    x = rand(rng, b, c, h, w)
    dy = rand(rng, b, c, out_size(h, kh, sh, pt, pb), out_size(w, kw, sw, pl, pr))
    return x, dy


# ---------------------------------------------------------------------- math


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def act_inputs(seed: int = 0) -> np.ndarray:
    """Random values plus the awkward ones: zeros, tiny, tanh's series cut, huge."""
    special = [0.0, -0.0, 1e-7, -1e-7, 9.9e-5, 1.01e-4, -1e-4, 0.5, -0.5, 8.0, -8.0,
               30.0, -30.0, 100.0, -100.0, 1e4, -1e4]
    return f32(np.concatenate([special, np.random.default_rng(seed).normal(0, 3, 200)]))


def assert_close(got, want, rtol: float, atol: float, what: str) -> None:
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def num_grad(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar f at x (float64; x is perturbed in place)."""
    g = np.zeros_like(x)
    xf, gf = x.reshape(-1), g.reshape(-1)
    for i in range(xf.size):
        old = xf[i]
        xf[i] = old + h
        fp = f(x)
        xf[i] = old - h
        fm = f(x)
        xf[i] = old
        gf[i] = (fp - fm) / (2 * h)
    return g


def check_grads(analytic: np.ndarray, numeric: np.ndarray, what: str,
                rtol: float = 1e-6, atol: float = 1e-8) -> None:
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol,
                               err_msg=f"{what}: analytic vs central differences")


def torch_or_skip():
    """PyTorch, or skip the test where it is not installed."""
    return pytest.importorskip("torch")
