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

from device_runtime.kernels import lean, lean_optim, lean_pool, lean_seq, optim, pool, sequence
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
    fns = (lean_pool.maxpool2d_bwd, pool.maxpool2d_bwd_numba, pool.maxpool2d_bwd_numpy)
    got = _run3(fns, lambda: [x, dy, np.full_like(x, 7), kh, kw, sh, sw, pt, pl])
    _eq(got[0], got[1])
    _eq(got[0], got[2])


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
