"""APFL, pFedMe, Per-FedAvg, FedBABU and FedRoD in the device program: ``accuracy-before``
(and ``loss-before``) measure the device's personalized model as it stands when the round
begins, computed here independently in float64 numpy (tests/refs_more.py), and
``local-update = auto`` picks each rule from the keys its registry row sets."""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.device import DeviceConfig, DeviceState, initial_weights, run_device
from device_runtime.device.registry import resolve
from device_runtime.errors import ConfigError
from experiments.algorithms import ALGORITHMS, device_config, get_algorithm
from tests import refs_more as R
from tests.test_algorithms_more import KEYS, MODEL, _cfg, make_data
from tests.test_algorithms_more_heads import SPECS, _algo_cfg

B = 8


def _two_rounds(cfg: dict, seed: int = 1) -> tuple[DeviceState, dict, dict]:
    """Round 1 of device 0 from the initial weights, then round 2 from a moved global
    model: (the state round 2 starts from, the shared weights it receives, its metrics)."""
    d = make_data(seed, [0.6, 0.3, 0.1], n=50)
    init = initial_weights(cfg["model"], 0)
    shared = {k: a for k, a in init.items() if not k.startswith("fc2_p")
              and not (cfg.get("personal") == "fc2" and k.startswith("fc2:"))}
    out, _, st = run_device(DeviceState(0, d), dict(shared), dict(cfg, **{"server-round": 1}))
    rng = np.random.default_rng(seed)
    moved = {k: (a + rng.normal(0, 0.05, a.shape)).astype(np.float32) for k, a in out.items()}
    _, m, _ = run_device(st, moved, dict(cfg, **{"server-round": 2}))
    return st, moved, m


def _check(m: dict, want: tuple[float, float], received: tuple[float, float]) -> None:
    assert m["loss-before"] == pytest.approx(want[0], rel=1e-4)
    assert m["accuracy-before"] == pytest.approx(want[1], abs=1e-9)
    # the personalized model is not the received one: measuring that would fail this test
    assert abs(received[0] - want[0]) > 1e-3


def _received(st: DeviceState, shared: dict, model: str) -> dict:
    init = initial_weights(model, 0)
    return {**init, **{k[2:]: a for k, a in st.arrays.items() if k.startswith("p/")}, **shared}


def test_apfl_before_is_the_mix_of_the_kept_v_and_the_received_global():
    cfg = _cfg(**{"local-update": "apfl", "batch-size": B})
    st, shared, m = _two_rounds(cfg)
    alpha = float(st.arrays["apfl/alpha"][0])
    v = {k: st.arrays["apfl/v/" + k] for k in KEYS}
    x, y = st.data.x_test, st.data.y_test
    _check(m, R.evaluate(R.mix(alpha, v, shared), x, y), R.evaluate(shared, x, y))


def test_pfedme_before_is_the_kept_theta():
    cfg = _cfg(lr=0.05, **{"local-update": "pfedme", "batch-size": B, "pfedme-lambda": 5.0,
                           "pfedme-k": 3})
    st, shared, m = _two_rounds(cfg, seed=2)
    theta = {k: st.arrays["pfedme/" + k] for k in KEYS}
    x, y = st.data.x_test, st.data.y_test
    _check(m, R.evaluate(theta, x, y), R.evaluate(shared, x, y))


def test_perfedavg_before_is_the_received_model_after_one_step_on_this_rounds_batch():
    cfg = _cfg(lr=0.2, **{"local-update": "perfedavg", "batch-size": B})
    st, shared, m = _two_rounds(cfg, seed=3)
    x, y = st.data.x_train, st.data.y_train
    idx = R.batch_order(0, 0, 2, "adapt", len(y), B, 1, False)[0]  # round 2's "adapt" batch
    adapted = R.step(shared, R.grad(shared, x[idx], y[idx])[1], 0.2)
    xt, yt = st.data.x_test, st.data.y_test
    _check(m, R.evaluate(adapted, xt, yt), R.evaluate(shared, xt, yt))


