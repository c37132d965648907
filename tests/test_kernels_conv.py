"""The im2col convolution kernels.

Every numba kernel is checked against its numpy reference (and im2col, col2im against
the allocation-free versions of kernels/lean.py) on random shapes (strides, asymmetric
paddings, kernels 1..5, non-square inputs), col2im against im2col as its adjoint, the
copies on hand-worked examples, and a whole conv2d (forward, dx, dw, db) against PyTorch.
Shapes stay small so the suite also runs in seconds under ``NUMBA_DISABLE_JIT=1``.
"""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.kernels import conv, lean
from device_runtime.kernels.conv import (
    bias_grad_nchw,
    chunk_to_nchw,
    chunk_to_nchw_bias,
    col2im,
    im2col,
    nchw_to_chunk,
)
from tests.kernel_cases import CONV_CASES, F32, col_shapes, geom, out_size, rand

# ---------------------------------------------------------------------- numba == numpy


# numba kernel, numpy reference, allocation-free numpy kernel (kernels/lean.py), data seed
LAYOUT_KERNELS = {"im2col": (conv.im2col_numba, conv.im2col_numpy, lean.im2col, 1),
                  "col2im": (conv.col2im_numba, conv.col2im_numpy, lean.col2im, 2)}


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("other", ["numpy", "lean"])
@pytest.mark.parametrize("kernel", sorted(LAYOUT_KERNELS))
def test_layout_kernels_numba_match_numpy(case: tuple[int, ...], other: str, kernel: str) -> None:
    # Prepare: im2col reads an image and writes columns, col2im the other way round
    numba_fn, numpy_fn, lean_fn, seed = LAYOUT_KERNELS[kernel]
    rng = np.random.default_rng(seed)
    xs, cs, oh, ow = col_shapes(case)
    src, dst = (xs, cs) if kernel == "im2col" else (cs, xs)
    x = rand(rng, *src)
    got, want = np.full(dst, np.nan, F32), np.full(dst, np.nan, F32)  # NaN: catch unwritten
    # Execute
    numba_fn(x, got, *geom(case), oh, ow)
    (numpy_fn if other == "numpy" else lean_fn)(x, want, *geom(case), oh, ow)
    # Assert: bit for bit (col2im: both sum each element's terms in (i, j) order)
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
    xs, cs, oh, ow = col_shapes(case)
    fwd, adj = getattr(conv, f"im2col_{impl}"), getattr(conv, f"col2im_{impl}")
    x, c = rng.standard_normal(xs), rng.standard_normal(cs)
    col, dx = np.empty(cs), np.empty(xs)
    fwd(x, col, *geom(case), oh, ow)
    adj(c, dx, *geom(case), oh, ow)
    assert np.vdot(col, c) == pytest.approx(np.vdot(x, dx), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (4, 2, 16)])
def test_chunk_copies_numba_match_numpy(shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(4)
    b, c, hw = shape
    src, bias = rand(rng, c, b * hw), rand(rng, c)
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
    dy = rand(rng, *shape)
    start = rand(rng, shape[1])
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


# ---------------------------------------------------------------------- PyTorch


def _conv_with_kernels(x, wt, bias, dy, case, chunk):  # type: ignore[no-untyped-def]
    """Forward and both backward passes through our kernels, ``chunk`` samples at a time."""
    b, cin, h, w, kh, kw, sh, sw, pt, pb, pl, pr = case
    cout = wt.shape[0]
    oh, ow = out_size(h, kh, sh, pt, pb), out_size(w, kw, sw, pl, pr)
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
    x, wt, bias = rand(rng, b, cin, h, w), rand(rng, cout, cin, kh, kw), rand(rng, cout)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(wt, requires_grad=True)
    tb = torch.tensor(bias, requires_grad=True)
    ty = fn.conv2d(fn.pad(tx, (pl, pr, pt, pb)), tw, tb, stride=(sh, sw))
    dy = rand(rng, *ty.shape)
    ty.backward(torch.tensor(dy))
    # Execute
    y, dx, dw, db = _conv_with_kernels(x, wt, bias, dy, case, chunk)
    # Assert
    tol = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y, ty.detach().numpy(), **tol)
    np.testing.assert_allclose(dx, tx.grad.numpy(), **tol)
    np.testing.assert_allclose(dw, tw.grad.numpy(), **tol)
    np.testing.assert_allclose(db, tb.grad.numpy(), **tol)
