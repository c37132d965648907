"""The allocation-free numpy kernels (kernels/lean.py) against the numba kernels
(im2col's is in test_kernels_conv.py, beside the numpy reference's).

They replace the numpy references when numba is off, so they must compute the same
thing: bit for bit for copies, maxima, ReLU and the batch-norm affine (same float64
operations, same roundings); to float32 rounding for the batch-norm statistics, whose
float64 sums run in another order. Each case also runs with a tiny scratch buffer, so
the block loops (several blocks per channel, per sample, per mask byte run) are tested.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from device_runtime.kernels import activation, bitmask, lean, norm, pool
from tests.kernel_cases import F32, POOL_CASES, out_size, rand


@pytest.fixture(params=[lean.SCRATCH_BYTES, 96], ids=["scratch-256k", "scratch-96b"])
def scratch_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(lean, "SCRATCH_BYTES", request.param)
    monkeypatch.setattr(lean, "_scratch", {})
    return request.param


@pytest.mark.parametrize("case", POOL_CASES)
def test_pools_lean_equal_numba(case: tuple[int, ...], scratch_size: int) -> None:
    b, c, h, w, kh, kw, sh, sw, pt, pb, pl, pr = case
    oh, ow = out_size(h, kh, sh, pt, pb), out_size(w, kw, sw, pl, pr)
    x = rand(np.random.default_rng(4), b, c, h, w)
    x[0, 0, 0, 0] = np.nan  # NaN wins a max window, and spreads through an average
    for fl, fn in ((lean.maxpool2d_fwd, pool.maxpool2d_fwd_numba),
                   (lean.avgpool2d_fwd, pool.avgpool2d_fwd_numba)):
        got, want = np.full((b, c, oh, ow), 7, F32), np.full((b, c, oh, ow), 7, F32)
        fl(x, got, kh, kw, sh, sw, pt, pl)
        fn(x, want, kh, kw, sh, sw, pt, pl)
        np.testing.assert_array_equal(got, want)
    dy = rand(np.random.default_rng(5), b, c, oh, ow)
    got, want = np.full_like(x, 7), np.full_like(x, 7)
    lean.avgpool2d_bwd(dy, got, kh, kw, sh, sw, pt, pl)
    pool.avgpool2d_bwd_numba(dy, want, kh, kw, sh, sw, pt, pl)
    np.testing.assert_array_equal(got, want)


def _bn_input(seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # channel means far from 0 and spread scales: a one-pass variance would show
    return (rng.standard_normal(shape) * rng.uniform(0.1, 5, (1, shape[1], 1))
            + rng.uniform(-50, 50, (1, shape[1], 1))).astype(F32)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 5), (8, 16, 49), (32, 4, 1024), (3, 70, 2)])
def test_batchnorm_lean_matches_numba(shape: tuple[int, int, int], scratch_size: int) -> None:
    x = _bn_input(sum(shape), shape)
    c = shape[1]
    got = [np.full(c, np.nan, F32) for _ in range(3)]
    want = [np.full(c, np.nan, F32) for _ in range(3)]
    lean.bn_stats(x, *got, 1e-5)
    norm.bn_stats_numba(x, *want, 1e-5)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-7, atol=0)  # at most one float32 ulp
    mean, _, invstd = want
    gamma = np.random.default_rng(5).uniform(0.5, 2, c).astype(F32)
    beta = np.random.default_rng(6).uniform(-1, 1, c).astype(F32)
    # backward, from x (recompute) and from a stored xhat (mean 0, knorm 1); dx over dy
    dy = _bn_input(7, shape) / 10
    for src, m0, k0 in ((x, mean, invstd), (None, np.zeros(c, F32), np.ones(c, F32))):
        if src is None:
            src = np.empty_like(x)
            norm.bn_normalize_numba(x, mean, invstd, src)
        want = [np.empty_like(dy), np.empty(c, F32), np.empty(c, F32)]
        norm.bn_backward_numba(dy, src, m0, k0, invstd, gamma, *want)
        got = [dy.copy(), np.empty(c, F32), np.empty(c, F32)]
        lean.bn_backward(got[0], src, m0, k0, invstd, gamma, *got)  # dx is dy
        for g, w in zip(got, want):  # float64 sums in another order: a few float32 ulps
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6 * np.abs(w).max())
    for kernel, args in ((lean.bn_affine, (gamma, beta)), (lean.bn_normalize, ())):
        ref = getattr(norm, kernel.__name__ + "_numba")
        y_ref = np.full_like(x, np.nan)
        ref(x, mean, invstd, *args, y_ref)
        y = np.full_like(x, np.nan)
        kernel(x, mean, invstd, *args, y)
        np.testing.assert_array_equal(y, y_ref)
        inplace = x.copy()  # output over input, as the in-place layer runs it
        kernel(inplace, mean, invstd, *args, inplace)
        np.testing.assert_array_equal(inplace, y_ref)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000, 4099])
@pytest.mark.parametrize("slope", [0.0, 0.01])
def test_relu_lean_equals_numba(n: int, slope: float, scratch_size: int) -> None:
    x = rand(np.random.default_rng(n), n)
    x[:: 5] = 0.0
    x[1:: 7] = np.nan
    nb = (n + 7) // 8
    y, y_ref = np.full_like(x, 3), np.full_like(x, 3)
    mask, mask_ref = np.full(nb, 0xAA, np.uint8), np.full(nb, 0x55, np.uint8)
    lean.relu_mask_fwd(x, y, mask, slope)
    bitmask.relu_mask_fwd_numba(x, y_ref, mask_ref, slope)
    np.testing.assert_array_equal(y.view(np.uint32), y_ref.view(np.uint32))  # -0.0 too
    np.testing.assert_array_equal(mask, mask_ref)
    inplace = x.copy()
    lean.relu_mask_fwd(inplace, inplace, mask, slope)
    np.testing.assert_array_equal(inplace.view(np.uint32), y_ref.view(np.uint32))
    dy = rand(np.random.default_rng(n + 1), n)
    dx, dx_ref = np.full_like(dy, 3), np.full_like(dy, 3)
    lean.relu_mask_bwd(mask_ref, dy, dx, slope)
    bitmask.relu_mask_bwd_numba(mask_ref, dy, dx_ref, slope)
    np.testing.assert_array_equal(dx.view(np.uint32), dx_ref.view(np.uint32))
    inplace = dy.copy()
    lean.relu_mask_bwd(mask_ref, inplace, inplace, slope)
    np.testing.assert_array_equal(inplace.view(np.uint32), dx_ref.view(np.uint32))
    y, y_ref = np.full_like(x, 3), np.full_like(x, 3)
    lean.relu_fwd(x, y)
    activation.relu_fwd_numba(x, y_ref)
    np.testing.assert_array_equal(y.view(np.uint32), y_ref.view(np.uint32))


def test_lean_kernels_allocate_little_on_large_tensors() -> None:
    """A conv-sized tensor (8 MiB): after the first call, temporaries stay under 128 KiB.

    What remains is numpy's own casting/reduction buffer (``np.getbufsize()`` elements,
    64 KiB of float64) and a mask block from ``np.packbits``/``np.unpackbits``: fixed, not
    per tensor size.
    """
    x = _bn_input(0, (32, 64, 1024))
    c = x.shape[1]
    stats = [np.empty(c, F32) for _ in range(3)]
    g, b = np.ones(c, F32), np.zeros(c, F32)
    x4 = x.reshape(32, 64, 32, 32)
    col = np.empty((64 * 9, 4 * 32 * 32), F32)
    pooled = np.empty((32, 64, 16, 16), F32)
    mask = np.empty(x.size // 8, np.uint8)

    def run() -> None:
        lean.bn_stats(x, *stats, 1e-5)
        lean.bn_affine(x, stats[0], stats[2], g, b, x)
        lean.relu_mask_fwd(x.reshape(-1), x.reshape(-1), mask, 0.0)
        lean.im2col(x4[:4], col, 3, 3, 1, 1, 1, 1, 32, 32)
        lean.maxpool2d_fwd(x4, pooled, 2, 2, 2, 2, 0, 0)
        lean.avgpool2d_fwd(x4, pooled, 2, 2, 2, 2, 0, 0)
        # backward: ReLU mask, batch norm (dx over dy), col2im
        lean.relu_mask_bwd(mask, x.reshape(-1), x.reshape(-1), 0.0)
        lean.bn_backward(x, x, stats[0], stats[2], stats[2], g, x, stats[1], b)
        lean.col2im(col, x4[:4], 3, 3, 1, 1, 1, 1, 32, 32)
        lean.avgpool2d_bwd(pooled, x4, 2, 2, 2, 2, 0, 0)

    run()  # the scratch buffers are made here, once
    tracemalloc.start()
    try:
        run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 128 * 1024, f"{peak} bytes of temporaries"
    assert x.nbytes == 8 * 2**20
