"""Kernels of the issue-5 layers: numba loops against the numpy references.

The ``*_numba`` functions are called directly (compiled, or as plain Python under
NUMBA_DISABLE_JIT=1), so both implementations are checked whatever the switch; shapes
stay small. Aliased outputs are tested where the layers rely on them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from device_runtime.kernels import attention as KA
from device_runtime.kernels import conv1d as KC
from device_runtime.kernels import embedding as KE
from device_runtime.kernels import layer_norm as KL
from device_runtime.kernels import positional as KP
from device_runtime.kernels import regularize as KR
from device_runtime.kernels import sequence as KS
from device_runtime.kernels import upsample as KU

TOL = {"rtol": 2e-6, "atol": 2e-6}


def _r(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


def _both(fn_name, module, make_args, outs):
    """Run ``<fn_name>_numba`` and ``_numpy`` on fresh copies; compare the outputs at
    positions ``outs`` and the return values."""
    res = []
    for impl in ("numba", "numpy"):
        args = make_args()
        ret = getattr(module, f"{fn_name}_{impl}")(*args)
        res.append((ret, [args[i].copy() for i in outs]))
    (r1, o1), (r2, o2) = res
    assert r1 == r2
    for a, b in zip(o1, o2):
        np.testing.assert_allclose(a, b, **TOL)
    return o1


@pytest.mark.parametrize("act,ract", [(0, 1), (2, 1), (1, 0)])
def test_lstm_step(act, ract):
    B, U = 3, 4
    pre, gh, c0 = _r(B, 4 * U, seed=1), _r(B, 4 * U, seed=2), _r(B, U, seed=3)
    _both("lstm_fwd_step", KS, lambda: (pre.copy(), gh, c0, np.zeros((B, 4 * U), np.float32),
                                        np.zeros((B, U), np.float32), np.zeros((B, U), np.float32),
                                        act, ract), [3, 4, 5])
    # gates may overwrite the pre-activations they are computed from
    g_alias = pre.copy()
    KS.lstm_fwd_step_numba(g_alias, gh, c0, g_alias, np.zeros((B, U), np.float32),
                           np.zeros((B, U), np.float32), act, ract)
    g_sep = np.zeros_like(pre)
    KS.lstm_fwd_step_numba(pre, gh, c0, g_sep, np.zeros((B, U), np.float32),
                           np.zeros((B, U), np.float32), act, ract)
    np.testing.assert_array_equal(g_alias, g_sep)
    gates = np.random.default_rng(4).uniform(0.05, 0.95, (B, 4 * U)).astype(np.float32)
    c, dh, dc = _r(B, U, seed=5), _r(B, U, seed=6), _r(B, U, seed=7)
    _both("lstm_bwd_step", KS, lambda: (gates, c, c0, dh, dc.copy(),
                                        np.zeros((B, 4 * U), np.float32), act, ract), [4, 5])


def test_gru_and_rnn_steps():
    B, U = 3, 5
    gates, gh, h0 = _r(B, 4 * U, seed=1), _r(B, 3 * U, seed=2), _r(B, U, seed=3)
    _both("gru_fwd_step", KS, lambda: (gates.copy(), gh, h0, np.zeros((B, U), np.float32), 0, 1),
          [0, 3])
    saved = np.random.default_rng(4).uniform(0.05, 0.95, (B, 4 * U)).astype(np.float32)
    z3 = (B, 3 * U)
    _both("gru_bwd_step", KS, lambda: (saved, h0, _r(B, U, seed=5), np.zeros(z3, np.float32),
                                       np.zeros(z3, np.float32), 0, 1), [2, 3, 4])
    for act in (0, 1, 2):
        _both("rnn_fwd_step", KS, lambda: (_r(B, U, seed=6), gh[:, :U].copy(), act), [0])
        _both("rnn_bwd_step", KS, lambda: (np.tanh(_r(B, U, seed=7)), _r(B, U, seed=8),
                                           np.zeros((B, U), np.float32), act), [2])


def test_embedding_lookup_scatter_and_bad_ids():
    V, D, R = 6, 3, 9
    w = _r(V, D)
    ids = np.array([0, 5, 2, 2, 3, 5, 1, 2, 4], np.float32)
    for mask in (-1, 2):
        y = _both("embedding_fwd", KE, lambda: (ids, w, np.zeros((R, D), np.float32), mask), [2])[0]
        np.testing.assert_array_equal(y[1], w[5])
        g = _both("embedding_bwd", KE,
                  lambda: (ids, _r(R, D, seed=1), np.full((V, D), 7, np.float32), mask), [2])[0]
        dy = _r(R, D, seed=1)
        want2 = 0.0 if mask == 2 else dy[2] + dy[3] + dy[7]
        np.testing.assert_allclose(g[2], want2 + np.zeros(D), rtol=1e-6)
    bad = np.array([0, 6, -1, np.nan, 1.5], np.float32)
    for impl in (KE.embedding_fwd_numba, KE.embedding_fwd_numpy):
        assert impl(bad, w, np.zeros((5, D), np.float32), -1) == 3


@pytest.mark.parametrize("H,causal,tq,tk", [(1, False, 3, 4), (2, True, 4, 4), (3, False, 2, 5)])
def test_attention(H, causal, tq, tk):
    B, P, Pv = 2, 3, 2
    q, k, v = _r(B, tq, H * P, seed=1), _r(B, tk, H * P, seed=2), _r(B, tk, H * Pv, seed=3)
    a, o = _both("attention_fwd", KA, lambda: (q, k, v, np.zeros((B, H, tq, tk), np.float32),
                                               np.zeros((B, tq, H * Pv), np.float32), 0.7, causal),
                 [3, 4])
    np.testing.assert_allclose(a.sum(axis=-1), 1.0, rtol=1e-6)
    if causal:
        assert np.all(a[:, :, 0, 1:] == 0)
    do = _r(B, tq, H * Pv, seed=4)
    _both("attention_bwd", KA, lambda: (do, a, q, k, v, np.zeros_like(q), np.zeros_like(k),
                                        np.zeros_like(v), 0.7, np.zeros((tq, tk))), [5, 6, 7])


def test_layer_norm_in_place():
    x, gamma, beta = _r(5, 7, scale=3.0), _r(7, seed=1), _r(7, seed=2)
    y, xhat, inv = _both("ln_fwd", KL, lambda: (x, np.zeros_like(x), np.zeros_like(x),
                                                np.zeros(5, np.float32), gamma, beta, 1e-5),
                         [1, 2, 3])
    x2 = x.copy()
    KL.ln_fwd_numba(x2, x2, np.zeros_like(x), np.zeros(5, np.float32), gamma, beta, 1e-5)
    np.testing.assert_allclose(x2, y, **TOL)
    dy = _r(5, 7, seed=3)
    dx = _both("ln_bwd", KL, lambda: (dy.copy(), xhat, inv, gamma, np.zeros_like(x)), [4])[0]
    d2 = dy.copy()
    KL.ln_bwd_numba(d2, xhat, inv, gamma, d2)
    np.testing.assert_allclose(d2, dx, **TOL)
    _both("ln_param_grad", KL, lambda: (dy, xhat, np.zeros(7, np.float32), np.zeros(7, np.float32)),
          [2, 3])


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample(mode):
    x, dy = _r(2, 3, 3, 4), _r(2, 3, 6, 12, seed=1)
    _both(f"{mode}_fwd", KU, lambda: (x, np.zeros((2, 3, 6, 12), np.float32), 2, 3), [1])
    _both(f"{mode}_bwd", KU, lambda: (dy, np.full_like(x, 9.0), 2, 3), [1])


@pytest.mark.parametrize("k,stride,pad,dil", [(3, 1, 1, 1), (2, 2, 0, 1), (3, 1, 2, 2)])
def test_conv1d_im2col_col2im(k, stride, pad, dil):
    C, W = 2, 9
    ow = (W + 2 * pad - dil * (k - 1) - 1) // stride + 1
    x = _r(C, W)
    col = _both("im2col1d", KC, lambda: (x, np.zeros((C * k, ow), np.float32), k, stride, pad, dil),
                [1])[0]
    # adjoint: <im2col(x), c> == <x, col2im(c)>
    c = _r(C * k, ow, seed=1)
    dx = _both("col2im1d", KC, lambda: (c, np.full((C, W), 5, np.float32), k, stride, pad, dil),
               [1])[0]
    assert math.isclose(float((col * c).sum()), float((x * dx).sum()), rel_tol=1e-5)


def test_positional_encoding_table_and_alias():
    x = _r(2, 5, 6)
    y = _both("pe_add", KP, lambda: (x, np.zeros_like(x)), [1])[0]
    # hand values: t=1: d=0 sin(1), d=1 cos(1), d=2 sin(1/10000^(2/6))
    want = [math.sin(1), math.cos(1), math.sin(1 / 10000 ** (2 / 6))]
    np.testing.assert_allclose(y[0, 1, :3] - x[0, 1, :3], want, rtol=1e-6)
    z = x.copy()
    KP.pe_add_numba(z, z)
    np.testing.assert_allclose(z, y, **TOL)


def test_l2_add():
    g, w = _r(10), _r(10, seed=1)
    _both("l2_add", KR, lambda: (g.copy(), w, 0.005), [0])
