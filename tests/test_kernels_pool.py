"""The max and average pooling kernels.

numba against the numpy references on random shapes (ties, NaN, windows partly or wholly
in the padding), global pooling as one whole-input window, and PyTorch's pooling
(including where a ReLU leaves ties). Shapes stay small so the suite also runs in
seconds under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.kernels import pool
from device_runtime.kernels.pool import (
    avgpool2d_bwd,
    avgpool2d_fwd,
    maxpool2d_bwd,
    maxpool2d_fwd,
)
from tests.kernel_cases import F32, POOL_CASES, geom, pool_arrays, rand

# ---------------------------------------------------------------------- numba == numpy


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_numba_matches_numpy(case: tuple[int, ...], ties: bool) -> None:
    x, dy = pool_arrays(case, 6)
    if ties:  # few distinct values: many windows with several maxima
        x = np.round(x).clip(-1, 1)
    g = geom(case)
    y1, y2 = np.empty_like(dy), np.empty_like(dy)
    pool.maxpool2d_fwd_numba(x, y1, *g)
    pool.maxpool2d_fwd_numpy(x, y2, *g)
    np.testing.assert_array_equal(y1, y2)
    d1, d2 = np.full_like(x, np.nan), np.full_like(x, np.nan)
    pool.maxpool2d_bwd_numba(x, dy, d1, *g)
    pool.maxpool2d_bwd_numpy(x, dy, d2, *g)
    np.testing.assert_array_equal(d1, d2)


def test_maxpool_nan_and_all_padding_windows_agree() -> None:
    # NaN wins (the last one in the window); a window wholly in the padding is -inf
    x = np.array([[[[1, np.nan, 3, np.nan], [0, 2, 5, 4]]]], F32)
    dy = np.arange(1, 7, dtype=F32).reshape(1, 1, 2, 3)
    for impl in ("numba", "numpy"):
        y = np.empty((1, 1, 2, 3), F32)
        getattr(pool, f"maxpool2d_fwd_{impl}")(x, y, 2, 2, 2, 2, 0, 1)  # 3rd row: padding
        np.testing.assert_array_equal(y, [[[[1, np.nan, np.nan], [-np.inf] * 3]]])
        dx = np.empty_like(x)
        getattr(pool, f"maxpool2d_bwd_{impl}")(x, dy, dx, 2, 2, 2, 2, 0, 1)
        np.testing.assert_array_equal(dx, [[[[1, 2, 0, 3], [0, 0, 0, 0]]]])


@pytest.mark.parametrize("case", POOL_CASES)
def test_avgpool_numba_matches_numpy(case: tuple[int, ...]) -> None:
    x, dy = pool_arrays(case, 7)
    g = geom(case)
    y1, y2 = np.empty_like(dy), np.empty_like(dy)
    pool.avgpool2d_fwd_numba(x, y1, *g)
    pool.avgpool2d_fwd_numpy(x, y2, *g)
    np.testing.assert_allclose(y1, y2, rtol=1e-6)
    d1, d2 = np.full_like(x, np.nan), np.full_like(x, np.nan)
    pool.avgpool2d_bwd_numba(dy, d1, *g)
    pool.avgpool2d_bwd_numpy(dy, d2, *g)
    np.testing.assert_array_equal(d1, d2)  # same terms, same order


@pytest.mark.parametrize("impl", ["numba", "numpy"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (1, 2, 3, 7), (3, 1, 1, 1)])
def test_global_pooling_is_a_whole_input_window(shape: tuple[int, ...], impl: str) -> None:
    rng = np.random.default_rng(8)
    b, c, h, w = shape
    x = rng.permutation(b * c * h * w).reshape(shape).astype(F32)  # distinct values
    dy = rand(rng, b, c, 1, 1)
    y, dx = np.empty((b, c, 1, 1), F32), np.empty_like(x)
    getattr(pool, f"maxpool2d_fwd_{impl}")(x, y, h, w, 1, 1, 0, 0)
    np.testing.assert_array_equal(y[..., 0, 0], x.max(axis=(2, 3)))
    getattr(pool, f"maxpool2d_bwd_{impl}")(x, dy, dx, h, w, 1, 1, 0, 0)
    np.testing.assert_array_equal(dx, np.where(x == y, dy, 0))
    getattr(pool, f"avgpool2d_fwd_{impl}")(x, y, h, w, 1, 1, 0, 0)
    np.testing.assert_allclose(y[..., 0, 0], x.mean(axis=(2, 3), dtype=np.float64), rtol=1e-6)
    getattr(pool, f"avgpool2d_bwd_{impl}")(dy, dx, h, w, 1, 1, 0, 0)
    np.testing.assert_allclose(dx, np.broadcast_to(dy / F32(h * w), x.shape), rtol=1e-6)


# ---------------------------------------------------------------------- PyTorch


def _torch_pool(kind, x, dy, case):  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    kh, kw, sh, sw, pt, pl = geom(case)
    tx = torch.tensor(x, requires_grad=True)
    if kind == "max":
        ty = torch.nn.functional.max_pool2d(tx, (kh, kw), (sh, sw), (pt, pl))
    else:
        ty = torch.nn.functional.avg_pool2d(tx, (kh, kw), (sh, sw), (pt, pl),
                                            count_include_pad=True)
    ty.backward(torch.tensor(dy))
    return ty.detach().numpy(), tx.grad.numpy()


# PyTorch pads symmetrically: keep the cases whose implied bottom/right pads match
TORCH_POOL_CASES = [c for c in POOL_CASES if c[8] == c[9] and c[10] == c[11]] + [
    (2, 3, 9, 7, 3, 3, 2, 2, 1, 1, 1, 1), (1, 2, 8, 8, 5, 3, 3, 1, 2, 2, 1, 1),
    (3, 2, 6, 6, 4, 2, 1, 2, 2, 2, 0, 0), (2, 1, 7, 5, 2, 3, 1, 1, 1, 1, 1, 1),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", TORCH_POOL_CASES)
def test_pool_matches_torch(case: tuple[int, ...], kind: str) -> None:
    x, dy = pool_arrays(case, 10)
    if kind == "max":  # distinct values: no ties
        x = np.random.default_rng(11).permutation(x.size).reshape(x.shape).astype(F32)
    want_y, want_dx = _torch_pool(kind, x, dy, case)
    y, dx = np.empty_like(dy), np.empty_like(x)
    if kind == "max":
        maxpool2d_fwd(x, y, *geom(case))
        maxpool2d_bwd(x, dy, dx, *geom(case))
    else:
        avgpool2d_fwd(x, y, *geom(case))
        avgpool2d_bwd(dy, dx, *geom(case))
    np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", TORCH_POOL_CASES)
def test_maxpool_ties_after_relu_follow_torch(case: tuple[int, ...]) -> None:
    # after a ReLU about half the inputs are 0: many all-zero windows, whose gradient
    # must go to the first zero in row-major window order, as PyTorch's CPU kernel does
    x, dy = pool_arrays(case, 12)
    x = np.maximum(x, 0)
    want_y, want_dx = _torch_pool("max", x, dy, case)
    y, dx = np.empty_like(dy), np.empty_like(x)
    maxpool2d_fwd(x, y, *geom(case))
    maxpool2d_bwd(x, dy, dx, *geom(case))
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-7)
