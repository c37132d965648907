"""Tests for the im2col convolution kernels and the pooling kernels.

Every numba kernel is checked against its numpy reference on random shapes (strides,
asymmetric paddings, kernels 1..5, non-square inputs), col2im against im2col as its
adjoint, the public kernels against PyTorch, and the numba kernels for allocations.
Shapes stay small so the suite also runs in seconds under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from device_runtime.kernels import conv, lean, pool
from device_runtime.kernels._jit import USE_NUMBA
from device_runtime.kernels.conv import (
    bias_grad_nchw,
    chunk_to_nchw,
    chunk_to_nchw_bias,
    col2im,
    im2col,
    nchw_to_chunk,
)
from device_runtime.kernels.pool import (
    avgpool2d_bwd,
    avgpool2d_fwd,
    maxpool2d_bwd,
    maxpool2d_fwd,
)

F32 = np.float32


def _out(size: int, k: int, s: int, p0: int, p1: int) -> int:
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
        if _out(h, kh, sh, pt, pb) >= 1 and _out(w, kw, sw, pl, pr) >= 1:
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


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(F32)


def _col_shapes(case: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, int], int, int]:
    b, c, h, w, kh, kw, sh, sw, pt, pb, pl, pr = case
    oh, ow = _out(h, kh, sh, pt, pb), _out(w, kw, sw, pl, pr)
    return (b, c, h, w), (c * kh * kw, b * oh * ow), oh, ow


def _geom(case: tuple[int, ...]) -> tuple[int, ...]:
    """(kh, kw, sh, sw, pt, pl) of a case."""
    return case[4], case[5], case[6], case[7], case[8], case[10]


# ----------------------------------------------------------------------- numba == numpy


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("other", ["numpy", "lean"])
def test_im2col_numba_matches_numpy(case: tuple[int, ...], other: str) -> None:
    # Prepare: the numpy reference, and the allocation-free one the runtime uses
    # without numba (kernels/lean.py)
    rng = np.random.default_rng(1)
    xs, cs, oh, ow = _col_shapes(case)
    x = _rand(rng, *xs)
    got, want = np.full(cs, np.nan, F32), np.full(cs, np.nan, F32)  # NaN: catch unwritten
    # Execute
    conv.im2col_numba(x, got, *_geom(case), oh, ow)
    (conv.im2col_numpy if other == "numpy" else lean.im2col)(x, want, *_geom(case), oh, ow)
    # Assert
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("other", ["numpy", "lean"])
def test_col2im_numba_matches_numpy(case: tuple[int, ...], other: str) -> None:
    rng = np.random.default_rng(2)
    xs, cs, oh, ow = _col_shapes(case)
    col = _rand(rng, *cs)
    got, want = np.full(xs, np.nan, F32), np.full(xs, np.nan, F32)
    conv.col2im_numba(col, got, *_geom(case), oh, ow)
    (conv.col2im_numpy if other == "numpy" else lean.col2im)(col, want, *_geom(case), oh, ow)
    # both sum each element's terms in (i, j) order: identical rounding
    np.testing.assert_array_equal(got, want)


def test_im2col_hand_example() -> None:
    # 1x1x2x2 input, 2x2 kernel, pad 1 all round -> 3x3 outputs; row r = i*2 + j
    x = np.array([[[[1, 2], [3, 4]]]], F32)
    col = np.empty((4, 9), F32)
    im2col(x, col, 2, 2, 1, 1, 1, 1, 3, 3)
    # window at (oy, ox) covers padded rows oy..oy+1, cols ox..ox+1; pad is 0
    want = np.array([
        [0, 0, 0, 0, 1, 2, 0, 3, 4],  # (i, j) = (0, 0)
        [0, 0, 0, 1, 2, 0, 3, 4, 0],  # (0, 1)
        [0, 1, 2, 0, 3, 4, 0, 0, 0],  # (1, 0)
        [1, 2, 0, 3, 4, 0, 0, 0, 0],  # (1, 1)
    ], F32)
    np.testing.assert_array_equal(col, want)
    # col2im of all-ones counts how many windows see each pixel: 4 each here
    dx = np.empty_like(x)
    col2im(np.ones_like(col), dx, 2, 2, 1, 1, 1, 1, 3, 3)
    np.testing.assert_array_equal(dx, np.full_like(x, 4))


@pytest.mark.parametrize("impl", ["numba", "numpy"])
@pytest.mark.parametrize("case", CONV_CASES[:12])
def test_col2im_is_adjoint_of_im2col(case: tuple[int, ...], impl: str) -> None:
    # <im2col(x), c> == <x, col2im(c)>, in float64 so rounding does not blur it
    rng = np.random.default_rng(3)
    xs, cs, oh, ow = _col_shapes(case)
    fwd, adj = getattr(conv, f"im2col_{impl}"), getattr(conv, f"col2im_{impl}")
    x, c = rng.standard_normal(xs), rng.standard_normal(cs)
    col, dx = np.empty(cs), np.empty(xs)
    fwd(x, col, *_geom(case), oh, ow)
    adj(c, dx, *_geom(case), oh, ow)
    assert np.vdot(col, c) == pytest.approx(np.vdot(x, dx), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (4, 2, 16)])
def test_chunk_copies_numba_match_numpy(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(4)
    b, c, hw = shape
    src, bias = _rand(rng, c, b * hw), _rand(rng, c)
    got, want = np.empty((b, c, hw), F32), np.empty((b, c, hw), F32)
    conv.chunk_to_nchw_numba(src, got)
    conv.chunk_to_nchw_numpy(src, want)
    np.testing.assert_array_equal(got, want)
    conv.chunk_to_nchw_bias_numba(src, got, bias)
    conv.chunk_to_nchw_bias_numpy(src, want, bias)
    np.testing.assert_array_equal(got, want)
    back_got, back_want = np.empty_like(src), np.empty_like(src)
    conv.nchw_to_chunk_numba(want, back_got)
    conv.nchw_to_chunk_numpy(want, back_want)
    np.testing.assert_array_equal(back_got, back_want)


def test_chunk_copies_hand_example() -> None:
    # src (C=2, B*HW = 2*3): channel rows, samples side by side
    src = np.array([[0, 1, 2, 10, 11, 12], [5, 6, 7, 15, 16, 17]], F32)
    dst = np.empty((2, 2, 3), F32)
    chunk_to_nchw(src, dst)
    np.testing.assert_array_equal(dst, [[[0, 1, 2], [5, 6, 7]], [[10, 11, 12], [15, 16, 17]]])
    chunk_to_nchw_bias(src, dst, np.array([100, -1], F32))
    np.testing.assert_array_equal(dst[1], [[110, 111, 112], [14, 15, 16]])
    back = np.empty_like(src)
    nchw_to_chunk(dst, back)
    np.testing.assert_array_equal(back, src + np.array([[100], [-1]], F32))


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (4, 3, 1024)])
def test_bias_grad_numba_matches_numpy(shape: tuple[int, int, int], accumulate: bool) -> None:
    rng = np.random.default_rng(5)
    dy = _rand(rng, *shape)
    start = _rand(rng, shape[1])
    got, want = start.copy(), start.copy()
    conv.bias_grad_nchw_numba(dy, got, accumulate)
    conv.bias_grad_nchw_numpy(dy, want, accumulate)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    exact = dy.astype(np.float64).sum(axis=(0, 2)) + (start if accumulate else 0)
    np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-6)


def test_bias_grad_hand_example() -> None:
    dy = np.arange(12, dtype=F32).reshape(2, 2, 3)  # channel 0: 0+1+2+6+7+8 = 24
    db = np.array([1, 1], F32)
    bias_grad_nchw(dy, db, True)
    np.testing.assert_array_equal(db, [25, 43])
    bias_grad_nchw(dy, db, False)
    np.testing.assert_array_equal(db, [24, 42])


def _pool_arrays(case: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    b, c, h, w, kh, kw, sh, sw, pt, pb, pl, pr = case
    rng = np.random.default_rng(seed)
    x = _rand(rng, b, c, h, w)
    dy = _rand(rng, b, c, _out(h, kh, sh, pt, pb), _out(w, kw, sw, pl, pr))
    return x, dy


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_numba_matches_numpy(case: tuple[int, ...], ties: bool) -> None:
    x, dy = _pool_arrays(case, 6)
    if ties:  # few distinct values: many windows with several maxima
        x = np.round(x).clip(-1, 1)
    g = _geom(case)
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


@pytest.mark.parametrize("impl", ["numba", "numpy"])
def test_sums_accumulate_in_float64(impl: str) -> None:
    # 2**24 + 1 == 2**24 in float32: a float32 running sum would drop both ones
    big = 2.0**24
    db = np.zeros(1, F32)
    getattr(conv, f"bias_grad_nchw_{impl}")(np.array([[[big, 1, 1]]], F32), db, False)
    assert db[0] == big + 2
    y = np.empty((1, 1, 1, 1), F32)
    x = np.array([[[[big, 1], [1, 0]]]], F32)
    getattr(pool, f"avgpool2d_fwd_{impl}")(x, y, 2, 2, 1, 1, 0, 0)
    assert y[0, 0, 0, 0] == (big + 2) / 4  # 4194304.5, exact in float32


@pytest.mark.parametrize("case", POOL_CASES)
def test_avgpool_numba_matches_numpy(case: tuple[int, ...]) -> None:
    x, dy = _pool_arrays(case, 7)
    g = _geom(case)
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
    dy = _rand(rng, b, c, 1, 1)
    y, dx = np.empty((b, c, 1, 1), F32), np.empty_like(x)
    getattr(pool, f"maxpool2d_fwd_{impl}")(x, y, h, w, 1, 1, 0, 0)
    np.testing.assert_array_equal(y[..., 0, 0], x.max(axis=(2, 3)))
    getattr(pool, f"maxpool2d_bwd_{impl}")(x, dy, dx, h, w, 1, 1, 0, 0)
    np.testing.assert_array_equal(dx, np.where(x == y, dy, 0))
    getattr(pool, f"avgpool2d_fwd_{impl}")(x, y, h, w, 1, 1, 0, 0)
    np.testing.assert_allclose(y[..., 0, 0], x.mean(axis=(2, 3), dtype=np.float64), rtol=1e-6)
    getattr(pool, f"avgpool2d_bwd_{impl}")(dy, dx, h, w, 1, 1, 0, 0)
    np.testing.assert_allclose(dx, np.broadcast_to(dy / F32(h * w), x.shape), rtol=1e-6)


# ---------------------------------------------------------------------------- PyTorch


def _conv_with_kernels(x, wt, bias, dy, case, chunk):  # type: ignore[no-untyped-def]
    """Forward and both backward passes through our kernels, ``chunk`` samples at a time."""
    b, cin, h, w, kh, kw, sh, sw, pt, pb, pl, pr = case
    cout = wt.shape[0]
    oh, ow = _out(h, kh, sh, pt, pb), _out(w, kw, sw, pl, pr)
    w2d = wt.reshape(cout, -1)
    y = np.empty((b, cout, oh * ow), F32)
    dx, dw, dwc = np.empty_like(x), np.zeros_like(w2d), np.empty_like(w2d)
    db = np.zeros(cout, F32)
    dy3 = dy.reshape(b, cout, oh * ow)
    for b0 in range(0, b, chunk):
        n = min(chunk, b - b0)
        col, dcol = np.empty((2, cin * kh * kw, n * oh * ow), F32)
        ych, dych = np.empty((2, cout, n * oh * ow), F32)
        im2col(x[b0:b0 + n], col, kh, kw, sh, sw, pt, pl, oh, ow)
        np.matmul(w2d, col, out=ych)
        chunk_to_nchw_bias(ych, y[b0:b0 + n], bias)
        nchw_to_chunk(dy3[b0:b0 + n], dych)
        np.matmul(dych, col.T, out=dwc)
        dw += dwc
        np.matmul(w2d.T, dych, out=dcol)
        col2im(dcol, dx[b0:b0 + n], kh, kw, sh, sw, pt, pl, oh, ow)
        bias_grad_nchw(dy3[b0:b0 + n], db, True)
    return y.reshape(b, cout, oh, ow), dx, dw.reshape(wt.shape), db


@pytest.mark.parametrize("chunk", [1, 4])
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_torch(case: tuple[int, ...], chunk: int) -> None:
    torch = pytest.importorskip("torch")
    fn = torch.nn.functional
    # Prepare
    rng = np.random.default_rng(9)
    b, cin, h, w, kh, kw, sh, sw, pt, pb, pl, pr = case
    cout = int(rng.integers(1, 5))
    x, wt, bias = _rand(rng, b, cin, h, w), _rand(rng, cout, cin, kh, kw), _rand(rng, cout)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(wt, requires_grad=True)
    tb = torch.tensor(bias, requires_grad=True)
    ty = fn.conv2d(fn.pad(tx, (pl, pr, pt, pb)), tw, tb, stride=(sh, sw))
    dy = _rand(rng, *ty.shape)
    ty.backward(torch.tensor(dy))
    # Execute
    y, dx, dw, db = _conv_with_kernels(x, wt, bias, dy, case, chunk)
    # Assert
    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(dw, tw.grad.numpy(), **tol)
    np.testing.assert_allclose(db, tb.grad.numpy(), **tol)


def _torch_pool(kind, x, dy, case):  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    kh, kw, sh, sw, pt, pl = _geom(case)
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
    x, dy = _pool_arrays(case, 10)
    if kind == "max":  # distinct values: no ties
        x = np.random.default_rng(11).permutation(x.size).reshape(x.shape).astype(F32)
    want_y, want_dx = _torch_pool(kind, x, dy, case)
    y, dx = np.empty_like(dy), np.empty_like(x)
    if kind == "max":
        maxpool2d_fwd(x, y, *_geom(case))
        maxpool2d_bwd(x, dy, dx, *_geom(case))
    else:
        avgpool2d_fwd(x, y, *_geom(case))
        avgpool2d_bwd(dy, dx, *_geom(case))
    np.testing.assert_allclose(y, want_y, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", TORCH_POOL_CASES)
def test_maxpool_ties_after_relu_follow_torch(case: tuple[int, ...]) -> None:
    # after a ReLU about half the inputs are 0: many all-zero windows, whose gradient
    # must go to the first zero in row-major window order, as PyTorch's CPU kernel does
    x, dy = _pool_arrays(case, 12)
    x = np.maximum(x, 0)
    want_y, want_dx = _torch_pool("max", x, dy, case)
    y, dx = np.empty_like(dy), np.empty_like(x)
    maxpool2d_fwd(x, y, *_geom(case))
    maxpool2d_bwd(x, dy, dx, *_geom(case))
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------- allocation


def _alloc_calls():  # type: ignore[no-untyped-def]
    """(name, kernel, args) for each numba kernel on a VGG-like chunk."""
    rng = np.random.default_rng(13)
    b, c, h, w = 2, 8, 16, 16
    x = _rand(rng, b, c, h, w)
    col = np.empty((c * 9, b * h * w), F32)
    src, dst, bias = _rand(rng, c, b * h * w), np.empty((b, c, h * w), F32), _rand(rng, c)
    y, dy = np.empty((b, c, 8, 8), F32), _rand(rng, b, c, 8, 8)
    dx, db = np.empty_like(x), np.empty(c, F32)
    geo = (3, 3, 1, 1, 1, 1, h, w)
    pg = (2, 2, 2, 2, 0, 0)
    return [
        ("im2col", conv.im2col_numba, (x, col) + geo),
        ("col2im", conv.col2im_numba, (col, dx) + geo),
        ("chunk_to_nchw", conv.chunk_to_nchw_numba, (src, dst)),
        ("chunk_to_nchw_bias", conv.chunk_to_nchw_bias_numba, (src, dst, bias)),
        ("nchw_to_chunk", conv.nchw_to_chunk_numba, (dst, src)),
        ("bias_grad_nchw", conv.bias_grad_nchw_numba, (dst, db, True)),
        ("maxpool2d_fwd", pool.maxpool2d_fwd_numba, (x, y) + pg),
        ("maxpool2d_bwd", pool.maxpool2d_bwd_numba, (x, dy, dx) + pg),
        ("avgpool2d_fwd", pool.avgpool2d_fwd_numba, (x, y) + pg),
        ("avgpool2d_bwd", pool.avgpool2d_bwd_numba, (dy, dx) + pg),
    ]


@pytest.mark.skipif(not USE_NUMBA, reason="numba disabled: the numpy references allocate")
@pytest.mark.parametrize("name", [n for n, _, _ in _alloc_calls()])
def test_numba_kernels_do_not_allocate(name: str) -> None:
    # NRT allocates through CPython's allocator, so tracemalloc sees numba's arrays too
    _, fn, args = next(call for call in _alloc_calls() if call[0] == name)
    fn(*args)  # warm-up: compile or load from cache
    tracemalloc.start()
    try:
        fn(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4096, f"{name} allocated {peak} bytes in one call (limit 4 KiB)"


def test_numba_kernels_reject_mismatched_shapes() -> None:
    # the numba kernels index without bounds checks: a wrong buffer must fail loudly
    x = np.zeros((2, 3, 4, 4), F32)
    with pytest.raises(AssertionError, match="col shape"):
        conv.im2col_numba(x, np.zeros((27, 31), F32), 3, 3, 1, 1, 1, 1, 4, 4)
    with pytest.raises(AssertionError, match="col shape"):
        conv.col2im_numba(np.zeros((26, 32), F32), x, 3, 3, 1, 1, 1, 1, 4, 4)
    with pytest.raises(AssertionError, match="dx shape"):
        pool.maxpool2d_bwd_numba(x, np.zeros((2, 3, 2, 2), F32), x[:1], 2, 2, 2, 2, 0, 0)


def test_public_names_pick_the_numba_kernels_when_enabled() -> None:
    assert (im2col is conv.im2col_numba) == USE_NUMBA
    assert (maxpool2d_bwd is pool.maxpool2d_bwd_numba) == USE_NUMBA
