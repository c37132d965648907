"""Across the math kernels (activation, norm, loss, optim).

Hand-worked values, the public names following the numba switch, and a no-allocation
test for the compiled kernels. Each family's numba vs numpy (including aliased outputs),
numerical gradients and PyTorch checks: tests/test_kernels_activation.py,
test_kernels_bn.py, test_kernels_loss.py and test_kernels_optim.py. Shapes stay small so
the suite also runs with NUMBA_DISABLE_JIT=1.
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
from tests.kernel_cases import ELEMENTWISE, EPS, SLOPE, assert_close, f32

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


def test_public_names_follow_the_switch():
    for mod in (KA, KN, KL, KO):
        for name in dir(mod):
            if name.endswith("_numba") and not name.startswith("_"):
                base = name[: -len("_numba")]
                # without numba: the allocation-free version where there is one
                fallback = getattr(lean, base, None) or getattr(mod, base + "_numpy")
                want = getattr(mod, name) if _jit.USE_NUMBA else fallback
                assert getattr(mod, base) is want, f"{mod.__name__}.{base}"


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
