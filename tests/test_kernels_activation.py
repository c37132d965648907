"""Activation kernels (element-wise and softmax).

numba loops vs the numpy references (including aliased outputs: y is x, dx is dy),
numerical gradients (central differences in float64 on the references) and PyTorch
(skipped without it). Shapes stay small so the suite also runs with NUMBA_DISABLE_JIT=1.
"""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.kernels import activation as KA
from tests.kernel_cases import (
    ELEMENTWISE,
    SLOPE,
    act_inputs,
    assert_close,
    check_grads,
    f32,
    num_grad,
    torch_or_skip,
)

FROM_OUTPUT = {"relu", "leaky_relu", "sigmoid", "tanh"}  # backward reads y, not x


def act(name: str, kind: str, impl: str = ""):
    """Kernel ``{name}_{kind}[_{impl}]`` with the leaky slope bound."""
    fn = getattr(KA, f"{name}_{kind}" + (f"_{impl}" if impl else ""))
    if name == "leaky_relu":
        return lambda *a: fn(*a, SLOPE)
    return fn


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


# ============================================================ PyTorch


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
    torch = torch_or_skip()
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
