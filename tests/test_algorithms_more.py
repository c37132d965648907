"""APFL, pFedMe and Per-FedAvg (device_runtime.device.rules_more) on a small MLP: each
update checked against an independent float64 numpy implementation of the model and of
the paper's formula, and each algorithm's behaviour on a small federation (the server's
weighted mean done here by hand, no Flower)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device_runtime.device import (
    DeviceConfig,
    DeviceData,
    DeviceState,
    evaluate_device,
    initial_weights,
    matches,
    run_device,
)
from device_runtime.device.evaluation import evaluate
from device_runtime.device.gradients import Gradients
from device_runtime.device.rules_more import meta_gradient, mix
from device_runtime.device.trainers import inference_model
from device_runtime.errors import ConfigError

MODEL = json.dumps([
    {"type": "input", "name": "in", "input_shape": "12"},
    {"type": "fully_connected", "name": "fc1", "unit": 8, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 3},
])
KEYS = ("fc1:weight", "fc1:bias", "fc2:weight", "fc2:bias")
PROTOS = np.random.default_rng(100).normal(0, 1.0, (3, 12))


def make_data(seed: int, probs: list[float], n: int = 60, noise: float = 2.0,
              perm: tuple[int, ...] = (0, 1, 2)) -> DeviceData:
    """Class prototypes shared by all devices, the device's own label distribution and
    (``perm``) its own naming of the classes; 60% train, 40% test."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, n, p=probs)
    x = (PROTOS[y] + rng.normal(0, noise, (n, 12))).astype(np.float32)
    y = np.asarray(perm)[y].astype(np.int64)
    cut = int(n * 0.6)
    return DeviceData(x[:cut], y[:cut], x[cut:], y[cut:])


def train_split(d: DeviceData) -> DeviceData:
    return DeviceData(d.x_train, d.y_train, d.x_train, d.y_train)


def shared_of(cfg: dict) -> dict[str, np.ndarray]:
    pats = [p for p in str(cfg.get("personal", "")).split(",") if p]
    return {k: v.copy() for k, v in initial_weights(cfg["model"], 0).items()
            if not matches(k, pats)}


def federate(states: list[DeviceState], cfg: dict, rounds: int
             ) -> tuple[dict[str, np.ndarray], list[DeviceState]]:
    """``rounds`` rounds of every device, the shared part averaged by example count."""
    shared = shared_of(cfg)
    for r in range(1, rounds + 1):
        outs, ns = [], []
        for i, st in enumerate(states):
            out, m, states[i] = run_device(st, shared, dict(cfg, **{"server-round": r}))
            outs.append(out)
            ns.append(m["num-examples"])
        frac = np.asarray(ns) / sum(ns)
        shared = {k: sum(f * o[k].astype(np.float64) for f, o in zip(frac, outs)
                         ).astype(np.float32) for k in shared}
    return shared, states


