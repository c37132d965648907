"""kernels/conv_copy.py: the faster serial im2col / col2im give the very same numbers.

Each kernel is compared bit for bit (``np.array_equal``) with the numpy references of
kernels/conv.py (and with the old numba kernels) over random shapes, strides,
asymmetric paddings and channel tiles (``c0``), outputs prefilled with NaN so an
unwritten element shows; col2im must leave the channels outside its tile untouched.
"""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.kernels import conv, conv_copy
from tests.kernel_cases import CONV_CASES, F32, _cases, col_shapes, geom, rand

# shapes of the built-in models' layers (3x3 'same', strided 3x3 and 1x1), small batches
MODEL_CASES = [(b, c, h, h, k, k, s, s, p, p, p, p) for b, c, h, k, s, p in [
    (1, 3, 32, 3, 1, 1), (2, 16, 16, 3, 1, 1), (4, 8, 8, 3, 1, 1), (8, 16, 4, 3, 1, 1),
    (8, 16, 2, 3, 1, 1), (3, 8, 16, 3, 2, 1), (4, 8, 8, 3, 2, 1), (4, 8, 8, 1, 2, 0),
    (2, 4, 7, 3, 2, 1), (2, 4, 9, 5, 2, 2)]]
CASES = CONV_CASES + _cases(7, 40) + MODEL_CASES
KERNELS = {"im2col": (conv_copy.im2col_copy, conv.im2col_numpy, conv.im2col_numba),
           "col2im": (conv_copy.col2im_copy, conv.col2im_numpy, conv.col2im_numba)}


def _run(kernel: str, case: tuple[int, ...], c0: int, c1: int, seed: int) -> None:
    new, ref, old = KERNELS[kernel]
    rng = np.random.default_rng(seed)
    xs, cs, oh, ow = col_shapes(case)
    kk = case[4] * case[5]
    rows = (c1 - c0) * kk
    g = (*geom(case), oh, ow, c0)
    if kernel == "im2col":
        x = rand(rng, *xs)
        outs = [np.full((rows, cs[1]), np.nan, F32) for _ in range(3)]
        for fn, out in zip((new, ref, old), outs):
            fn(x, out, *g)
    else:
        col = rand(rng, rows, cs[1])
        start = rand(rng, *xs)  # channels outside the tile must keep these values
        start[:, c0:c1] = np.nan
        outs = [start.copy() for _ in range(3)]
        for fn, out in zip((new, ref, old), outs):
            fn(col, out, *g)
        np.testing.assert_array_equal(outs[0][:, :c0], start[:, :c0])
        np.testing.assert_array_equal(outs[0][:, c1:], start[:, c1:])
    assert not np.isnan(outs[0]).any(), "an element was left unwritten"
    assert np.array_equal(outs[0], outs[1]), f"{kernel} differs from the numpy reference"
    assert np.array_equal(outs[0], outs[2]), f"{kernel} differs from the old numba kernel"


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("case", CASES)
def test_whole_matches_reference(kernel: str, case: tuple[int, ...]) -> None:
    _run(kernel, case, 0, case[1], seed=hash(case) % 1000)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("seed", range(12))
def test_channel_tiles_match_reference(kernel: str, seed: int) -> None:
    # a random tile c0..c1 of a random case with at least two channels
    rng = np.random.default_rng(100 + seed)
    case = [c for c in CASES if c[1] >= 2][int(rng.integers(0, 60))]
    c0 = int(rng.integers(0, case[1]))
    c1 = int(rng.integers(c0 + 1, case[1] + 1))
    _run(kernel, case, c0, c1, seed)


def test_public_kernels_are_the_copy_kernels_with_numba() -> None:
    # the conv layers call kernels/conv.py's im2col / col2im: with numba in use they are
    # the kernels tested here (without numba, the allocation-free numpy ones)
    from device_runtime.kernels import _jit

    if not _jit.USE_NUMBA:
        pytest.skip("numba is not in use")
    assert conv.im2col is conv_copy.im2col_copy
    assert conv.col2im is conv_copy.col2im_copy


def test_shape_checks_name_rows_and_columns() -> None:
    x = np.zeros((2, 3, 4, 4), F32)
    for fn, a, b in [(conv_copy.im2col_copy, x, None), (conv_copy.col2im_copy, None, x)]:
        with pytest.raises(AssertionError, match="col rows"):
            col = np.zeros((26, 32), F32)
            fn(*((a, col) if b is None else (col, b)), 3, 3, 1, 1, 1, 1, 4, 4)
        with pytest.raises(AssertionError, match="col shape"):  # samples x output positions
            col = np.zeros((27, 31), F32)
            fn(*((a, col) if b is None else (col, b)), 3, 3, 1, 1, 1, 1, 4, 4)
        with pytest.raises(AssertionError, match="col rows"):  # a tile past the channels
            col = np.zeros((18, 32), F32)
            fn(*((a, col) if b is None else (col, b)), 3, 3, 1, 1, 1, 1, 4, 4, 2)
