"""Math kernels (activation, norm, loss, optim).

Four independent checks: numba loops vs the numpy references (including aliased
outputs), numerical gradients (central differences in float64 on the references),
PyTorch (skipped without it) and hand-worked values; plus a no-allocation test for
the compiled kernels. Shapes stay small so the suite also runs with NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from device_runtime.kernels import _jit, lean
from device_runtime.kernels import activation as KA
from device_runtime.kernels import loss as KL
from device_runtime.kernels import norm as KN
from device_runtime.kernels import optim as KO

SLOPE = 0.1  # leaky relu slope used throughout
EPS = 1e-5  # batch-norm epsilon
ELEMENTWISE = ["relu", "leaky_relu", "sigmoid", "tanh", "gelu", "swish"]
FROM_OUTPUT = {"relu", "leaky_relu", "sigmoid", "tanh"}  # backward reads y, not x


def f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def act(name: str, kind: str, impl: str = ""):
    """Kernel ``{name}_{kind}[_{impl}]`` with the leaky slope bound."""
    fn = getattr(KA, f"{name}_{kind}" + (f"_{impl}" if impl else ""))
    if name == "leaky_relu":
        return lambda *a: fn(*a, SLOPE)
    return fn


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


# ============================================================ hand-worked values
def test_hand_worked_values():
    # Prepare
    x = f32([-1.0, 0.0, 2.0])
    y = np.empty_like(x)
    sm = np.empty((1, 2), np.float32)
    # Execute / Assert
    KA.relu_fwd(x, y)
    assert y.tolist() == [0.0, 0.0, 2.0]
    KA.leaky_relu_fwd(x, y, 0.5)
    assert y.tolist() == [-0.5, 0.0, 2.0]
    KA.sigmoid_fwd(f32([0.0]), y[:1])
    assert y[0] == 0.5
    KA.softmax_fwd(f32([[0.0, math.log(3.0)]]), sm)  # e^0 : e^ln3 = 1 : 3
    assert_close(sm, [[0.25, 0.75]], 2e-7, 0, "softmax")
    assert KL.mse_fwd(f32([1.0, 2.0]), f32([0.0, 0.0])) == pytest.approx((1 + 4) / 2)
    probs = np.empty((2, 4), np.float32)  # equal logits: loss log K, probs 1/K
    loss = KL.softmax_xent_fwd_idx(np.zeros((2, 4), np.float32), np.array([0, 3]), probs)
    assert loss == pytest.approx(math.log(4.0)) and np.all(probs == 0.25)
    assert KL.argmax_accuracy(f32([[1, 2], [3, 0], [5, 5]]), np.array([1, 1, 0])) == 2
    assert KO.global_sq_norm(f32([3.0, 4.0])) == 25.0


def test_hand_worked_batchnorm():
    # one channel holding [1, 3]: mean 2, biased var 1, xhat = [-1, 1]/sqrt(1 + eps)
    x = f32([[[1.0]], [[3.0]]])  # (N=2, C=1, S=1)
    y = np.empty_like(x)
    mean, var, invstd = (np.empty(1, np.float32) for _ in range(3))
    KN.bn_stats(x, mean, var, invstd, EPS)
    KN.bn_affine(x, mean, invstd, f32([2.0]), f32([0.5]), y)
    s = 1 / math.sqrt(1 + EPS)
    assert (mean[0], var[0]) == (2.0, 1.0)
    assert_close(y.ravel(), [0.5 - 2 * s, 0.5 + 2 * s], 1e-7, 0, "bn y")
    rm, rv = f32([0.0]), f32([1.0])
    KN.bn_update_running(rm, rv, mean, var, 0.1, 2)  # unbiased var = 1 * 2/1
    assert_close([rm[0], rv[0]], [0.2, 0.9 * 1 + 0.1 * 2], 1e-7, 0, "running stats")


def test_hand_worked_sgd():
    w, g, buf = f32([1.0]), f32([0.5]), f32([0.0])
    KO.sgd_step(w, g, buf, 0.1, 0.9, 0.0, False, True)  # buf = g; w = 1 - 0.1*0.5
    assert (w[0], buf[0]) == (np.float32(0.95), 0.5)
    KO.sgd_step(w, g, buf, 0.1, 0.9, 0.0, False, False)  # buf = 0.9*0.5 + 0.5 = 0.95
    assert_close([w[0], buf[0]], [0.95 - 0.095, 0.95], 1e-6, 0, "sgd step 2")
    assert g[0] == 0.5  # the gradient is left intact


def test_public_names_follow_the_switch():
    for mod in (KA, KN, KL, KO):
        for name in dir(mod):
            if name.endswith("_numba") and not name.startswith("_"):
                base = name[: -len("_numba")]
                # without numba: the allocation-free version where there is one
                fallback = getattr(lean, base, None) or getattr(mod, base + "_numpy")
                want = getattr(mod, name) if _jit.USE_NUMBA else fallback
                assert getattr(mod, base) is want, f"{mod.__name__}.{base}"


# ============================================================ numba vs numpy
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_numba_matches_numpy(name):
    # Prepare
    x = act_inputs(1)
    dy = f32(np.random.default_rng(2).normal(size=x.size))
    y_nb, y_np = np.empty_like(x), np.empty_like(x)
    # Execute
    act(name, "fwd", "numba")(x, y_nb)
    act(name, "fwd", "numpy")(x, y_np)
    src = y_np if name in FROM_OUTPUT else x
    dx_nb, dx_np = np.empty_like(x), np.empty_like(x)
    act(name, "bwd", "numba")(src, dy, dx_nb)
    act(name, "bwd", "numpy")(src, dy, dx_np)
    # Assert
    assert_close(y_nb, y_np, 2e-7, 1e-37, f"{name} fwd")
    assert_close(dx_nb, dx_np, 2e-7, 1e-37, f"{name} bwd")
    assert np.all(np.isfinite(y_nb)) and np.all(np.isfinite(dx_nb))


@pytest.mark.parametrize("impl", ["numba", "numpy"])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_aliasing(name, impl):
    x = act_inputs(3)
    dy = f32(np.random.default_rng(4).normal(size=x.size))
    y = np.empty_like(x)
    act(name, "fwd", impl)(x, y)
    src = y if name in FROM_OUTPUT else x
    want = np.empty_like(x)
    act(name, "bwd", impl)(src, dy, want)
    # dx is dy
    buf = dy.copy()
    act(name, "bwd", impl)(src, buf, buf)
    np.testing.assert_array_equal(buf, want, err_msg=f"{name} bwd, dx is dy")
    # y is x (in-place forward)
    inplace = x.copy()
    act(name, "fwd", impl)(inplace, inplace)
    np.testing.assert_array_equal(inplace, y, err_msg=f"{name} fwd, y is x")


@pytest.mark.parametrize("impl", ["numba", "numpy"])
def test_softmax_numba_matches_numpy_and_aliases(impl):
    rng = np.random.default_rng(5)
    x = f32(rng.normal(0, 4, (7, 5)))
    x[3] += 1000.0  # needs the max subtraction
    dy = f32(rng.normal(size=x.shape))
    y_ref, dx_ref = np.empty_like(x), np.empty_like(x)
    KA.softmax_fwd_numpy(x, y_ref)
    KA.softmax_bwd_numpy(y_ref, dy, dx_ref)
    fwd, bwd = getattr(KA, f"softmax_fwd_{impl}"), getattr(KA, f"softmax_bwd_{impl}")
    y = x.copy()
    fwd(y, y)  # y is x
    assert_close(y, y_ref, 3e-7, 1e-30, "softmax fwd")
    assert_close(y.sum(axis=1), np.ones(7), 1e-6, 0, "softmax rows sum to 1")
    dx = dy.copy()
    bwd(y_ref, dx, dx)  # dx is dy
    assert_close(dx, dx_ref, 1e-6, 1e-7, "softmax bwd")


def bn_case(shape, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = f32(rng.normal(1.5, 2.0, shape))
    gamma, beta = f32(rng.normal(1, 0.5, C)), f32(rng.normal(0, 0.5, C))
    return x, gamma, beta, f32(rng.normal(size=shape))


@pytest.mark.parametrize("shape", [(4, 3, 5), (6, 2, 1)])
def test_batchnorm_running_stats_numba_matches_numpy(shape):
    # the training kernels (stats, affine, backward): tests/test_kernels_bn.py
    x, _, _, _ = bn_case(shape, 6)
    C = shape[1]
    stats = [np.empty(C, np.float32) for _ in range(3)]
    KN.bn_stats(x, *stats, EPS)
    running = {}
    for impl in ("numba", "numpy"):
        rm, rv = f32(np.linspace(-1, 1, C)), f32(np.linspace(0.5, 2, C))
        getattr(KN, f"bn_update_running_{impl}")(rm, rv, *stats[:2], 0.1, shape[0] * shape[2])
        running[impl] = np.stack([rm, rv])
    assert_close(running["numba"], running["numpy"], 1e-7, 0, "running stats")


def test_batchnorm_infer_numba_matches_numpy():
    x, gamma, beta, _ = bn_case((3, 4, 5), 7)
    rm, rv = f32([0.1, -0.2, 0.3, 2.0]), f32([1.0, 0.5, 2.0, 0.01])
    y_np = np.empty_like(x)
    KN.bn_infer_fwd_numpy(x, y_np, rm, rv, gamma, beta, EPS)
    y_nb = x.copy()
    KN.bn_infer_fwd_numba(y_nb, y_nb, rm, rv, gamma, beta, EPS)  # y is x
    assert_close(y_nb, y_np, 1e-6, 1e-6, "bn infer fwd")


def loss_case(seed, N=6, K=5):
    rng = np.random.default_rng(seed)
    logits = f32(rng.normal(0, 3, (N, K)))
    logits[0] += 500.0  # needs log-sum-exp
    labels = rng.integers(0, K, N).astype(np.int64)
    soft = f32(rng.random((N, K)) * 2)  # rows do NOT sum to 1: exercises sum_k(t)
    return logits, labels, soft


@pytest.mark.parametrize("kind", ["idx", "soft"])
def test_softmax_xent_numba_matches_numpy(kind):
    logits, labels, soft = loss_case(8)
    target = labels if kind == "idx" else soft
    fwd = {i: getattr(KL, f"softmax_xent_fwd_{kind}_{i}") for i in ("numba", "numpy")}
    bwd = {i: getattr(KL, f"softmax_xent_bwd_{kind}_{i}") for i in ("numba", "numpy")}
    p_np = np.empty_like(logits)
    loss_np = fwd["numpy"](logits, target, p_np)
    p_nb = logits.copy()
    loss_nb = fwd["numba"](p_nb, target, p_nb)  # probs is logits
    assert loss_nb == pytest.approx(loss_np, rel=1e-12)
    assert_close(p_nb, p_np, 3e-7, 1e-30, "probs")
    dx_np = np.empty_like(logits)
    bwd["numpy"](p_np, target, dx_np)
    bwd["numba"](p_nb, target, p_nb)  # dx is probs
    assert_close(p_nb, dx_np, 1e-6, 1e-8, "dx")


@pytest.mark.parametrize("impl", ["numba", "numpy"])
def test_softmax_xent_rejects_bad_label(impl):
    logits, labels, _ = loss_case(9)
    labels[2] = 5  # K = 5
    probs = np.zeros_like(logits)
    with pytest.raises(ValueError, match="label out of range"):
        getattr(KL, f"softmax_xent_fwd_idx_{impl}")(logits, labels, probs)
    assert not probs.any()  # validated before anything is written


@pytest.mark.parametrize("name", ["sigmoid_xent", "mse"])
def test_elementwise_losses_numba_match_numpy(name):
    rng = np.random.default_rng(10)
    x = act_inputs(11)
    t = f32(rng.random(x.size)) if name == "sigmoid_xent" else f32(rng.normal(size=x.size))
    fwd = {i: getattr(KL, f"{name}_fwd_{i}") for i in ("numba", "numpy")}
    bwd = {i: getattr(KL, f"{name}_bwd_{i}") for i in ("numba", "numpy")}
    assert fwd["numba"](x, t) == pytest.approx(fwd["numpy"](x, t), rel=1e-12)
    dx_np = np.empty_like(x)
    bwd["numpy"](x, t, dx_np)
    dx_nb = x.copy()
    bwd["numba"](dx_nb, t, dx_nb)  # dx is the input
    assert_close(dx_nb, dx_np, 2e-7, 1e-37, f"{name} bwd")


def test_argmax_accuracy_numba_matches_numpy():
    rng = np.random.default_rng(12)
    logits = f32(rng.integers(0, 3, (40, 4)))  # many ties: the first max wins
    logits[5, 2] = np.nan  # the first NaN wins, as in np.argmax
    labels = rng.integers(0, 4, 40).astype(np.int64)
    labels[5] = 2
    assert KL.argmax_accuracy_numba(logits, labels) == KL.argmax_accuracy_numpy(logits, labels)


def run_optim(impl, kind, cfg, steps=5, seed=13, n=33):
    """w after each step, for the numba or numpy kernel."""
    rng = np.random.default_rng(seed)
    w = f32(rng.normal(size=n))
    grads = [f32(rng.normal(size=n)) for _ in range(steps)]
    s1, s2 = np.zeros_like(w), np.zeros_like(w)
    out = []
    for k, g in enumerate(grads):
        keep = g.copy()
        if kind == "sgd":
            fn = lean.sgd_step if impl == "lean" else getattr(KO, f"sgd_step_{impl}")
            fn(w, g, s1, *cfg, k == 0)
        else:
            getattr(KO, f"adam_step_{impl}")(w, g, s1, s2, *cfg[:-1], k + 1, cfg[-1])
        np.testing.assert_array_equal(g, keep, err_msg="the gradient must be left intact")
        out.append(w.copy())
    return w, grads, out


# (lr, momentum, weight_decay, nesterov)
SGD_CFGS = [(0.1, 0.0, 0.0, False), (0.1, 0.9, 0.0, False), (0.05, 0.9, 1e-2, True),
            (0.1, 0.0, 1e-2, False)]
# (lr, beta1, beta2, eps, weight_decay, decoupled); beta1 = 0.3 takes lerp's other branch
ADAM_CFGS = [(1e-2, 0.9, 0.999, 1e-8, 0.0, False), (1e-2, 0.9, 0.999, 1e-8, 1e-2, False),
             (1e-2, 0.9, 0.999, 1e-8, 1e-2, True), (3e-2, 0.3, 0.99, 1e-6, 0.1, True)]
OPT_CASES = [("sgd", c) for c in SGD_CFGS] + [("adam", c) for c in ADAM_CFGS]


@pytest.mark.parametrize("kind,cfg", OPT_CASES)
def test_optim_numba_matches_numpy(kind, cfg):
    _, _, a = run_optim("numba", kind, cfg)
    _, _, b = run_optim("numpy", kind, cfg)
    np.testing.assert_array_equal(np.stack(a), np.stack(b))  # same float32 op sequence
    if kind == "sgd":  # and the allocation-free one the runtime uses without numba
        _, _, c = run_optim("lean", kind, cfg, n=70_001)
        _, _, d = run_optim("numba", kind, cfg, n=70_001)  # several scratch blocks
        np.testing.assert_array_equal(np.stack(c), np.stack(d))


def test_grad_norm_and_scale_numba_match_numpy():
    g = f32(np.random.default_rng(14).normal(size=101))
    assert KO.global_sq_norm_numba(g) == pytest.approx(KO.global_sq_norm_numpy(g), rel=1e-12)
    a, b = g.copy(), g.copy()
    KO.scale_inplace_numba(a, 0.3)
    KO.scale_inplace_numpy(b, 0.3)
    np.testing.assert_array_equal(a, b)


# ============================================================ numerical gradients
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_numerical_gradient(name):
    rng = np.random.default_rng(15)
    x = rng.normal(0, 2, 23)
    x[np.abs(x) < 0.05] += 0.2  # keep away from the relu kinks
    w = rng.normal(size=x.size)
    fwd, bwd = act(name, "fwd", "numpy"), act(name, "bwd", "numpy")

    def loss(xx):
        y = np.empty_like(xx)
        fwd(xx, y)
        return float(np.dot(w, y))

    y = np.empty_like(x)
    fwd(x, y)
    dx = np.empty_like(x)
    bwd(y if name in FROM_OUTPUT else x, w, dx)
    check_grads(dx, num_grad(loss, x), name)


def test_softmax_numerical_gradient():
    rng = np.random.default_rng(16)
    x, w = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    y, dx = np.empty_like(x), np.empty_like(x)

    def loss(xx):
        KA.softmax_fwd_numpy(xx, y)
        return float(np.sum(w * y))

    KA.softmax_fwd_numpy(x, y)
    KA.softmax_bwd_numpy(y.copy(), w, dx)
    check_grads(dx, num_grad(loss, x), "softmax")


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
    KN.bn_stats_numpy(x, mean, var, invstd, EPS)
    dx, dg, db = np.empty_like(x), np.empty(C), np.empty(C)
    KN.bn_backward_numpy(w, x, mean, invstd, invstd, gamma, dx, dg, db)
    check_grads(dx, num_grad(lambda v: loss(v, gamma, beta), x), "bn dx", 1e-5, 1e-6)
    check_grads(dg, num_grad(lambda v: loss(x, v, beta), gamma), "bn dgamma", 1e-5, 1e-6)
    check_grads(db, num_grad(lambda v: loss(x, gamma, v), beta), "bn dbeta")


@pytest.mark.parametrize("name", ["xent_idx", "xent_soft", "sigmoid_xent", "mse"])
def test_loss_numerical_gradient(name):
    logits, labels, soft = loss_case(18, N=3, K=4)
    logits, soft = logits.astype(np.float64), soft.astype(np.float64)
    logits[0] -= 500.0  # central differences need moderate logits
    dx = np.empty_like(logits)
    if name.startswith("xent"):
        kind = name[5:]
        t = labels if kind == "idx" else soft
        fwd = getattr(KL, f"softmax_xent_fwd_{kind}_numpy")
        probs = np.empty_like(logits)
        fwd(logits, t, probs)
        getattr(KL, f"softmax_xent_bwd_{kind}_numpy")(probs, t, dx)
        numeric = num_grad(lambda v: fwd(v, t, np.empty_like(v)), logits)
    else:
        x, t = logits.reshape(-1), soft.reshape(-1) / 2  # BCE targets in [0, 1]
        fwd, bwd = getattr(KL, f"{name}_fwd_numpy"), getattr(KL, f"{name}_bwd_numpy")
        bwd(x, t, dx.reshape(-1))
        numeric = num_grad(lambda v: fwd(v, t), x).reshape(dx.shape)
    check_grads(dx, numeric, name)


# ============================================================ PyTorch
def _torch():
    return pytest.importorskip("torch")


TORCH_ACT = {
    "relu": lambda F, t: F.relu(t),
    "leaky_relu": lambda F, t: F.leaky_relu(t, SLOPE),
    "sigmoid": lambda F, t: t.sigmoid(),
    "tanh": lambda F, t: t.tanh(),
    "gelu": lambda F, t: F.gelu(t),
    "swish": lambda F, t: F.silu(t),
    "softmax": lambda F, t: F.softmax(t, dim=-1),
}


@pytest.mark.parametrize("name", ELEMENTWISE + ["softmax"])
def test_activation_vs_torch(name):
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(19)
    x = f32(rng.normal(0, 3, (6, 7))) if name == "softmax" else act_inputs(19)
    dy = f32(rng.normal(size=x.shape))
    xt = torch.tensor(x, requires_grad=True)
    yt = TORCH_ACT[name](F, xt)
    yt.backward(torch.tensor(dy))
    y, dx = np.empty_like(x), np.empty_like(x)
    act(name, "fwd")(x, y)
    act(name, "bwd")(y if name in FROM_OUTPUT | {"softmax"} else x, dy, dx)
    assert_close(y, yt.detach().numpy(), 1e-5, 1e-6, f"{name} fwd vs torch")
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-6, f"{name} bwd vs torch")


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (8, 5)])
def test_batchnorm_vs_torch(shape):
    torch = _torch()
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
    KN.bn_stats(x3, mean, var, invstd, EPS)
    KN.bn_affine(x3, mean, invstd, gamma, beta, y3)
    rm, rv = rm0.copy(), rv0.copy()
    KN.bn_update_running(rm, rv, mean, var, 0.1, N * S)
    dx, dg, db = np.empty_like(x3), np.empty(C, np.float32), np.empty(C, np.float32)
    KN.bn_backward(dy3, x3, mean, invstd, invstd, gamma, dx, dg, db)
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
    KN.bn_infer_fwd(x3, y3, rv0 - 1.0, rv0, gamma, beta, EPS)
    assert_close(y3.reshape(shape), yt.numpy(), what="eval y", **tol)


@pytest.mark.parametrize("name", ["xent_idx", "xent_soft", "sigmoid_xent", "mse"])
def test_loss_vs_torch(name):
    torch = _torch()
    F = torch.nn.functional
    logits, labels, soft = loss_case(21, N=8, K=6)
    xt = torch.tensor(logits, requires_grad=True)
    dx = np.empty_like(logits)
    if name.startswith("xent"):
        kind = name[5:]
        t = labels if kind == "idx" else soft
        lt = F.cross_entropy(xt, torch.tensor(t))
        probs = np.empty_like(logits)
        loss = getattr(KL, f"softmax_xent_fwd_{kind}")(logits, t, probs)
        getattr(KL, f"softmax_xent_bwd_{kind}")(probs, t, dx)
    else:
        t = soft / 2 if name == "sigmoid_xent" else soft
        tfn = F.binary_cross_entropy_with_logits if name == "sigmoid_xent" else F.mse_loss
        lt = tfn(xt, torch.tensor(t))
        loss = getattr(KL, f"{name}_fwd")(logits.reshape(-1), t.reshape(-1))
        getattr(KL, f"{name}_bwd")(logits.reshape(-1), t.reshape(-1), dx.reshape(-1))
    lt.backward()
    assert isinstance(loss, float)
    assert loss == pytest.approx(lt.item(), rel=1e-5)
    assert_close(dx, xt.grad.numpy(), 1e-5, 1e-7, f"{name} grad vs torch")


def test_argmax_accuracy_vs_torch():
    torch = _torch()
    logits, labels, _ = loss_case(22, N=50, K=7)
    want = int((torch.tensor(logits).argmax(1) == torch.tensor(labels)).sum())
    assert KL.argmax_accuracy(logits, labels) == want


@pytest.mark.parametrize("kind,cfg", OPT_CASES)
def test_optim_vs_torch(kind, cfg):
    torch = _torch()
    impl = "numba" if _jit.USE_NUMBA else "numpy"
    _, grads, ours = run_optim(impl, kind, cfg)
    p = torch.nn.Parameter(torch.tensor(f32(np.random.default_rng(13).normal(size=33))))
    if kind == "sgd":
        lr, mom, wd, nesterov = cfg
        opt = torch.optim.SGD([p], lr=lr, momentum=mom, weight_decay=wd, nesterov=nesterov,
                              foreach=False)
    else:
        lr, b1, b2, eps, wd, decoupled = cfg
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        opt = cls([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, foreach=False)
    for k, g in enumerate(grads):
        p.grad = torch.tensor(g)
        opt.step()
        assert_close(ours[k], p.detach().numpy(), 1e-5, 1e-7, f"{kind} {cfg} step {k + 1}")


def test_clip_vs_torch():
    torch = _torch()
    gs = [f32(np.random.default_rng(23 + i).normal(size=n)) for i, n in enumerate((7, 12))]
    ps = [torch.nn.Parameter(torch.zeros(g.size)) for g in gs]
    for p, g in zip(ps, gs):
        p.grad = torch.tensor(g)
    norm_t = torch.nn.utils.clip_grad_norm_(ps, max_norm=1.0, foreach=False)
    norm = math.sqrt(sum(KO.global_sq_norm(g) for g in gs))
    assert norm == pytest.approx(norm_t.item(), rel=1e-6)
    for p, g in zip(ps, gs):
        KO.scale_inplace(g, min(1.0 / (norm + 1e-6), 1.0))
        assert_close(g, p.grad.numpy(), 1e-6, 1e-8, "clipped gradient")


# ============================================================ no allocation
def _alloc_cases():
    """name -> (numba kernel, args), small float32 inputs."""
    rng = np.random.default_rng(24)
    v = f32(rng.normal(size=64))
    o1, o2 = np.empty_like(v), np.empty_like(v)
    m2 = f32(rng.normal(size=(8, 10)))
    p2, d2 = np.empty_like(m2), np.empty_like(m2)
    lab = rng.integers(0, 10, 8).astype(np.int64)
    x3 = f32(rng.normal(size=(4, 3, 5)))
    y3, h3, d3 = (np.empty_like(x3) for _ in range(3))
    c = [f32(np.ones(3)) for _ in range(7)]
    cases = {}
    for name in ELEMENTWISE:
        extra = (SLOPE,) if name == "leaky_relu" else ()
        cases[f"{name}_fwd"] = (getattr(KA, f"{name}_fwd_numba"), (v, o1) + extra)
        cases[f"{name}_bwd"] = (getattr(KA, f"{name}_bwd_numba"), (v, o1, o2) + extra)
    cases.update({
        "softmax_fwd": (KA.softmax_fwd_numba, (m2, p2)),
        "softmax_bwd": (KA.softmax_bwd_numba, (p2, m2, d2)),
        "bn_stats": (KN.bn_stats_numba, (x3, *c[:3], EPS)),
        "bn_normalize": (KN.bn_normalize_numba, (x3, c[0], c[1], h3)),
        "bn_affine": (KN.bn_affine_numba, (x3, *c[:4], y3)),
        "bn_backward": (KN.bn_backward_numba, (x3, h3, *c[:4], d3, c[4], c[5])),
        "bn_update_running": (KN.bn_update_running_numba, (*c[:4], 0.1, 60)),
        "bn_infer_fwd": (KN.bn_infer_fwd_numba, (x3, y3, *c[:4], EPS)),
        "softmax_xent_fwd_idx": (KL.softmax_xent_fwd_idx_numba, (m2, lab, p2)),
        "softmax_xent_bwd_idx": (KL.softmax_xent_bwd_idx_numba, (p2, lab, d2)),
        "softmax_xent_fwd_soft": (KL.softmax_xent_fwd_soft_numba, (m2, p2, d2)),
        "softmax_xent_bwd_soft": (KL.softmax_xent_bwd_soft_numba, (p2, m2, d2)),
        "sigmoid_xent_fwd": (KL.sigmoid_xent_fwd_numba, (v, o1)),
        "sigmoid_xent_bwd": (KL.sigmoid_xent_bwd_numba, (v, o1, o2)),
        "mse_fwd": (KL.mse_fwd_numba, (v, o1)),
        "mse_bwd": (KL.mse_bwd_numba, (v, o1, o2)),
        "argmax_accuracy": (KL.argmax_accuracy_numba, (m2, lab)),
        "sgd_step": (KO.sgd_step_numba, (o1, v, o2, 0.1, 0.9, 1e-4, True, False)),
        "adam_step": (KO.adam_step_numba, (o1, v, o2, f32(np.ones(64)), 1e-3, 0.9, 0.999,
                                           1e-8, 1e-2, 3, True)),
        "global_sq_norm": (KO.global_sq_norm_numba, (v,)),
        "scale_inplace": (KO.scale_inplace_numba, (o1, 0.5)),
    })
    return cases


ALLOC_CASES = _alloc_cases()


def _nrt_counts():
    """(allocations, frees) made by numba's runtime so far, or None if unavailable."""
    try:
        from numba.core.runtime import _nrt_python, rtsys

        if not _nrt_python.memsys_stats_enabled():
            _nrt_python.memsys_enable_stats()
        st = rtsys.get_allocation_stats()
        return st.alloc, st.free
    except Exception:  # internal API: the tracemalloc check still runs without it
        return None


@pytest.mark.skipif(not _jit.HAVE_NUMBA, reason="numba disabled: nothing compiled to check")
@pytest.mark.parametrize("name", sorted(ALLOC_CASES))
def test_numba_kernel_does_not_allocate(name):
    fn, args = ALLOC_CASES[name]
    fn(*args)  # warm-up: compiles
    fn(*args)
    nrt0 = _nrt_counts()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        fn(*args)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    nrt1 = _nrt_counts()
    assert peak - base < 4096, f"{name} allocated {peak - base} bytes (limit 4 KiB)"
    if nrt0 is not None and nrt1 is not None:
        # numba wraps each array argument in one runtime MemInfo at the call (no data is
        # copied); anything beyond that is an allocation inside the kernel
        n_arrays = sum(isinstance(a, np.ndarray) for a in args)
        allocs, frees = nrt1[0] - nrt0[0], nrt1[1] - nrt0[1]
        assert (allocs, frees) == (n_arrays, n_arrays), (
            f"{name}: {allocs} numba runtime allocations and {frees} frees, "
            f"expected {n_arrays} (one wrapper per array argument)")
