"""The allocation-free numpy kernels of kernels/lean_optim.py, lean_pool.py, lean_seq.py
and lean_misc.py against the numba kernels and the numpy references.

Bit-identical where the module docstrings claim it (Adam, max-pool backward, embedding,
the recurrent cells' element-wise arithmetic), else to float32 rounding (attention and
layer norm, whose float64 sums run in another order; tanh/exp from numpy, not libm).
Each case also runs with a tiny scratch buffer, so the block loops are exercised.
"""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.kernels import (
    attention,
    conv1d,
    embedding,
    layer_norm,
    lean,
    lean_misc,
    lean_optim,
    lean_pool,
    lean_seq,
    optim,
    pool,
    sequence,
)
from tests.kernel_cases import F32, POOL_CASES, out_size, rand

ACTS = [(0, 1), (1, 1), (2, 0), (0, 2)]  # (act, recurrent act): tanh, sigmoid, relu


@pytest.fixture(params=[lean.SCRATCH_BYTES, 96], ids=["scratch-256k", "scratch-96b"])
def scratch_size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(lean, "SCRATCH_BYTES", request.param)
    monkeypatch.setattr(lean, "_scratch", {})
    return request.param


def _run3(fns, make):
    """Run (lean, numba, numpy reference) on fresh copies of ``make()``'s arrays."""
    outs = []
    for fn in fns:
        args = make()
        fn(*args)
        outs.append(args)
    return outs


def _eq(a, b) -> None:
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)


def _close(a, b, rtol: float, atol: float = 0.0) -> None:
    for x, y in zip(a, b):
        if isinstance(x, np.ndarray):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------ Adam
