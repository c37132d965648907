"""The device program (device_runtime.device): personal parts stay, algorithms do what
their papers say, RAM caps are reported. No Flower needed."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import numpy as np
import pytest

from device_runtime import Model
from device_runtime.device import (
    DeviceData,
    DeviceSettings,
    DeviceState,
    ProxOptimizer,
    evaluate_device,
    initial_weights,
    load_state,
    matches,
    parse_settings,
    run_device,
    save_state,
    state_arrays,
    state_from_arrays,
)
from device_runtime.errors import ConfigError
from device_runtime.optimizers import SGD

MODEL = json.dumps([
    {"type": "input", "name": "in", "input_shape": "12"},
    {"type": "fully_connected", "name": "fc1", "unit": 8, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 3},
])


def _data(seed: int = 0, n: int = 48) -> DeviceData:
    rng = np.random.default_rng(seed)
    protos = rng.normal(0, 2, (3, 12))
    y = rng.integers(0, 3, n)
    x = (protos[y] + rng.normal(0, 1, (n, 12))).astype(np.float32)
    return DeviceData(x[:36], y[:36], x[36:], y[36:])


def _state(device: int = 0, **settings: object) -> DeviceState:
    return DeviceState(device, _data(device), DeviceSettings(**settings))  # type: ignore[arg-type]


def _cfg(**kw: object) -> dict:
    cfg = {"model": MODEL, "lr": 0.1, "batch-size": 8, "local-epochs": 1, "server-round": 1}
    cfg.update(kw)
    return cfg


def _shared(cfg: dict) -> dict[str, np.ndarray]:
    init = initial_weights(MODEL, 0)
    pats = [p for p in str(cfg.get("personal", "")).split(",") if p]
    return {k: v.copy() for k, v in init.items() if not matches(k, pats)}


def test_prox_optimizer_adds_mu_times_distance_to_the_anchor():
    # Prepare: w = [1, 2, 3], g = 0.5, anchor = 0, mu = 0.1, lr = 0.1
    opt = ProxOptimizer(SGD(lr=0.1))
    opt.init_state([("p", 3)])
    opt.mu, opt.anchor = 0.1, {"p": np.zeros(3, np.float32)}
    w = np.array([1.0, 2.0, 3.0], np.float32)
    # Execute: the last two elements as one block (start=1), then the first
    opt.update("p", w[1:], np.full(2, 0.5, np.float32), start=1)
    opt.update("p", w[:1], np.full(1, 0.5, np.float32), start=0)
    # Assert: w - lr * (g + mu * (w - 0)) worked out by hand
    np.testing.assert_allclose(w, [1 - 0.1 * (0.5 + 0.1), 2 - 0.1 * (0.5 + 0.2),
                                   3 - 0.1 * (0.5 + 0.3)], rtol=1e-6)


def test_fedper_returns_only_shared_weights_and_keeps_the_head():
    cfg = _cfg(personal="fc2")
    shared = _shared(cfg)
    out, metrics, new = run_device(_state(), shared, cfg)
    assert sorted(out) == ["fc1:bias", "fc1:weight"]
    assert sorted(new.arrays) == ["p/fc2:bias", "p/fc2:weight"]
    assert not np.allclose(out["fc1:weight"], shared["fc1:weight"])  # it trained
    assert not np.allclose(new.arrays["p/fc2:weight"], initial_weights(MODEL, 0)["fc2:weight"])
    assert metrics["trained"] == 1 and metrics["steps"] == 5  # 36 = 4 x 8 + 4
    assert metrics["num-examples"] == 36
    assert metrics["peak-rss"] >= metrics["baseline-rss"] > 0
    assert 0 <= metrics["accuracy-before"] <= 1 and 0 <= metrics["accuracy-after"] <= 1
    # the next round starts from the kept head, not from the initial one
    _, m2, _ = run_device(new, out, dict(cfg, **{"server-round": 2}))
    assert m2["accuracy-before"] == pytest.approx(metrics["accuracy-after"])


def test_local_only_shares_nothing():
    cfg = _cfg(personal="*")
    out, metrics, new = run_device(_state(), {}, cfg)
    assert out == {} and metrics["trained"] == 1
    assert sorted(new.arrays) == ["p/fc1:bias", "p/fc1:weight", "p/fc2:bias", "p/fc2:weight"]


def test_fedrep_head_phase_leaves_the_body_unchanged():
    # head-epochs=1 and no body epochs: the shared body must come back as it went out
    cfg = _cfg(personal="fc2", **{"head-epochs": 1, "local-epochs": 0})
    shared = _shared(cfg)
    out, metrics, new = run_device(_state(), shared, cfg)
    for k in shared:
        np.testing.assert_array_equal(out[k], shared[k])
    assert not np.allclose(new.arrays["p/fc2:weight"], initial_weights(MODEL, 0)["fc2:weight"])
    assert metrics["steps"] == 5  # 36 = 4 x 8 + 4


def test_ditto_keeps_a_personal_model_pulled_to_the_global_one():
    shared = _shared(_cfg())
    far = run_device(_state(), shared, _cfg(**{"ditto-lambda": 0.01}))
    near = run_device(_state(), shared, _cfg(**{"ditto-lambda": 50.0, "lr": 0.01}))
    for out, metrics, new in (far, near):
        assert sorted(out) == sorted(shared)  # the global model goes back...
        assert {k[2:] for k in new.arrays} == set(shared)  # ...v stays
        assert all(k.startswith("v/") for k in new.arrays)

    def dist(res: tuple) -> float:
        return sum(float(np.sum((res[2].arrays["v/" + k] - shared[k]) ** 2)) for k in shared)
    assert dist(near) < dist(far)


def test_fedrep_and_ditto_keys_together_are_refused_unless_local_update_names_one():
    both = {"head-epochs": 1, "ditto-lambda": 0.1}
    with pytest.raises(ConfigError, match="local-update to fedrep or ditto"):
        run_device(_state(), _shared(_cfg(personal="fc2")), _cfg(personal="fc2", **both))
    # named explicitly, the rule runs: Ditto keeps a personal model v, FedRep does not
    cfg = _cfg(**both, **{"local-update": "ditto"})
    _, _, new = run_device(_state(), _shared(cfg), cfg)
    assert new.arrays and all(k.startswith("v/") for k in new.arrays)
    cfg = _cfg(personal="fc2", **both, **{"local-update": "fedrep"})
    _, _, new = run_device(_state(), _shared(cfg), cfg)
    assert not any(k.startswith("v/") for k in new.arrays)


def test_fedprox_mu_shrinks_the_update():
    shared = _shared(_cfg())
    free, _, _ = run_device(_state(), shared, _cfg())
    prox, _, _ = run_device(_state(), shared, _cfg(**{"proximal-mu": 5.0}))

    def step(out: dict) -> float:
        return sum(float(np.sum((out[k] - shared[k]) ** 2)) for k in shared)
    assert step(prox) < step(free)


def test_same_inputs_same_outputs_and_round_changes_the_shuffle():
    shared = _shared(_cfg())
    a, _, _ = run_device(_state(), shared, _cfg())
    b, _, _ = run_device(_state(), shared, _cfg())
    c, _, _ = run_device(_state(), shared, _cfg(**{"server-round": 2}))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_wrong_shared_keys_name_the_problem():
    with pytest.raises(ConfigError, match="fc2:weight"):
        run_device(_state(), _shared(_cfg()), _cfg(personal="fc2"))


def test_finetune_evaluation_does_not_change_the_state():
    st = _state()
    shared = _shared(_cfg())
    plain = evaluate_device(st, shared, _cfg())
    tuned = evaluate_device(st, shared, _cfg(**{"finetune-epochs": 3}))
    assert st.arrays == {}
    assert plain["num-examples"] == tuned["num-examples"] == 12
    assert tuned["loss"] < plain["loss"]


def test_a_cap_below_the_process_size_is_reported_not_hidden():
    out, metrics, new = run_device(_state(ram_cap=8 << 20), _shared(_cfg()), _cfg())
    assert out == {}
    assert metrics["trained"] == 0 and metrics["cap-exceeded"] == 1
    assert metrics["needed-bytes"] > metrics["ram-cap"] == 8 << 20
    assert new.arrays == {}


@pytest.mark.skipif("ram_cap" not in inspect.signature(Model.compile).parameters,
                    reason="needs the runtime's RAM caps (Model.compile(ram_cap=...))")
def test_a_generous_cap_trains_and_reports_its_peak():
    from device_runtime import rss
    cap = rss.current_rss() + (256 << 20)
    out, metrics, _ = run_device(_state(ram_cap=cap), _shared(_cfg()), _cfg())
    assert metrics["trained"] == 1 and metrics["cap-exceeded"] == 0
    assert 0 < metrics["peak-rss"] <= cap and metrics["micro-batch"] >= 1


def test_settings_from_node_config():
    s = parse_settings({"ram-cap": "256MiB", "batch-size": 4, "fallbacks": "batch:2; swap",
                        "freeze": "fc1"})
    assert s.ram_cap == 256 << 20 and s.batch_size == 4 and s.freeze == "fc1"
    assert s.fallbacks == ("batch:2", "swap")
    assert parse_settings({"ram-cap": "0"}).ram_cap is None  # no cap, as documented
    with pytest.raises(ConfigError, match="less than one byte"):
        parse_settings({"ram-cap": "0.4B"})  # was: silently uncapped


def test_importing_device_runtime_never_imports_flower():
    code = ("import sys, device_runtime, device_runtime.device, device_runtime.flower_client\n"
            "assert not [m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')], "
            "sorted(m for m in sys.modules if m.startswith('flwr'))[:5]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_a_frozen_backbone_sends_it_back_unchanged():
    # a small device may train only the head (settings.freeze): the body goes back as it came
    shared = _shared(_cfg())
    out, metrics, _ = run_device(_state(freeze="fc1"), shared, _cfg())
    np.testing.assert_array_equal(out["fc1:weight"], shared["fc1:weight"])
    assert not np.allclose(out["fc2:weight"], shared["fc2:weight"])
    assert metrics["trained"] == 1


# ---------------------------------------------------------------------------- state files
# The device state's one persistent form: an .npz file (fleet worker) and Flower's
# ArrayRecord (ClientApp) give back the same state, and a device that keeps its optimizer
# state trains the same after a round trip as without one.
SMALL = json.dumps([
    {"type": "input", "name": "in", "input_shape": "6"},
    {"type": "fully_connected", "name": "fc1", "unit": 5, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 3},
])
KEEP = {"model": SMALL, "personal": "fc2", "optimizer": "adam", "lr": 0.01, "batch-size": 4,
       "optimizer-state": "keep", "eval-before": False, "eval-after": False}


def _small_state() -> DeviceState:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    return DeviceState(7, DeviceData(x[:16], y[:16], x[16:], y[16:]))


def _small_shared() -> dict[str, np.ndarray]:
    return {k: v for k, v in initial_weights(SMALL, 0).items() if not k.startswith("fc2")}


def _via_flower(state: DeviceState) -> DeviceState:
    flwr_app = pytest.importorskip("flwr.app")
    record = flwr_app.ArrayRecord({k: flwr_app.Array(np.ascontiguousarray(v))
                                   for k, v in state_arrays(state).items()})
    arrays, meta = state_from_arrays({k: a.numpy() for k, a in record.items()})
    return DeviceState(state.device_id, state.data, state.settings, arrays, meta)


def _via_file(state: DeviceState, path: str) -> DeviceState:
    save_state(state, path)
    arrays, meta = load_state(path)
    return DeviceState(state.device_id, state.data, state.settings, arrays, meta)


@pytest.mark.parametrize("medium", ["file", "flower"])
def test_a_round_trip_keeps_the_state_and_the_training(tmp_path, medium):
    # Prepare: one round that leaves personal weights, Adam's moments and a round counter
    _, _, after1 = run_device(_small_state(), _small_shared(), {**KEEP, "server-round": 1})
    assert {"o/iteration", "p/fc2:weight"} <= set(after1.arrays)
    assert after1.meta == {"rounds": 1.0}
    # Execute
    back = (_via_file(after1, str(tmp_path / "s.npz")) if medium == "file"
            else _via_flower(after1))
    # Assert: the same arrays and counters, and round 2 trains bit for bit the same
    assert back.meta == after1.meta
    assert set(back.arrays) == set(after1.arrays)
    for k, v in after1.arrays.items():
        np.testing.assert_array_equal(np.ravel(back.arrays[k]), np.ravel(v))
    a, _, sa = run_device(after1, _small_shared(), {**KEEP, "server-round": 2})
    b, _, sb = run_device(back, _small_shared(), {**KEEP, "server-round": 2})
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(sa.arrays["p/fc2:weight"], sb.arrays["p/fc2:weight"])
    assert sb.meta == {"rounds": 2.0}


def test_a_device_without_data_or_its_factory_says_so():
    from types import SimpleNamespace

    from device_runtime.flower_client import device_data
    ctx = SimpleNamespace(node_config={"partition-id": 0}, node_id=1, run_id=1,
                          run_config={"data-factory": "not_installed_here.data:partition"})
    with pytest.raises(ConfigError, match="the device has no data: set node_config data-path"):
        device_data(ctx)
    ctx.run_config = {}
    with pytest.raises(ConfigError, match="the device has no data"):
        device_data(ctx)
