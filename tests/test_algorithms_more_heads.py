"""FedBABU and FedRoD (device_runtime.device.rules_more / rules_rod, and the rows of
experiments.algorithms that set them up), checked against float64 numpy formulas, plus a
small ``nnfleet simulate`` run of the five new algorithms."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from device_runtime.device import DeviceConfig, DeviceState, evaluate_device, run_device
from device_runtime.device.gradients import Gradients
from device_runtime.device.rules_rod import ABSENT, generic_gradient, log_prior
from device_runtime.errors import ConfigError
from device_runtime.modelspec import load_model
from experiments.algorithms import device_config, get_algorithm
from experiments.algorithms.registry import two_heads
from tests.configs import mlp, synthetic_images
from tests.test_algorithms_more import (
    KEYS,
    MODEL,
    _cfg,
    _close,
    federate,
    make_data,
    ref_grad,
    shared_of,
)

SPECS = load_model(MODEL, 0)[0].specs


def _algo_cfg(name: str, **kw: object) -> dict:
    return {**_cfg(**kw), **device_config(get_algorithm(name), SPECS, ["fc2"])}


# ---------------------------------------------------------------------------- FedBABU
def test_fedbabu_head_stays_at_its_init_through_rounds_and_changes_only_in_finetuning():
    cfg = _algo_cfg("fedbabu")
    assert cfg["personal"] == "fc2" and cfg["local-update"] == "fedbabu"
    init = load_model(MODEL, 0)[0].get_weights()
    skews = ([0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8])
    states = [DeviceState(i, make_data(i, skews[i])) for i in range(3)]
    shared = shared_of(cfg)
    assert sorted(shared) == ["fc1:bias", "fc1:weight"]  # only the body is aggregated
    for r in range(1, 4):
        shared_before = {k: a.copy() for k, a in shared.items()}
        shared, states = _one_round(states, cfg, shared, r)
        for st in states:  # the head, bit for bit the random init, on every device
            for k in ("fc2:weight", "fc2:bias"):
                assert np.array_equal(st.arrays["p/" + k], init[k])
        assert not np.allclose(shared["fc1:weight"], shared_before["fc1:weight"])  # body moved
    # evaluation fine-tunes a throw-away copy of the whole model: better, state unchanged
    st = states[0]
    tuned = evaluate_device(st, shared, cfg)
    frozen = evaluate_device(st, shared, dict(cfg, **{"finetune-epochs": 0}))
    assert tuned["loss"] < frozen["loss"]
    assert np.array_equal(st.arrays["p/fc2:weight"], init["fc2:weight"])


def _one_round(states: list[DeviceState], cfg: dict, shared: dict, r: int
               ) -> tuple[dict, list[DeviceState]]:
    outs, ns = [], []
    for i, st in enumerate(states):
        out, m, states[i] = run_device(st, shared, dict(cfg, **{"server-round": r}))
        assert sorted(out) == sorted(shared)  # the head is never sent
        outs.append(out)
        ns.append(m["num-examples"])
    frac = np.asarray(ns) / sum(ns)
    return {k: sum(f * o[k].astype(np.float64) for f, o in zip(frac, outs)).astype(np.float32)
            for k in shared}, states


# ---------------------------------------------------------------------------- FedRoD
def _rod_weights(w2p: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """fc1/fc2 (generic head) from the seed, the personal head fc2_p as given (or 0)."""
    cfg = _algo_cfg("fedrod")
    w = load_model(cfg["model"], 0)[0].get_weights()
    if w2p is not None:
        w["fc2_p:weight"] = w2p.astype(np.float32)
        w["fc2_p:bias"] = np.linspace(-0.5, 0.5, 3).astype(np.float32)
    return w


def test_fedrod_model_is_body_generic_head_and_personal_head_summed():
    cfg = _algo_cfg("fedrod")
    assert cfg["personal"] == "fc2_p" and cfg["local-update"] == "fedrod"
    m = load_model(cfg["model"], 0)[0]
    w = _rod_weights(np.random.default_rng(0).normal(0, 1, (8, 3)))
    assert np.all(load_model(cfg["model"], 0)[0].get_weights()["fc2_p:weight"] == 0)
    m.set_weights(w)
    x = make_data(0, [1 / 3] * 3).x_test
    h = np.maximum(x @ w["fc1:weight"] + w["fc1:bias"], 0)
    want = (h @ w["fc2:weight"] + w["fc2:bias"]) + (h @ w["fc2_p:weight"] + w["fc2_p:bias"])
    np.testing.assert_allclose(m.predict(x), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="one fully_connected head"):
        two_heads(list(SPECS), ["fc1", "fc2"])


def test_fedrod_generic_head_takes_the_balanced_softmax_gradient():
    # a device without class 2: its balanced softmax gives class 2 no probability at all
    d = make_data(5, [0.7, 0.3, 0.0])
    counts = np.bincount(d.y_train, minlength=3)
    assert counts[2] == 0
    shift = log_prior(d.y_train, 3)
    np.testing.assert_array_equal(shift, np.float32([np.log(counts[0]), np.log(counts[1]),
                                                     ABSENT]))
    cfg = DeviceConfig.from_mapping(_algo_cfg("fedrod"))
    grads = Gradients(cfg, DeviceState(0, d), 12, ())
    w = _rod_weights(np.random.default_rng(1).normal(0, 1, (8, 3)))  # a P-head that is not 0
    idx = np.arange(3, 15, dtype=np.int64)
    loss, g = generic_gradient(grads, w, idx, "fc2", "fc2_p", shift)
    assert sorted(g) == list(sorted(KEYS))  # body and G-head, never the P-head
    # direct formula: -log(n_y e^{z_y} / sum_c n_c e^{z_c}) of the G-head's logits z
    x, y = d.x_train[idx].astype(np.float64), d.y_train[idx]
    h = np.maximum(x @ w["fc1:weight"] + w["fc1:bias"], 0)
    z = h @ w["fc2:weight"] + w["fc2:bias"]
    num = counts[y] * np.exp(z[np.arange(12), y])
    bsm = float(-np.mean(np.log(num / (np.exp(z) * counts).sum(axis=1))))
    assert loss == pytest.approx(bsm, rel=1e-5)
    p = np.exp(z) * counts / (np.exp(z) * counts).sum(axis=1, keepdims=True)
    assert np.all(p[:, 2] == 0)
    dz = p.copy()
    dz[np.arange(12), y] -= 1
    dz /= 12
    _close(g, {"fc2:bias": dz.sum(0), "fc2:weight": h.T @ dz})
    # and the body's gradient is that of the same loss (the reference with logits + log n)
    _, ref = ref_grad({k: w[k] for k in KEYS}, d.x_train[idx], y,
                      shift=np.log(np.maximum(counts, 1e-300)))
    _close(g, ref)


def test_fedrod_personal_head_learns_on_the_summed_logits_and_is_never_sent():
    d = make_data(6, [0.6, 0.3, 0.1])
    cfg = _algo_cfg("fedrod", **{"local-steps": 1, "batch-size": 36})
    w0 = _rod_weights()
    shared = {k: w0[k] for k in KEYS}
    out, _, new = run_device(DeviceState(0, d), shared, cfg)
    assert sorted(out) == sorted(KEYS)  # body and G-head go back; fc2_p stays
    assert sorted(new.arrays) == ["p/fc2_p:bias", "p/fc2_p:weight"]
    # one step: P-head by CE of z_g + z_p (z_p = 0 at its zero start), the rest by BSM
    x, y, lr = d.x_train.astype(np.float64), d.y_train, 0.1
    h = np.maximum(x @ w0["fc1:weight"] + w0["fc1:bias"], 0)
    z = h @ w0["fc2:weight"] + w0["fc2:bias"]
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(36), y] -= 1
    p /= 36
    np.testing.assert_allclose(new.arrays["p/fc2_p:weight"], -lr * (h.T @ p), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(new.arrays["p/fc2_p:bias"], -lr * p.sum(0), rtol=1e-4, atol=1e-6)
    counts = np.bincount(y, minlength=3)
    _, g = ref_grad(shared, d.x_train, y, shift=np.log(counts))
    _close(out, {k: shared[k] - lr * g[k] for k in KEYS})


def test_fedrod_personal_heads_help_under_label_skew():
    cfg = _algo_cfg("fedrod")
    skews = ([0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8])
    states = [DeviceState(i, make_data(i, skews[i % 3])) for i in range(6)]
    shared, states = federate(states, cfg, 5)
    for st in states:
        personal = evaluate_device(st, shared, cfg)["loss"]
        generic = evaluate_device(DeviceState(st.device_id, st.data), shared, cfg)["loss"]
        assert personal < generic  # the same body and G-head, with and without its P-head


# ---------------------------------------------------------------------------- end to end
SMALL = """
name = "more-algorithms"
seed = 2
rounds = 3
algorithms = ["fedavg", "apfl", "pfedme", "perfedavg", "fedbabu", "fedrod"]
""" + synthetic_images(4, (3, 8, 8), samples=60, noise=6.0) + mlp((3, 8, 8), 32, head=True) + """
[train]
lr = 0.05
batch-size = 8

