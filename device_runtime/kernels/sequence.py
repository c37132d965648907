"""One time step of the LSTM, GRU and simple RNN cells, forward and backward.

The layers do the matrix products with BLAS (all input projections at once, one
hidden projection per step); these kernels do the elementwise part of a step on
``(B, ...)`` rows. Gate orders: LSTM ``i, f, g, o`` (PyTorch's and NNTrainer's),
GRU ``z, r, n`` (NNTrainer's ``zrg``; PyTorch orders ``r, z, n``), with PyTorch's
``reset_after`` form ``n = act(x W_in + b_in + r * (h W_hn + b_hn))``.

Activation codes: 0 tanh, 1 sigmoid, 2 relu. Derivatives are taken from the
activation's output, so the saved gates are the activated values. Arithmetic is in
float64 per element, rounded once to float32 on store.
"""

from __future__ import annotations

import math

import numpy as np

from . import lean_seq
from ._jit import njit, pick

Arr = np.ndarray  # float32 unless stated
ACT_CODES = {"tanh": 0, "sigmoid": 1, "relu": 2}


@njit
def _act(v: float, code: int) -> float:
    if code == 0:
        return math.tanh(v)
    if code == 1:
        e = math.exp(-abs(v))  # exp of a non-positive number: no overflow
        r = 1.0 / (1.0 + e)
        return r if v >= 0.0 else e * r
    return v if v > 0.0 else 0.0


@njit
def _dact(y: float, code: int) -> float:
    """Derivative of the activation at the point whose output is ``y``."""
    if code == 0:
        return 1.0 - y * y
    if code == 1:
        return y * (1.0 - y)
    return 1.0 if y > 0.0 else 0.0


def _act_np(v: np.ndarray, code: int) -> np.ndarray:
    if code == 0:
        return np.tanh(v)
    if code == 1:
        e = np.exp(-np.abs(v))
        return np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return np.maximum(v, 0.0)


def _dact_np(y: np.ndarray, code: int) -> np.ndarray:
    if code == 0:
        return 1.0 - y * y
    if code == 1:
        return y * (1.0 - y)
    return (y > 0).astype(y.dtype)


def _f(a: Arr) -> np.ndarray:
    return a.astype(np.float64)


# ------------------------------------------------------------------------- LSTM
@njit
def lstm_fwd_step_numba(pre: Arr, gh: Arr, c_prev: Arr, gates: Arr, c: Arr, h: Arr,
                        act: int, ract: int) -> None:
    """pre (B, 4U) input projection (+biases), gh (B, 4U) hidden projection ->
    gates (B, 4U) activated i, f, g, o; c, h (B, U). ``gates`` may alias ``pre``."""
    B, U = c.shape
    for b in range(B):
        for u in range(U):
            i = _act(np.float64(pre[b, u]) + gh[b, u], ract)
            f = _act(np.float64(pre[b, U + u]) + gh[b, U + u], ract)
            g = _act(np.float64(pre[b, 2 * U + u]) + gh[b, 2 * U + u], act)
            o = _act(np.float64(pre[b, 3 * U + u]) + gh[b, 3 * U + u], ract)
            cc = f * np.float64(c_prev[b, u]) + i * g
            gates[b, u] = i
            gates[b, U + u] = f
            gates[b, 2 * U + u] = g
            gates[b, 3 * U + u] = o
            c[b, u] = cc
            h[b, u] = o * _act(cc, act)


def lstm_fwd_step_numpy(pre: Arr, gh: Arr, c_prev: Arr, gates: Arr, c: Arr, h: Arr,
                        act: int, ract: int) -> None:
    U = c.shape[1]
    p = _f(pre) + _f(gh)
    i, f = _act_np(p[:, :U], ract), _act_np(p[:, U:2 * U], ract)
    g, o = _act_np(p[:, 2 * U:3 * U], act), _act_np(p[:, 3 * U:], ract)
    cc = f * _f(c_prev) + i * g
    gates[...] = np.concatenate([i, f, g, o], axis=1)
    c[...] = cc
    h[...] = o * _act_np(cc, act)


@njit
def lstm_bwd_step_numba(gates: Arr, c: Arr, c_prev: Arr, dh: Arr, dc: Arr, dpre: Arr,
                        act: int, ract: int) -> None:
    """dh (B, U) total derivative of h_t; dc (B, U) in: from step t+1, out: for step t-1;
    dpre (B, 4U) out: derivatives of the gate pre-activations."""
    B, U = c.shape
    for b in range(B):
        for u in range(U):
            i = np.float64(gates[b, u])
            f = np.float64(gates[b, U + u])
            g = np.float64(gates[b, 2 * U + u])
            o = np.float64(gates[b, 3 * U + u])
            tc = _act(np.float64(c[b, u]), act)
            d = np.float64(dh[b, u])
            dcc = dc[b, u] + d * o * _dact(tc, act)
            dpre[b, u] = dcc * g * _dact(i, ract)
            dpre[b, U + u] = dcc * c_prev[b, u] * _dact(f, ract)
            dpre[b, 2 * U + u] = dcc * i * _dact(g, act)
            dpre[b, 3 * U + u] = d * tc * _dact(o, ract)
            dc[b, u] = dcc * f


def lstm_bwd_step_numpy(gates: Arr, c: Arr, c_prev: Arr, dh: Arr, dc: Arr, dpre: Arr,
                        act: int, ract: int) -> None:
    U = c.shape[1]
    gt = _f(gates)
    i, f, g, o = gt[:, :U], gt[:, U:2 * U], gt[:, 2 * U:3 * U], gt[:, 3 * U:]
    tc = _act_np(_f(c), act)
    d = _f(dh)
    dcc = _f(dc) + d * o * _dact_np(tc, act)
    dpre[...] = np.concatenate([dcc * g * _dact_np(i, ract),
                                dcc * _f(c_prev) * _dact_np(f, ract),
                                dcc * i * _dact_np(g, act),
                                d * tc * _dact_np(o, ract)], axis=1)
    dc[...] = dcc * f


