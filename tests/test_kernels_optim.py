"""Optimizer kernels (SGD, Adam/AdamW, gradient norm and clipping).

A hand-worked SGD step, numba vs the numpy references (same float32 op sequence, so
bit-identical; SGD also vs the allocation-free version) and PyTorch step by step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from device_runtime.kernels import _jit, lean
from device_runtime.kernels import optim as KO
from tests.kernel_cases import assert_close, f32, torch_or_skip


def test_hand_worked_sgd():
    w, g, buf = f32([1.0]), f32([0.5]), f32([0.0])
    KO.sgd_step(w, g, buf, 0.1, 0.9, 0.0, False, True)  # buf = g; w = 1 - 0.1*0.5
    assert (w[0], buf[0]) == (np.float32(0.95), 0.5)
    KO.sgd_step(w, g, buf, 0.1, 0.9, 0.0, False, False)  # buf = 0.9*0.5 + 0.5 = 0.95
    assert_close([w[0], buf[0]], [0.95 - 0.095, 0.95], 1e-6, 0, "sgd step 2")
    assert g[0] == 0.5  # the gradient is left intact


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


# ============================================================ PyTorch


@pytest.mark.parametrize("kind,cfg", OPT_CASES)
def test_optim_vs_torch(kind, cfg):
    torch = torch_or_skip()
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
    torch = torch_or_skip()
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