[server]
fraction-train = 1.0

[fleet]
workers = 1
"""


@pytest.mark.skipif(not importlib.util.find_spec("flwr"), reason="needs flwr (.[flower])")
def test_the_five_algorithms_run_in_nnfleet_simulate(tmp_path):
    from experiments.simulate import main

    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    assert main([str(cfg), "--out", str(out), "--quiet"]) == 0
    algos = json.loads((out / "summary.json").read_text())["algorithms"]
    for name in ("apfl", "pfedme", "perfedavg", "fedbabu", "fedrod"):
        a = algos[name]
        assert a["devices_trained"] == 4 and a["final_accuracy"]["n"] == 4, name
        # two classes per device: every personalized model beats the one global model
        assert a["final_accuracy"]["mean"] > algos["fedavg"]["final_accuracy"]["mean"], name
    for name in ("fedbabu", "fedrod"):  # the head (FedBABU) / P-head (FedRoD) stay home
        final = np.load(os.path.join(out, "weights", f"{name}.npz"))
        assert sorted(final.files) == ["fc1:bias", "fc1:weight"] + (
            ["fc2:bias", "fc2:weight"] if name == "fedrod" else [])


def test_the_rows_give_device_configs_the_device_accepts():
    for name, rule in (("apfl", "apfl"), ("pfedme", "pfedme"), ("perfedavg", "perfedavg"),
                       ("fedbabu", "fedbabu"), ("fedrod", "fedrod")):
        # a [train] optimizer the papers' plain steps cannot use is overruled by the row...
        cfg = {**_cfg(optimizer="adam"), **device_config(get_algorithm(name), SPECS, ["fc2"])}
        dc = DeviceConfig.from_mapping(cfg)
        assert dc.local_update == rule
        if name != "fedbabu":
            assert dc.optimizer == "sgd" and dc.momentum == 0
    # ... and one named for the algorithm itself is refused on the device, in one line
    cfg = dict(_algo_cfg("apfl"), optimizer="adam")
    with pytest.raises(ConfigError, match="set optimizer = sgd"):
        run_device(DeviceState(0, make_data(0, [1 / 3] * 3)), shared_of(cfg), cfg)
    with pytest.raises(ConfigError, match="pfedme-k = 0"):
        DeviceConfig.from_mapping({"pfedme-k": 0})
    with pytest.raises(ConfigError, match="perfedavg-variant"):
        DeviceConfig.from_mapping({"perfedavg-variant": "exact"})
    with pytest.raises(ConfigError, match="addition of a generic head"):  # fedrod, one head
        cfg = _cfg(**{"local-update": "fedrod", "personal": "fc2"})
        run_device(DeviceState(0, make_data(0, [1 / 3] * 3)), shared_of(cfg), cfg)