@pytest.mark.parametrize("n", [1, 7, 1000, 40_000])
@pytest.mark.parametrize("wd,decoupled", [(0.0, False), (0.1, False), (0.01, True)])
@pytest.mark.parametrize("beta1", [0.9, 0.3])
def test_adam_lean_equals_numba(n, wd, decoupled, beta1, scratch_size) -> None:
    rng = np.random.default_rng(n)
    base = [rand(rng, n), rand(rng, n), rand(rng, n) * 0.1, np.abs(rand(rng, n)) * 0.01]
    for step in (1, 5):
        fns = (lean_optim.adam_step, optim.adam_step_numba, optim.adam_step_numpy)
        got = _run3(fns, lambda: [a.copy() for a in base]
                    + [0.01, beta1, 0.999, 1e-8, wd, step, decoupled])
        _eq(got[0], got[1])  # w, g, m, v bit for bit
        _close(got[0], got[2], rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------- max pooling
@pytest.mark.parametrize("case", POOL_CASES)
def test_maxpool_bwd_lean_equals_numba(case, scratch_size) -> None:
    b, c, h, w, kh, kw, sh, sw, pt, pb, pl, pr = case
    oh, ow = out_size(h, kh, sh, pt, pb), out_size(w, kw, sw, pl, pr)
    rng = np.random.default_rng(sum(case))
    x = rand(rng, b, c, h, w)
    x[0, 0, :2, :2] = 1.0  # ties: the first maximum wins
    x.reshape(-1)[-1] = np.nan  # a NaN wins its windows
    if x.size > 5:
        x.reshape(-1)[3] = -np.inf
    dy = rand(rng, b, c, oh, ow)
    dy.reshape(-1)[0] = -0.0  # numba's dx = 0.0 + dy makes it +0.0
    fns = (lean_pool.maxpool2d_bwd, pool.maxpool2d_bwd_numba, pool.maxpool2d_bwd_numpy)
    got = _run3(fns, lambda: [x, dy, np.full_like(x, 7), kh, kw, sh, sw, pt, pl])
    _eq(got[0], got[1])
    _eq(got[0], got[2])
    np.testing.assert_array_equal(np.signbit(got[0][2]), np.signbit(got[1][2]))


# ------------------------------------------------------------------- recurrent cells
SEQ_SHAPES = [(1, 1), (3, 5), (16, 64), (70, 9)]


def _seq_fns(name: str):
    return (getattr(lean_seq, name), getattr(sequence, name + "_numba"),
            getattr(sequence, name + "_numpy"))


def _check_seq(got, act_codes) -> None:
    # numpy's tanh/exp may differ from libm's in the last float64 bit: then one float32
    # rounding; ReLU-only cells are bit-identical
    if all(c == 2 for c in act_codes):
        _eq(got[0], got[1])
    _close(got[0], got[1], rtol=2e-7, atol=1e-7)
    _close(got[0], got[2], rtol=2e-7, atol=1e-7)


@pytest.mark.parametrize("B,U", SEQ_SHAPES)
@pytest.mark.parametrize("act,ract", ACTS)
def test_lstm_lean_matches_numba(B, U, act, ract, scratch_size) -> None:
    rng = np.random.default_rng(B * U + act)
    pre, gh, cp = rand(rng, B, 4 * U), rand(rng, B, 4 * U), rand(rng, B, U)
    pre[0, 0] = -0.0
    got = _run3(_seq_fns("lstm_fwd_step"), lambda: [
        pre.copy(), gh, cp, np.full((B, 4 * U), 7, F32), np.full((B, U), 7, F32),
        np.full((B, U), 7, F32), act, ract])
    _check_seq(got, (act, ract))
    gates, c = got[1][3], got[1][4]
    dh = rand(rng, B, U)
    dc = rand(rng, B, U)
    got = _run3(_seq_fns("lstm_bwd_step"), lambda: [
        gates, c, cp, dh, dc.copy(), np.full((B, 4 * U), 7, F32), act, ract])
    _check_seq(got, (act, ract))


@pytest.mark.parametrize("B,U", SEQ_SHAPES)
@pytest.mark.parametrize("act,ract", ACTS)
def test_gru_lean_matches_numba(B, U, act, ract, scratch_size) -> None:
    rng = np.random.default_rng(B * U + act + 1)
    gx, gh, hp = rand(rng, B, 4 * U), rand(rng, B, 3 * U), rand(rng, B, U)
    got = _run3(_seq_fns("gru_fwd_step"), lambda: [
        gx.copy(), gh, hp, np.full((B, U), 7, F32), act, ract])
    _check_seq(got, (act, ract))
    gates, dh = got[1][0], rand(rng, B, U)
    got = _run3(_seq_fns("gru_bwd_step"), lambda: [
        gates, hp, dh.copy(), np.full((B, 3 * U), 7, F32), np.full((B, 3 * U), 7, F32),
        act, ract])
    _check_seq(got, (act, ract))


@pytest.mark.parametrize("B,U", SEQ_SHAPES)
@pytest.mark.parametrize("act", [0, 1, 2])
def test_rnn_lean_matches_numba(B, U, act, scratch_size) -> None:
    rng = np.random.default_rng(B * U + act + 2)
    x, gh = rand(rng, B, U), rand(rng, B, U)
    x[0, 0] = np.nan  # ReLU: NaN -> 0, as numba's `v if v > 0 else 0`
    got = _run3(_seq_fns("rnn_fwd_step"), lambda: [x.copy(), gh, act])
    if act == 2:
        _eq(got[0], got[1])
    else:
        _close(got[0], got[1], rtol=2e-7, atol=1e-7)
    h, dh = got[1][0], rand(rng, B, U)
    got = _run3(_seq_fns("rnn_bwd_step"), lambda: [h, dh, np.full((B, U), 7, F32), act])
    _eq(got[0], got[1])  # no transcendental: bit for bit
    _close(got[0], got[2], rtol=1e-7)


# ------------------------------------------------------------------------- attention
@pytest.mark.parametrize("B,H,Tq,Tk,P,Pv", [(1, 1, 1, 1, 1, 1), (2, 3, 5, 7, 4, 2),
                                            (3, 2, 9, 4, 3, 5), (2, 4, 16, 16, 8, 8)])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_lean_matches_numba(B, H, Tq, Tk, P, Pv, causal, scratch_size) -> None:
    rng = np.random.default_rng(B * Tq * Tk + P)
    q, k, v = rand(rng, B, Tq, H * P), rand(rng, B, Tk, H * P), rand(rng, B, Tk, H * Pv)
    scale = 1.0 / np.sqrt(P)
    fns = (lean_misc.attention_fwd, attention.attention_fwd_numba, attention.attention_fwd_numpy)
    got = _run3(fns, lambda: [q, k, v, np.full((B, H, Tq, Tk), 7, F32),
                              np.full((B, Tq, H * Pv), 7, F32), scale, causal])
    # dot products and softmax sums in another order: float32 rounding
    _close(got[0], got[1], rtol=1e-5, atol=1e-6)
    _close(got[0], got[2], rtol=1e-5, atol=1e-6)
    a, do = got[1][3], rand(rng, B, Tq, H * Pv)
    fns = (lean_misc.attention_bwd, attention.attention_bwd_numba, attention.attention_bwd_numpy)
    got = _run3(fns, lambda: [do, a, q, k, v, np.full_like(q, 7), np.full_like(k, 7),
                              np.full_like(v, 7), scale, np.full((Tq, Tk), 7.0)])
    for g in got[1:]:
        for x, y in zip(got[0][5:8], g[5:8]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- embedding
@pytest.mark.parametrize("R,V,D", [(1, 1, 1), (7, 5, 3), (300, 50, 40), (64, 1000, 130)])
@pytest.mark.parametrize("mask_id", [-1, 0, 2])
def test_embedding_lean_equals_numba(R, V, D, mask_id, scratch_size) -> None:
    rng = np.random.default_rng(R + V + D)
    ids = rng.integers(0, V, R).astype(F32)
    if R > 4:  # out of range, NaN, and fractional / negative-but-in-range ids
        ids[:5] = [V, -1.0, np.nan, -0.5, V - 0.5]
    w = rand(rng, V, D)
    fns = (lean_misc.embedding_fwd, embedding.embedding_fwd_numba, embedding.embedding_fwd_numpy)
    outs = []
    for fn in fns:
        y = np.full((R, D), 7, F32)
        outs.append((fn(ids, w, y, mask_id), y))
    assert outs[0][0] == outs[1][0] == outs[2][0] == (3 if R > 4 else 0)
    for _, y in outs[1:]:
        np.testing.assert_array_equal(outs[0][1], y)
    dy = rand(rng, R, D)
    got = _run3((lean_misc.embedding_bwd, embedding.embedding_bwd_numba),
                lambda: [ids, dy, np.full((V, D), 7, F32), mask_id])
    _eq(got[0], got[1])  # float32 adds in row order, bit for bit
    ref = [ids, dy, np.full((V, D), 7, F32), mask_id]
    embedding.embedding_bwd_numpy(*ref)  # float64 sums: float32 rounding
    _close(got[0], ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ layer norm
@pytest.mark.parametrize("R,N", [(1, 1), (3, 7), (64, 96), (5, 3000)])
def test_layer_norm_lean_matches_numba(R, N, scratch_size) -> None:
    rng = np.random.default_rng(R * N)
    x = (rand(rng, R, N) * 3 + 20).astype(F32)  # far from 0: a one-pass variance would show
    gamma, beta = rand(rng, N), rand(rng, N)
    names = ("ln_fwd", "ln_bwd", "ln_param_grad")
    fwd, bwd, pg = ((getattr(lean_misc, n), getattr(layer_norm, n + "_numba"),
                     getattr(layer_norm, n + "_numpy")) for n in names)
    got = _run3(fwd, lambda: [x, np.full_like(x, 7), np.full_like(x, 7), np.full(R, 7, F32),
                              gamma, beta, 1e-5])
    tol = dict(rtol=2e-6, atol=2e-6)  # row sums in another order: float32 rounding
    _close(got[0], got[1], **tol)
    _close(got[0], got[2], **tol)
    xhat, inv, dy = got[1][2], got[1][3], rand(rng, R, N)
    for fns, make in ((bwd, lambda: [dy, xhat, inv, gamma, np.full_like(x, 7)]),
                      (pg, lambda: [dy, xhat, np.full(N, 7, F32), np.full(N, 7, F32)])):
        got = _run3(fns, make)
        _close(got[0], got[1], **tol)
        _close(got[0], got[2], **tol)


# ---------------------------------------------------------------------------- conv1d
@pytest.mark.parametrize("C,W,k,stride,pad,dil", [(1, 1, 1, 1, 0, 1), (3, 9, 3, 1, 1, 1),
                                                  (2, 17, 5, 2, 3, 2), (4, 8, 3, 3, 4, 1),
                                                  (2, 30, 4, 1, 0, 3)])
def test_conv1d_lean_equals_numba(C, W, k, stride, pad, dil, scratch_size) -> None:
    ow = (W + 2 * pad - dil * (k - 1) - 1) // stride + 1
    rng = np.random.default_rng(C * W + k)
    x, col = rand(rng, C, W), rand(rng, C * k, ow)
    for name, a, shape in (("im2col1d", x, (C * k, ow)), ("col2im1d", col, (C, W))):
        outs = []
        for fn in (getattr(lean_misc, name), getattr(conv1d, name + "_numba"),
                   getattr(conv1d, name + "_numpy")):
            out = np.full(shape, 7, F32)
            fn(a, out, k, stride, pad, dil)
            outs.append(out)
        np.testing.assert_array_equal(outs[0], outs[1])
        np.testing.assert_allclose(outs[0], outs[2], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("n", [1, 7, 1000, 70_001])
def test_global_sq_norm_lean_matches_numba(n, scratch_size) -> None:
    g = rand(np.random.default_rng(n), n)
    got = lean_optim.global_sq_norm(g)
    np.testing.assert_allclose(got, optim.global_sq_norm_numba(g), rtol=1e-13)
    np.testing.assert_allclose(got, optim.global_sq_norm_numpy(g), rtol=1e-13)
