"""The batch-norm kernels: numba vs numpy, hand-worked values, numerical gradients,
PyTorch (training and eval), and the promise that keeping xhat or recomputing it from the
input gives the same bits; and the ReLU bit-mask kernels the fused layer uses."""

from __future__ import annotations

import math

import numpy as np
import pytest

from device_runtime.kernels import norm as K
from tests.kernel_cases import EPS, assert_close, check_grads, f32, num_grad, torch_or_skip


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


def bn_case(shape, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = f32(rng.normal(1.5, 2.0, shape))
    gamma, beta = f32(rng.normal(1, 0.5, C)), f32(rng.normal(0, 0.5, C))
    return x, gamma, beta, f32(rng.normal(size=shape))


def test_hand_worked_batchnorm():
    # one channel holding [1, 3]: mean 2, biased var 1, xhat = [-1, 1]/sqrt(1 + eps)
    x = f32([[[1.0]], [[3.0]]])  # (N=2, C=1, S=1)
    y = np.empty_like(x)
    mean, var, invstd = (np.empty(1, np.float32) for _ in range(3))
    K.bn_stats(x, mean, var, invstd, EPS)
    K.bn_affine(x, mean, invstd, f32([2.0]), f32([0.5]), y)
    s = 1 / math.sqrt(1 + EPS)
    assert (mean[0], var[0]) == (2.0, 1.0)
    assert_close(y.ravel(), [0.5 - 2 * s, 0.5 + 2 * s], 1e-7, 0, "bn y")
    rm, rv = f32([0.0]), f32([1.0])
    K.bn_update_running(rm, rv, mean, var, 0.1, 2)  # unbiased var = 1 * 2/1
    assert_close([rm[0], rv[0]], [0.2, 0.9 * 1 + 0.1 * 2], 1e-7, 0, "running stats")


@pytest.mark.parametrize("shape", [(4, 3, 5), (6, 2, 1)])
def test_batchnorm_running_stats_numba_matches_numpy(shape):
    # the training kernels (stats, affine, backward): the tests above
    x, _, _, _ = bn_case(shape, 6)
    C = shape[1]
    stats = [np.empty(C, np.float32) for _ in range(3)]
    K.bn_stats(x, *stats, EPS)
    running = {}
    for impl in ("numba", "numpy"):
        rm, rv = f32(np.linspace(-1, 1, C)), f32(np.linspace(0.5, 2, C))
        getattr(K, f"bn_update_running_{impl}")(rm, rv, *stats[:2], 0.1, shape[0] * shape[2])
        running[impl] = np.stack([rm, rv])
    assert_close(running["numba"], running["numpy"], 1e-7, 0, "running stats")


def test_batchnorm_infer_numba_matches_numpy():
    x, gamma, beta, _ = bn_case((3, 4, 5), 7)
    rm, rv = f32([0.1, -0.2, 0.3, 2.0]), f32([1.0, 0.5, 2.0, 0.01])
    y_np = np.empty_like(x)
    K.bn_infer_fwd_numpy(x, y_np, rm, rv, gamma, beta, EPS)
    y_nb = x.copy()
    K.bn_infer_fwd_numba(y_nb, y_nb, rm, rv, gamma, beta, EPS)  # y is x
    assert_close(y_nb, y_np, 1e-6, 1e-6, "bn infer fwd")


def test_batchnorm_numerical_gradient():
    # bn_backward against central differences of the float64 batch norm (the kernel rounds
    # xhat to float32 once, as the forward pass does: hence rtol 1e-5, not 1e-6)
    rng = np.random.default_rng(17)
    N, C, S = 3, 2, 4
    x, w = rng.normal(1, 2, (N, C, S)), rng.normal(size=(N, C, S))
    gamma, beta = rng.normal(1, 0.5, C), rng.normal(size=C)

    def loss(xx, gg, bb):
        mu = xx.mean(axis=(0, 2), keepdims=True)
        var = ((xx - mu) ** 2).mean(axis=(0, 2), keepdims=True)
        y = gg[None, :, None] * (xx - mu) / np.sqrt(var + EPS) + bb[None, :, None]
        return float(np.sum(w * y))

    mean, var, invstd = (np.empty(C) for _ in range(3))
    K.bn_stats_numpy(x, mean, var, invstd, EPS)
    dx, dg, db = np.empty_like(x), np.empty(C), np.empty(C)
    K.bn_backward_numpy(w, x, mean, invstd, invstd, gamma, dx, dg, db)
    check_grads(dx, num_grad(lambda v: loss(v, gamma, beta), x), "bn dx", 1e-5, 1e-6)
    check_grads(dg, num_grad(lambda v: loss(x, v, beta), gamma), "bn dgamma", 1e-5, 1e-6)
    check_grads(db, num_grad(lambda v: loss(x, gamma, v), beta), "bn dbeta")


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (8, 5)])
def test_batchnorm_vs_torch(shape):
    torch = torch_or_skip()
    F = torch.nn.functional
    N, C = shape[:2]
    x, gamma, beta, dy = bn_case(shape, 20)
    rm0, rv0 = f32(np.linspace(-1, 1, C)), f32(np.linspace(0.5, 2, C))
    # torch, training mode
    xt = torch.tensor(x, requires_grad=True)
    gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
    rmt, rvt = torch.tensor(rm0), torch.tensor(rv0)
    yt = F.batch_norm(xt, rmt, rvt, gt, bt, training=True, momentum=0.1, eps=EPS)
    yt.backward(torch.tensor(dy))
    # ours on (N, C, S) views
    S = x.size // (N * C)
    x3, dy3 = x.reshape(N, C, S), dy.reshape(N, C, S)
    y3 = np.empty_like(x3)
    mean, var, invstd = (np.empty(C, np.float32) for _ in range(3))
    K.bn_stats(x3, mean, var, invstd, EPS)
    K.bn_affine(x3, mean, invstd, gamma, beta, y3)
    rm, rv = rm0.copy(), rv0.copy()
    K.bn_update_running(rm, rv, mean, var, 0.1, N * S)
    dx, dg, db = np.empty_like(x3), np.empty(C, np.float32), np.empty(C, np.float32)
    K.bn_backward(dy3, x3, mean, invstd, invstd, gamma, dx, dg, db)
    tol = dict(rtol=1e-4, atol=1e-5)
    assert_close(y3.reshape(shape), yt.detach().numpy(), what="y", **tol)
    assert_close(rm, rmt.numpy(), what="running mean", **tol)
    assert_close(rv, rvt.numpy(), what="running var (unbiased)", **tol)
    assert_close(dx.reshape(shape), xt.grad.numpy(), what="dx", **tol)
    assert_close(dg, gt.grad.numpy(), what="dgamma", **tol)
    assert_close(db, bt.grad.numpy(), what="dbeta", **tol)
    # eval mode (running statistics)
    yt = F.batch_norm(torch.tensor(x), torch.tensor(rv0 - 1.0), torch.tensor(rv0),
                      torch.tensor(gamma), torch.tensor(beta), training=False, eps=EPS)
    K.bn_infer_fwd(x3, y3, rv0 - 1.0, rv0, gamma, beta, EPS)
    assert_close(y3.reshape(shape), yt.numpy(), what="eval y", **tol)
