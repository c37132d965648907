"""What the convolution and pooling kernels share.

Sums accumulate in float64; the numba kernels allocate nothing, check their buffers'
shapes before indexing without bounds checks, and are the public names when numba is
in use. Each kernel's own tests: tests/test_kernels_conv.py, tests/test_kernels_pool.py.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from device_runtime.kernels import conv, conv_copy, pool
from device_runtime.kernels._jit import USE_NUMBA
from device_runtime.kernels.conv import im2col
from device_runtime.kernels.pool import maxpool2d_bwd
from tests.kernel_cases import F32, rand


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


# ---------------------------------------------------------------------- allocation


def _alloc_calls():  # type: ignore[no-untyped-def]
    """(name, kernel, args) for each numba kernel on a VGG-like chunk."""
    rng = np.random.default_rng(13)
    b, c, h, w = 2, 8, 16, 16
    x = rand(rng, b, c, h, w)
    col = np.empty((c * 9, b * h * w), F32)
    src, dst, bias = rand(rng, c, b * h * w), np.empty((b, c, h * w), F32), rand(rng, c)
    y, dy = np.empty((b, c, 8, 8), F32), rand(rng, b, c, 8, 8)
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
    with pytest.raises(AssertionError, match="col rows"):  # channels x kernel rows
        conv.im2col_numba(x, np.zeros((26, 32), F32), 3, 3, 1, 1, 1, 1, 4, 4)
    with pytest.raises(AssertionError, match="col rows"):
        conv.col2im_numba(np.zeros((26, 32), F32), x, 3, 3, 1, 1, 1, 1, 4, 4)
    with pytest.raises(AssertionError, match="col shape"):  # samples x output positions
        conv.col2im_numba(np.zeros((27, 31), F32), x, 3, 3, 1, 1, 1, 1, 4, 4)
    with pytest.raises(AssertionError, match="dx shape"):
        pool.maxpool2d_bwd_numba(x, np.zeros((2, 3, 2, 2), F32), x[:1], 2, 2, 2, 2, 0, 0)


def test_public_names_pick_the_numba_kernels_when_enabled() -> None:
    assert (im2col is conv_copy.im2col_copy) == USE_NUMBA  # the serial copy kernels (issue 17)
    assert (maxpool2d_bwd is pool.maxpool2d_bwd_numba) == USE_NUMBA
