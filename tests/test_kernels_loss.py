"""Loss kernels (softmax cross-entropy, sigmoid cross-entropy, MSE) and accuracy.

numba loops vs the numpy references (including aliased outputs), label validation,
numerical gradients of the references and PyTorch (skipped without it).
"""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.kernels import loss as KL
from tests.kernel_cases import act_inputs, assert_close, check_grads, f32, num_grad, torch_or_skip


def loss_case(seed, N=6, K=5):
    rng = np.random.default_rng(seed)
    logits = f32(rng.normal(0, 3, (N, K)))
    logits[0] += 500.0  # needs log-sum-exp
    labels = rng.integers(0, K, N).astype(np.int64)
    soft = f32(rng.random((N, K)) * 2)  # rows do NOT sum to 1: exercises sum_k(t)
    return logits, labels, soft


# ============================================================ numba vs numpy


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


# ============================================================ numerical gradients


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


@pytest.mark.parametrize("name", ["xent_idx", "xent_soft", "sigmoid_xent", "mse"])
def test_loss_vs_torch(name):
    torch = torch_or_skip()
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
    torch = torch_or_skip()
    logits, labels, _ = loss_case(22, N=50, K=7)
    want = int((torch.tensor(logits).argmax(1) == torch.tensor(labels)).sum())
    assert KL.argmax_accuracy(logits, labels) == want