# ---------------------------------------------------------------------------- reference
def ref_grad(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
             shift: np.ndarray | None = None) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy of fc1-relu-fc2 (logits + ``shift``) and its gradient, float64."""
    w1, b1, w2, b2 = (np.asarray(w[k], np.float64) for k in KEYS)
    a = x.astype(np.float64) @ w1 + b1
    h = np.maximum(a, 0)
    z = h @ w2 + b2 + (0 if shift is None else shift)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(y)
    loss = float(-np.mean(np.log(p[np.arange(n), y])))
    d = p.copy()
    d[np.arange(n), y] -= 1
    d /= n
    dh = (d @ w2.T) * (a > 0)
    return loss, {"fc1:weight": x.T.astype(np.float64) @ dh, "fc1:bias": dh.sum(0),
                  "fc2:weight": h.T @ d, "fc2:bias": d.sum(0)}


def ref_loss(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return ref_grad(w, x, y)[0]


def _cfg(**kw: object) -> dict:
    cfg = {"model": MODEL, "lr": 0.1, "batch-size": 8, "local-epochs": 1, "server-round": 1}
    cfg.update(kw)
    return cfg


def _close(a: dict, b: dict, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    for k in b:
        np.testing.assert_allclose(np.asarray(a[k], np.float64), b[k], rtol=rtol, atol=atol,
                                   err_msg=k)


def test_gradients_are_the_models_own_and_leave_the_weights_alone():
    d = make_data(0, [1 / 3] * 3)
    state = DeviceState(0, d)
    grads = Gradients(DeviceConfig.from_mapping(_cfg(**{"weight-decay": 0.01})), state, 12, ())
    w = initial_weights(MODEL, 0)
    idx = np.arange(5, 17, dtype=np.int64)
    loss, g = grads(w, idx)
    want_loss, want = ref_grad(w, d.x_train[idx], d.y_train[idx])
    assert loss == pytest.approx(want_loss, rel=1e-5)
    _close(g, {k: want[k] + 0.01 * w[k] for k in KEYS})  # SGD's L2 weight decay included
    _close(grads.model.get_weights(), w, rtol=0, atol=0)  # no update was applied
    with pytest.raises(ConfigError, match="optimizer = sgd and momentum = 0"):
        Gradients(DeviceConfig.from_mapping(_cfg(optimizer="adam", **{"local-update": "apfl"})),
                  state, 12, ())


# ---------------------------------------------------------------------------- APFL
def test_apfl_one_step_is_the_papers_update():
    # a full batch (batch-size = the train split) and one step, from a kept v != w
    d = make_data(1, [0.5, 0.3, 0.2])
    w0 = initial_weights(MODEL, 0)
    rng = np.random.default_rng(3)
    v0 = {k: (a + rng.normal(0, 0.3, a.shape)).astype(np.float32) for k, a in w0.items()}
    alpha0 = 0.4
    arrays = {"apfl/alpha": np.asarray([alpha0]), **{"apfl/v/" + k: a for k, a in v0.items()}}
    cfg = _cfg(**{"local-update": "apfl", "local-steps": 1, "batch-size": 36})
    out, metrics, new = run_device(DeviceState(0, d, arrays=arrays), dict(w0), cfg)
    # reference: w1 = w0 - lr g(w0); v1 = v0 - lr a g(vbar); a1 = a - lr <v0 - w0, g(vbar)>
    x, y, lr = d.x_train, d.y_train, 0.1
    vbar = {k: alpha0 * v0[k].astype(np.float64) + (1 - alpha0) * w0[k] for k in KEYS}
    _, gw = ref_grad(w0, x, y)
    loss_m, gm = ref_grad(vbar, x, y)
    _close(out, {k: w0[k] - lr * gw[k] for k in KEYS})
    _close({k: new.arrays["apfl/v/" + k] for k in KEYS},
           {k: v0[k] - lr * alpha0 * gm[k] for k in KEYS})
    step = sum(float(np.sum((v0[k].astype(np.float64) - w0[k]) * gm[k])) for k in KEYS)
    assert float(new.arrays["apfl/alpha"][0]) == pytest.approx(alpha0 - lr * step, rel=1e-4)
    assert metrics["train-loss"] == pytest.approx(loss_m, rel=1e-5)


def test_apfl_mix_beats_both_parts_on_a_skewed_device_and_alpha_grows_there():
    # three devices with the common task, one with a skewed label distribution that also
    # names classes 1 and 2 the other way round: the global model serves it badly
    states = [DeviceState(i, make_data(i, [1 / 3] * 3)) for i in range(3)]
    states.append(DeviceState(3, make_data(3, [0.4, 0.3, 0.3], perm=(0, 2, 1))))
    cfg = _cfg(**{"local-update": "apfl", "apfl-alpha": 0.25})
    shared, states = federate(states, cfg, 8)
    alphas = [float(s.arrays["apfl/alpha"][0]) for s in states]
    # alpha moves the right way: up on the skewed device, down to 0 where the global fits
    assert alphas[3] > 0.25 and max(alphas[:3]) < 0.05, alphas
    st = states[3]
    v = {k: st.arrays["apfl/v/" + k] for k in shared}
    x, y = st.data.x_train, st.data.y_train
    mixed = mix(alphas[3], v, shared)
    assert ref_loss(mixed, x, y) < min(ref_loss(v, x, y), ref_loss(shared, x, y))
    # and towards where the mix is best on its data (the loss along alpha v + (1-a) w)
    scan = np.linspace(0, 1, 21)
    best = scan[int(np.argmin([ref_loss(mix(a, v, shared), x, y) for a in scan]))]
    assert best > 0.25
    # the device is evaluated with the mix: evaluate_device agrees with the mix's loss
    ev = evaluate_device(st, shared, cfg)
    want = evaluate(inference_model(DeviceConfig.from_mapping(cfg)), mixed, st.data)
    assert ev["loss"] == pytest.approx(want[0]) and ev["accuracy"] == pytest.approx(want[1])


# ---------------------------------------------------------------------------- pFedMe
def test_pfedme_theta_solves_the_moreau_problem_and_w_moves_by_the_papers_update():
    d = make_data(2, [0.6, 0.2, 0.2])
    x, y = d.x_train, d.y_train
    w0 = initial_weights(MODEL, 0)
    lam, lr, plr = 15.0, 0.05, 0.02
    cfg = _cfg(lr=lr, **{"local-update": "pfedme", "local-steps": 1, "batch-size": 36,
                         "pfedme-lambda": lam, "pfedme-k": 300, "pfedme-lr": plr})
    out, _, new = run_device(DeviceState(0, d), dict(w0), cfg)
    theta = {k: new.arrays["pfedme/" + k] for k in KEYS}
    # the gradient of f(theta) + lam/2 ||theta - w0||^2 at theta is ~0 ...
    _, g = ref_grad(theta, x, y)
    moreau = np.concatenate([(g[k] + lam * (theta[k] - w0[k])).ravel() for k in KEYS])
    _, g0 = ref_grad(w0, x, y)
    start = np.concatenate([g0[k].ravel() for k in KEYS])
    assert np.linalg.norm(moreau) < 1e-4 * np.linalg.norm(start)
    # ... theta is the K-step solve a float64 reference does ...
    ref = {k: w0[k].astype(np.float64) for k in KEYS}
    for _ in range(300):
        _, gr = ref_grad(ref, x, y)
        ref = {k: ref[k] - plr * (gr[k] + lam * (ref[k] - w0[k])) for k in KEYS}
    _close(theta, ref, rtol=1e-3, atol=1e-5)
    # ... and the local model moved w1 = w0 - lr * lam * (w0 - theta), sent back as it is
    _close(out, {k: w0[k] - lr * lam * (w0[k] - theta[k].astype(np.float64)) for k in KEYS},
           rtol=1e-5, atol=1e-6)
    # beta: the server's (1 - beta) w + beta mean(w_i), applied to what the device sends
    out2, _, _ = run_device(DeviceState(0, d), dict(w0), dict(cfg, **{"pfedme-beta": 2.0}))
    _close(out2, {k: w0[k] + 2.0 * (out[k].astype(np.float64) - w0[k]) for k in KEYS},
           rtol=1e-5, atol=1e-6)
    # the device is evaluated with theta
    ev = evaluate_device(new, out, cfg)
    want = evaluate(inference_model(DeviceConfig.from_mapping(cfg)), theta, d)
    assert ev["loss"] == pytest.approx(want[0])


def test_pfedme_personal_models_beat_the_global_one_under_label_skew():
    skews = ([0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8])
    states = [DeviceState(i, make_data(i, skews[i % 3])) for i in range(6)]
    cfg = _cfg(lr=0.05, **{"local-update": "pfedme", "pfedme-lambda": 5.0, "pfedme-k": 5})
    shared, states = federate(states, cfg, 6)
    for st in states:
        theta = {k: st.arrays["pfedme/" + k] for k in shared}
        assert ref_loss(theta, st.data.x_test, st.data.y_test) < \
            ref_loss(shared, st.data.x_test, st.data.y_test)


# ---------------------------------------------------------------------------- Per-FedAvg
def test_perfedavg_meta_gradient_matches_finite_differences():
    # with one batch for D, D', D'' the meta-objective is F(w) = f(w - alpha grad f(w))
    d = make_data(4, [0.5, 0.25, 0.25])
    x, y = d.x_train, d.y_train
    alpha = 0.3
    cfg = DeviceConfig.from_mapping(_cfg(**{"local-update": "perfedavg"}))
    grads = Gradients(cfg, DeviceState(0, d), 36, ())
    rng = np.random.default_rng(7)
    w = {k: (a + rng.normal(0, 0.2, a.shape)).astype(np.float32)
         for k, a in initial_weights(MODEL, 0).items()}
    idx = np.arange(36, dtype=np.int64)

    def big_f(v: dict[str, np.ndarray]) -> float:
        _, g = ref_grad(v, x, y)
        return ref_loss({k: v[k] - alpha * g[k] for k in KEYS}, x, y)

    _, hf = meta_gradient(grads, w, idx, idx, idx, alpha, 1e-3)
    _, fo = meta_gradient(grads, w, idx, idx, None, alpha, 1e-3)
    err_hf, err_fo = [], []
    for _ in range(4):
        u = {k: rng.normal(0, 1, a.shape) for k, a in w.items()}
        eps = 1e-4
        fd = (big_f({k: w[k] + eps * u[k] for k in KEYS})
              - big_f({k: w[k] - eps * u[k] for k in KEYS})) / (2 * eps)
        err_hf.append(abs(sum(float(np.sum(hf[k] * u[k])) for k in KEYS) - fd) / abs(fd))
        err_fo.append(abs(sum(float(np.sum(fo[k] * u[k])) for k in KEYS) - fd) / abs(fd))
    assert max(err_hf) < 1e-2, err_hf  # the Hessian-free version is the true gradient
    assert np.mean(err_fo) > 5 * np.mean(err_hf), (err_fo, err_hf)  # first order is not


def test_perfedavg_one_step_adapted_model_beats_the_global_one_on_its_data():
    skews = ([0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8])
    states = [DeviceState(i, make_data(i, skews[i % 3])) for i in range(6)]
    cfg = _cfg(lr=0.2, **{"local-update": "perfedavg", "perfedavg-beta": 0.1})
    shared, states = federate(states, cfg, 6)
    ev = inference_model(DeviceConfig.from_mapping(cfg))
    gains = []
    for st in states:
        adapted = evaluate_device(st, shared, cfg)["loss"]
        plain = evaluate(ev, shared, st.data)[0]
        gains.append(plain - adapted)
    assert min(gains) > 0, gains
    # the adapted model is exactly one SGD step of lr on one batch of the train split
    st = states[0]
    grads = Gradients(DeviceConfig.from_mapping(cfg), st, 8, ())
    idx = next(grads.batches("adapt"))
    _, g = ref_grad(shared, st.data.x_train[idx], st.data.y_train[idx])
    one = {k: (shared[k] - 0.2 * g[k]).astype(np.float32) for k in KEYS}
    assert evaluate_device(st, shared, cfg)["loss"] == pytest.approx(
        evaluate(ev, one, st.data)[0], rel=1e-5)
