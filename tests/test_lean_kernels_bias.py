"""kernels/lean_bias.py against the numba kernels and the numpy references: the bias
additions bit for bit (float32 adds), the conv bias gradient to float32 rounding
(float64 sums in another order). Each case also runs with a tiny scratch buffer."""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.kernels import bias, conv, lean, lean_bias
from tests.kernel_cases import F32, rand


@pytest.fixture(params=[lean.SCRATCH_BYTES, 96], ids=["scratch-256k", "scratch-96b"])
def scratch_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(lean, "SCRATCH_BYTES", request.param)
    monkeypatch.setattr(lean, "_scratch", {})
    return request.param


SHAPES = [(1, 1), (3, 7), (512, 384), (5, 70_000)]


@pytest.mark.parametrize("R,K", SHAPES)
def test_bias_adds_lean_equal_numba(R: int, K: int, scratch_size: int) -> None:
    rng = np.random.default_rng(R + K)
    y = rand(rng, R, K)
    for name, b in (("add_row_bias", rand(rng, K)), ("add_col_bias", rand(rng, R))):
        outs = []
        for fn in (getattr(lean_bias, name), getattr(bias, name + "_numba"),
                   getattr(bias, name + "_numpy")):
            out = y.copy()
            fn(out, b)
            outs.append(out)
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_array_equal(outs[0], outs[2])
    wide = rand(rng, R, K + 3)  # a column slice, as a GRU's gates: not C-contiguous
    b = rand(rng, K)
    got, want = wide.copy(), wide.copy()
    lean_bias.add_row_bias(got[:, :K], b)
    bias.add_row_bias_numba(want[:, :K], b)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("nb,nc,hw", [(1, 1, 1), (2, 3, 5), (8, 16, 49), (3, 70, 2)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_conv_bias_kernels_lean_match_numba(nb, nc, hw, accumulate, scratch_size) -> None:
    rng = np.random.default_rng(nb * nc * hw)
    src, b = rand(rng, nc, nb * hw), rand(rng, nc)
    outs = []
    for fn in (lean_bias.chunk_to_nchw_bias, conv.chunk_to_nchw_bias_numba,
               conv.chunk_to_nchw_bias_numpy):
        dst = np.full((nb, nc, hw), 7, F32)
        fn(src, dst, b)
        outs.append(dst)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    dy, db0 = rand(rng, nb, nc, hw) + 3, rand(rng, nc)
    outs = []
    for fn in (lean_bias.bias_grad_nchw, conv.bias_grad_nchw_numba, conv.bias_grad_nchw_numpy):
        db = db0.copy()
        fn(dy, db, accumulate)
        outs.append(db)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1.2e-7, atol=1e-7)
    np.testing.assert_allclose(outs[0], outs[2], rtol=1.2e-7, atol=1e-7)
