"""kernels/lean_loss.py against the numba kernels and the numpy references: gradients
and the argmax count bit for bit; probabilities and loss values to float32 rounding
(pairwise sums). Each case also runs with a tiny scratch buffer (several row blocks)."""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.kernels import lean, lean_loss
from device_runtime.kernels import loss as KL
from tests.kernel_cases import F32


@pytest.fixture(params=[lean.SCRATCH_BYTES, 96], ids=["scratch-256k", "scratch-96b"])
def scratch_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(lean, "SCRATCH_BYTES", request.param)
    monkeypatch.setattr(lean, "_scratch", {})
    return request.param


def _case(N: int, K: int, seed: int):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((N, K)) * 4).astype(F32)
    labels = rng.integers(0, K, N).astype(np.int64)
    soft = rng.random((N, K)).astype(F32)
    soft /= soft.sum(axis=1, keepdims=True)
    return logits, labels, soft


def _impls(name: str):
    return (getattr(lean_loss, name), getattr(KL, name + "_numba"), getattr(KL, name + "_numpy"))


SHAPES = [(1, 1), (4, 3), (32, 10), (300, 1000)]


@pytest.mark.parametrize("N,K", SHAPES)
@pytest.mark.parametrize("kind", ["idx", "soft"])
def test_softmax_xent_lean_matches_numba(N: int, K: int, kind: str, scratch_size: int) -> None:
    logits, labels, soft = _case(N, K, N * K)
    target = labels if kind == "idx" else soft
    vals, probs = [], []
    for fn in _impls(f"softmax_xent_fwd_{kind}"):
        p = logits.copy()  # probs aliasing logits, as the layer may run it
        vals.append(fn(p, target, p))
        probs.append(p)
    for v, p in zip(vals[1:], probs[1:]):
        np.testing.assert_allclose(vals[0], v, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(probs[0], p, rtol=2e-7, atol=1e-12)
    outs = []
    for fn in _impls(f"softmax_xent_bwd_{kind}"):
        dx = np.full((N, K), 7, F32)
        fn(probs[1], target, dx)
        outs.append(dx)
    if kind == "idx":
        np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(outs[0], outs[2], rtol=1e-6, atol=1e-9)


def test_softmax_xent_lean_rejects_bad_label() -> None:
    logits, labels, _ = _case(6, 5, 9)
    labels[2] = 5
    probs = np.full_like(logits, 7)
    with pytest.raises(ValueError, match="label out of range"):
        lean_loss.softmax_xent_fwd_idx(logits, labels, probs)
    assert (probs == 7).all()  # validated before anything is written


@pytest.mark.parametrize("n", [1, 7, 1000, 70_001])
@pytest.mark.parametrize("name", ["mse", "sigmoid_xent"])
def test_elementwise_losses_lean_match_numba(n: int, name: str, scratch_size: int) -> None:
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 4).astype(F32)
    t = (rng.random(n) if name == "sigmoid_xent" else rng.standard_normal(n)).astype(F32)
    vals = [fn(x, t) for fn in _impls(f"{name}_fwd")]
    np.testing.assert_allclose(vals[0], vals[1], rtol=1e-12)
    np.testing.assert_allclose(vals[0], vals[2], rtol=1e-12)
    outs = []
    for fn in _impls(f"{name}_bwd"):
        dx = np.full(n, 7, F32)
        fn(x, t, dx)
        outs.append(dx)
    if name == "mse":
        np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1.2e-7, atol=1e-30)
    np.testing.assert_allclose(outs[0], outs[2], rtol=1.2e-7, atol=1e-30)


@pytest.mark.parametrize("N,K", SHAPES)
def test_argmax_accuracy_lean_equals_numba(N: int, K: int, scratch_size: int) -> None:
    logits, labels, _ = _case(N, K, N + K)
    logits[0, -1] = logits[0].max()  # a tie: the first maximum counts
    if N > 3 and K > 2:
        logits[3, 1] = np.nan  # the first NaN wins
        labels[3] = 1
    got = lean_loss.argmax_accuracy(logits, labels)
    assert got == KL.argmax_accuracy_numba(logits, labels)
    assert got == KL.argmax_accuracy_numpy(logits, labels)
