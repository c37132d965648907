"""kernels/lean_elem.py (activations, dropout, positional encoding, L2 term) against the
numba kernels and the numpy references: bit for bit where its docstring claims it, else
to float32 rounding (numpy's exp / sin / cos, pairwise softmax sums). Each case also
runs with a tiny scratch buffer, so the block loops are exercised."""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.kernels import activation, dropout, lean, lean_elem, positional, regularize
from tests.kernel_cases import F32


@pytest.fixture(params=[lean.SCRATCH_BYTES, 96], ids=["scratch-256k", "scratch-96b"])
def scratch_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(lean, "SCRATCH_BYTES", request.param)
    monkeypatch.setattr(lean, "_scratch", {})
    return request.param


def _x(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 4).astype(F32)
    specials = [0.0, -0.0, np.nan, 1e-5, -3e-5, 40.0, -40.0, 1e-30]
    x[:min(n, len(specials))] = specials[:n]
    return x


def _three(name: str, *args, n: int):
    """(lean, numba, numpy) outputs of activation ``name`` on fresh float32 outputs."""
    outs = []
    for fn in (getattr(lean_elem, name), getattr(activation, name + "_numba"),
               getattr(activation, name + "_numpy")):
        out = np.full(n, 7, F32)
        if len(args) > 1:
            fn(*args[:2], out, *args[2:])
        else:
            fn(args[0], out)
        outs.append(out)
    return outs


SIZES = [1, 9, 1000, 70_001]
EXACT_BWD = ["relu_bwd", "sigmoid_bwd", "tanh_bwd"]
ROUNDED_FWD = ["sigmoid_fwd", "tanh_fwd", "swish_fwd"]


@pytest.mark.parametrize("n", SIZES)
def test_activations_lean_match_numba(n: int, scratch_size: int) -> None:
    x, dy = _x(n, n), _x(n, n + 1)
    for name in ROUNDED_FWD:  # numpy's exp vs libm's: float32 rounding
        got, nb, ref = _three(name, x, n=n)
        np.testing.assert_allclose(got, nb, rtol=1.2e-7, atol=1e-37)
        np.testing.assert_allclose(got, ref, rtol=1.2e-7, atol=1e-37)
    y = np.tanh(x)
    for name in EXACT_BWD:
        got, nb, ref = _three(name, y, dy, n=n)
        np.testing.assert_array_equal(got, nb)
        np.testing.assert_allclose(got, ref, rtol=1e-7)
    got, nb, ref = _three("swish_bwd", x, dy, n=n)
    np.testing.assert_allclose(got, nb, rtol=2.4e-7, atol=1e-37)
    fwd = [np.full(n, 7, F32) for _ in range(3)]
    for fn, o in zip((lean_elem.leaky_relu_fwd, activation.leaky_relu_fwd_numba,
                      activation.leaky_relu_fwd_numpy), fwd):
        fn(x, o, 0.1)
    for outs in (fwd, _three("leaky_relu_bwd", y, dy, 0.1, n=n)):
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_array_equal(outs[0], outs[2])


def test_activations_lean_in_place(scratch_size: int) -> None:
    x = _x(5000, 3)
    want = np.empty_like(x)
    activation.tanh_fwd_numba(x, want)
    got = x.copy()
    lean_elem.tanh_fwd(got, got)  # y aliases x
    np.testing.assert_allclose(got, want, rtol=1.2e-7)
    dy, y = _x(5000, 4), np.tanh(x)
    want = np.empty_like(x)
    activation.relu_bwd_numba(y, dy, want)
    got = dy.copy()
    lean_elem.relu_bwd(y, got, got)  # dx aliases dy
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("R,K", [(1, 1), (3, 10), (256, 10), (7, 3000)])
def test_softmax_lean_matches_numba(R: int, K: int, scratch_size: int) -> None:
    rng = np.random.default_rng(R * K)
    x = (rng.standard_normal((R, K)) * 5).astype(F32)
    outs = []
    for fn in (lean_elem.softmax_fwd, activation.softmax_fwd_numba, activation.softmax_fwd_numpy):
        y = x.copy()
        fn(y, y)  # in place, as the layer may run it
        outs.append(y)
    np.testing.assert_allclose(outs[0], outs[1], rtol=2e-7, atol=1e-12)
    np.testing.assert_allclose(outs[0], outs[2], rtol=2e-7, atol=1e-12)
    y, dy = outs[1], rng.standard_normal((R, K)).astype(F32)
    outs = []
    for fn in (lean_elem.softmax_bwd, activation.softmax_bwd_numba, activation.softmax_bwd_numpy):
        dx = dy.copy()
        fn(y, dx, dx)
        outs.append(dx)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(outs[0], outs[2], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9])
def test_dropout_lean_equals_numba(n: int, rate: float, scratch_size: int) -> None:
    x, dy = _x(n, 5), _x(n, 6)
    outs = []
    for fn in (lean_elem.dropout_fwd, dropout.dropout_fwd_numba, dropout.dropout_fwd_numpy):
        y, mask = np.full(n, 7, F32), np.full(n, 7, np.uint8)
        fn(x, y, mask, rate, 1234, 17)
        outs.append((y, mask))
    for y, mask in outs[1:]:
        np.testing.assert_array_equal(outs[0][0], y)
        np.testing.assert_array_equal(outs[0][1], mask)
    mask = outs[1][1]
    if 0 < rate and n > 100:
        assert abs(1 - mask.mean() - rate) < 0.05
    got, want = np.full(n, 7, F32), np.full(n, 7, F32)
    lean_elem.dropout_bwd(dy, mask, got, rate)
    dropout.dropout_bwd_numba(dy, mask, want, rate)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("B,T,D", [(1, 1, 1), (2, 5, 6), (4, 64, 33), (1, 300, 512)])
def test_pe_add_lean_matches_numba(B: int, T: int, D: int, scratch_size: int) -> None:
    x = np.random.default_rng(T).standard_normal((B, T, D)).astype(F32)
    outs = []
    for fn in (lean_elem.pe_add, positional.pe_add_numba, positional.pe_add_numpy):
        y = x.copy()
        fn(y, y)
        outs.append(y)
    # numpy's sin / cos / pow vs libm's: float32 rounding of the sum
    np.testing.assert_allclose(outs[0], outs[1], rtol=1.2e-7, atol=2e-7)
    np.testing.assert_allclose(outs[0], outs[2], rtol=1.2e-7, atol=2e-7)


@pytest.mark.parametrize("n", SIZES)
def test_l2_add_lean_equals_numba(n: int, scratch_size: int) -> None:
    w, g = _x(n, 8), _x(n, 9)
    got, want, ref = g.copy(), g.copy(), g.copy()
    lean_elem.l2_add(got, w, 3e-4)
    regularize.l2_add_numba(want, w, 3e-4)
    regularize.l2_add_numpy(ref, w, 3e-4)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got, ref)