# -------------------------------------------------------------------------- GRU
@njit
def gru_fwd_step_numba(gates: Arr, gh: Arr, h_prev: Arr, h: Arr, act: int, ract: int) -> None:
    """gates (B, 4U): in columns :3U the input projection (+b_ih); out z, r, n and, in
    3U:, the hidden projection of n (h W_hn + b_hn) that backward needs. gh (B, 3U)."""
    B, U = h.shape
    for b in range(B):
        for u in range(U):
            z = _act(np.float64(gates[b, u]) + gh[b, u], ract)
            r = _act(np.float64(gates[b, U + u]) + gh[b, U + u], ract)
            ghn = np.float64(gh[b, 2 * U + u])
            n = _act(np.float64(gates[b, 2 * U + u]) + r * ghn, act)
            gates[b, u] = z
            gates[b, U + u] = r
            gates[b, 2 * U + u] = n
            gates[b, 3 * U + u] = ghn
            h[b, u] = (1.0 - z) * n + z * np.float64(h_prev[b, u])


def gru_fwd_step_numpy(gates: Arr, gh: Arr, h_prev: Arr, h: Arr, act: int, ract: int) -> None:
    U = h.shape[1]
    gx, g = _f(gates[:, :3 * U]), _f(gh)
    z = _act_np(gx[:, :U] + g[:, :U], ract)
    r = _act_np(gx[:, U:2 * U] + g[:, U:2 * U], ract)
    ghn = g[:, 2 * U:]
    n = _act_np(gx[:, 2 * U:] + r * ghn, act)
    gates[...] = np.concatenate([z, r, n, ghn], axis=1)
    h[...] = (1.0 - z) * n + z * _f(h_prev)


@njit
def gru_bwd_step_numba(gates: Arr, h_prev: Arr, dh: Arr, dgx: Arr, dgh: Arr,
                       act: int, ract: int) -> None:
    """dh (B, U) in: total derivative of h_t; out: its direct part for h_{t-1} (dh * z).
    dgx, dgh (B, 3U) out: derivatives of the input and hidden projections."""
    B, U = dh.shape
    for b in range(B):
        for u in range(U):
            z = np.float64(gates[b, u])
            r = np.float64(gates[b, U + u])
            n = np.float64(gates[b, 2 * U + u])
            ghn = np.float64(gates[b, 3 * U + u])
            d = np.float64(dh[b, u])
            dn = d * (1.0 - z) * _dact(n, act)
            dz = d * (h_prev[b, u] - n) * _dact(z, ract)
            dr = dn * ghn * _dact(r, ract)
            dgx[b, u] = dz
            dgx[b, U + u] = dr
            dgx[b, 2 * U + u] = dn
            dgh[b, u] = dz
            dgh[b, U + u] = dr
            dgh[b, 2 * U + u] = dn * r
            dh[b, u] = d * z


def gru_bwd_step_numpy(gates: Arr, h_prev: Arr, dh: Arr, dgx: Arr, dgh: Arr,
                       act: int, ract: int) -> None:
    U = dh.shape[1]
    gt = _f(gates)
    z, r, n, ghn = gt[:, :U], gt[:, U:2 * U], gt[:, 2 * U:3 * U], gt[:, 3 * U:]
    d = _f(dh)
    dn = d * (1.0 - z) * _dact_np(n, act)
    dz = d * (_f(h_prev) - n) * _dact_np(z, ract)
    dr = dn * ghn * _dact_np(r, ract)
    dgx[...] = np.concatenate([dz, dr, dn], axis=1)
    dgh[...] = np.concatenate([dz, dr, dn * r], axis=1)
    dh[...] = d * z


# -------------------------------------------------------------------------- RNN
@njit
def rnn_fwd_step_numba(h: Arr, gh: Arr, act: int) -> None:
    """h (B, U) in: input projection (+biases); out: act(h + gh)."""
    B, U = h.shape
    for b in range(B):
        for u in range(U):
            h[b, u] = _act(np.float64(h[b, u]) + gh[b, u], act)


def rnn_fwd_step_numpy(h: Arr, gh: Arr, act: int) -> None:
    h[...] = _act_np(_f(h) + _f(gh), act)


@njit
def rnn_bwd_step_numba(h: Arr, dh: Arr, dpre: Arr, act: int) -> None:
    """dpre (B, U) = dh * act'(.), from the step's output h."""
    B, U = h.shape
    for b in range(B):
        for u in range(U):
            dpre[b, u] = np.float64(dh[b, u]) * _dact(np.float64(h[b, u]), act)


def rnn_bwd_step_numpy(h: Arr, dh: Arr, dpre: Arr, act: int) -> None:
    dpre[...] = _f(dh) * _dact_np(_f(h), act)


lstm_fwd_step = pick(lstm_fwd_step_numba, lean_seq.lstm_fwd_step)
lstm_bwd_step = pick(lstm_bwd_step_numba, lean_seq.lstm_bwd_step)
gru_fwd_step = pick(gru_fwd_step_numba, lean_seq.gru_fwd_step)
gru_bwd_step = pick(gru_bwd_step_numba, lean_seq.gru_bwd_step)
rnn_fwd_step = pick(rnn_fwd_step_numba, lean_seq.rnn_fwd_step)
rnn_bwd_step = pick(rnn_bwd_step_numba, lean_seq.rnn_bwd_step)
