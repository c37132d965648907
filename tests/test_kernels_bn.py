"""The batch-norm kernels the layer uses: numba vs numpy, vs PyTorch, and the promise
that keeping xhat or recomputing it from the input gives the same bits."""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.kernels import norm as K

EPS = 1e-5


def _data(seed=0, shape=(6, 4, 9)):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 3 + 1).astype(np.float32)
    g = rng.uniform(0.5, 2, shape[1]).astype(np.float32)
    b = rng.normal(size=shape[1]).astype(np.float32)
    dy = rng.normal(size=shape).astype(np.float32)
    return x, g, b, dy


def _stats(fn, x):
    c = x.shape[1]
    m, v, i = (np.empty(c, np.float32) for _ in range(3))
    fn(x, m, v, i, EPS)
    return m, v, i


@pytest.mark.parametrize("impl", ["numba", "numpy"])
def test_keeping_or_recomputing_xhat_is_bit_identical(impl):
    stats, norm_, affine, bwd = (getattr(K, f"bn_{n}_{impl}") for n in
                                 ("stats", "normalize", "affine", "backward"))
    x, g, b, dy = _data()
    m, _, i = _stats(stats, x)
    z, o = np.zeros_like(m), np.ones_like(m)
    y_re = np.empty_like(x)
    affine(x, m, i, g, b, y_re)  # recompute path
    xh = np.empty_like(x)
    norm_(x, m, i, xh)
    y_kept = np.empty_like(x)
    affine(xh, z, o, g, b, y_kept)  # stored-xhat path
    assert np.array_equal(y_re, y_kept)
    outs = []
    for src, mm, kk in ((x, m, i), (xh, z, o)):
        dx, dg, db = np.empty_like(x), np.empty_like(m), np.empty_like(m)
        bwd(dy, src, mm, kk, i, g, dx, dg, db)
        outs.append((dx, dg, db))
    for a, c in zip(*outs):
        assert np.array_equal(a, c)


def test_numba_matches_numpy_and_dx_may_alias_dy():
    x, g, b, dy = _data(1)
    m, v, i = _stats(K.bn_stats_numba, x)
    m2, v2, i2 = _stats(K.bn_stats_numpy, x)
    assert np.array_equal(m, m2) and np.array_equal(i, i2)
    y1, y2 = np.empty_like(x), np.empty_like(x)
    K.bn_affine_numba(x, m, i, g, b, y1)
    K.bn_affine_numpy(x, m, i, g, b, y2)
    assert np.array_equal(y1, y2)
    dx, dg, db = np.empty_like(x), np.empty_like(m), np.empty_like(m)
    K.bn_backward_numba(dy, x, m, i, i, g, dx, dg, db)
    d2 = dy.copy()
    dg2, db2 = np.empty_like(m), np.empty_like(m)
    K.bn_backward_numba(d2, x, m, i, i, g, d2, dg2, db2)  # in place
    assert np.array_equal(dx, d2) and np.array_equal(dg, dg2)
    dx3, dg3, db3 = np.empty_like(x), np.empty_like(m), np.empty_like(m)
    K.bn_backward_numpy(dy, x, m, i, i, g, dx3, dg3, db3)
    np.testing.assert_allclose(dx, dx3, rtol=1e-5, atol=1e-6)


def test_against_torch():
    torch = pytest.importorskip("torch")
    x, g, b, dy = _data(2, (8, 5, 16))
    m, v, i = _stats(K.bn_stats, x)
    y = np.empty_like(x)
    K.bn_affine(x, m, i, g, b, y)
    dx, dg, db = np.empty_like(x), np.empty_like(m), np.empty_like(m)
    K.bn_backward(dy, x, m, i, i, g, dx, dg, db)
    xt = torch.tensor(x, requires_grad=True)
    gt, bt = torch.tensor(g, requires_grad=True), torch.tensor(b, requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True, eps=EPS)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dg, gt.grad.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n", [1, 7, 8, 13, 1000])
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_bit_mask_kernels(n, slope):
    # numba vs numpy, and the backward from the bits equals the backward from the output
    from device_runtime.kernels import activation as A
    from device_runtime.kernels import bitmask as B

    rng = np.random.default_rng(n)
    x = rng.normal(size=n).astype(np.float32)
    x[::5] = 0.0  # the boundary: 0 is not positive
    y1, y2 = np.empty_like(x), np.empty_like(x)
    m1, m2 = np.empty((n + 7) // 8, np.uint8), np.empty((n + 7) // 8, np.uint8)
    B.relu_mask_fwd_numba(x, y1, m1, slope)
    B.relu_mask_fwd_numpy(x, y2, m2, slope)
    assert np.array_equal(y1, y2) and np.array_equal(m1, m2)
    dy = rng.normal(size=n).astype(np.float32)
    d1, d2 = np.empty_like(x), dy.copy()
    B.relu_mask_bwd_numba(m1, dy, d1, slope)
    B.relu_mask_bwd_numpy(m2, d2, d2, slope)  # in place
    assert np.array_equal(d1, d2)
    ref = np.empty_like(x)
    if slope == 0.0:
        A.relu_bwd(y1, dy, ref)
    else:
        A.leaky_relu_bwd(y1, dy, ref, slope)
    assert np.array_equal(d1, ref)