def test_fedbabu_before_is_the_received_body_and_head_fine_tuned():
    cfg = dict(_algo_cfg("fedbabu", **{"batch-size": B}), **{"finetune-epochs": 2})
    st, shared, m = _two_rounds(cfg, seed=4)
    full = _received(st, shared, MODEL)
    x, y = st.data.x_train, st.data.y_train
    # the whole model, plain SGD over two epochs of round 2's "finetune" batches (the last
    # batch of each, 6 samples, kept)
    tuned = R.sgd(full, x, y, R.batch_order(0, 0, 2, "finetune", len(y), B, 2, False), 0.1)
    xt, yt = st.data.x_test, st.data.y_test
    _check(m, R.evaluate(tuned, xt, yt), R.evaluate(full, xt, yt))


def test_fedrod_before_sums_the_generic_and_the_kept_personal_head():
    cfg = _algo_cfg("fedrod", **{"batch-size": B})
    st, shared, m = _two_rounds(cfg, seed=5)
    full = _received(st, shared, cfg["model"])
    assert np.abs(full["fc2_p:weight"]).max() > 0  # the P-head has learnt something
    generic = {**full, "fc2_p:weight": 0 * full["fc2_p:weight"],
               "fc2_p:bias": 0 * full["fc2_p:bias"]}
    x, y = st.data.x_test, st.data.y_test
    _check(m, R.evaluate(full, x, y), R.evaluate(generic, x, y))


# ---------------------------------------------------------------------------- auto
NEW = ("apfl", "pfedme", "perfedavg", "fedbabu", "fedrod")


def _row(name: str) -> dict:
    cfg = {**_cfg(**{"local-steps": 2, "batch-size": B}),
           **device_config(get_algorithm(name), SPECS, ["fc2"])}
    return cfg


@pytest.mark.parametrize("name", sorted(set(ALGORITHMS) - {"fedbn"}))  # (this MLP has no BN)
def test_auto_picks_each_rows_rule_from_the_keys_it_sets(name):
    cfg = _row(name)
    named = cfg.pop("local-update", "plain")
    assert resolve(DeviceConfig.from_mapping(cfg)) == named  # local-update = auto (default)


@pytest.mark.parametrize("name", NEW)
def test_auto_runs_the_same_round_as_the_named_rule(name):
    cfg = _row(name)
    auto = {k: v for k, v in cfg.items() if k != "local-update"}
    d = make_data(7, [0.5, 0.4, 0.1], n=50)
    shared = {k: a for k, a in initial_weights(cfg["model"], 0).items()
              if k in KEYS and not (name == "fedbabu" and k.startswith("fc2"))}
    a, ma, sa = run_device(DeviceState(0, d), dict(shared), cfg)
    b, mb, sb = run_device(DeviceState(0, d), dict(shared), auto)
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert sorted(sa.arrays) == sorted(sb.arrays)
    assert all(np.array_equal(sa.arrays[k], sb.arrays[k]) for k in sa.arrays)
    assert ma["accuracy-before"] == mb["accuracy-before"]


def test_auto_refuses_the_keys_of_two_rules_and_each_single_key_picks_its_rule():
    for keys, rule in (({"apfl-alpha": 0.5}, "apfl"), ({"pfedme-k": 2}, "pfedme"),
                       ({"pfedme-lr": 0.01}, "pfedme"), ({"perfedavg-delta": 1e-2}, "perfedavg"),
                       ({"perfedavg-beta": 0.1}, "perfedavg"), ({"fixed-head": True}, "fedbabu"),
                       ({}, "plain")):
        assert resolve(DeviceConfig.from_mapping({"model": MODEL, **keys})) == rule
    with pytest.raises(ConfigError, match=r"apfl-alpha \(apfl\) and a pfedme-\* key "
                                          r"\(pfedme\): set local-update to apfl or pfedme"):
        resolve(DeviceConfig.from_mapping({"apfl-alpha": 0.5, "pfedme-lambda": 2.0}))
    with pytest.raises(ConfigError, match="fedrep or fedbabu"):
        resolve(DeviceConfig.from_mapping({"head-epochs": 1, "fixed-head": True}))
    # a named rule is taken as named, whatever else is set
    assert resolve(DeviceConfig.from_mapping({"local-update": "plain", "apfl-alpha": 1})) == \
        "plain"
    # unset, a key takes the value its rule used as its default before (and the docs give)
    c = DeviceConfig()
    assert (c.value("apfl_alpha"), c.value("pfedme_lambda"), c.value("pfedme_k"),
            c.value("pfedme_beta"), c.value("perfedavg_variant"),
            c.value("perfedavg_delta")) == (0.25, 15.0, 5, 1.0, "hf", 1e-3)
