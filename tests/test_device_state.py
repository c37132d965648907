"""The device state's one persistent form: an .npz file (fleet worker) and Flower's
ArrayRecord (ClientApp) give back the same state, and a device that keeps its optimizer
state trains the same after a round trip as without one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device_runtime.device import (
    DeviceData,
    DeviceState,
    initial_weights,
    load_state,
    run_device,
    save_state,
    state_arrays,
    state_from_arrays,
)

MODEL = json.dumps([
    {"type": "input", "name": "in", "input_shape": "6"},
    {"type": "fully_connected", "name": "fc1", "unit": 5, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 3},
])
CFG = {"model": MODEL, "personal": "fc2", "optimizer": "adam", "lr": 0.01, "batch-size": 4,
       "optimizer-state": "keep", "eval-before": False, "eval-after": False}


def _state() -> DeviceState:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 6)).astype(np.float32)
    y = rng.integers(0, 3, 24)
    return DeviceState(7, DeviceData(x[:16], y[:16], x[16:], y[16:]))


def _shared() -> dict[str, np.ndarray]:
    return {k: v for k, v in initial_weights(MODEL, 0).items() if not k.startswith("fc2")}


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
    _, _, after1 = run_device(_state(), _shared(), {**CFG, "server-round": 1})
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
    a, _, sa = run_device(after1, _shared(), {**CFG, "server-round": 2})
    b, _, sb = run_device(back, _shared(), {**CFG, "server-round": 2})
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(sa.arrays["p/fc2:weight"], sb.arrays["p/fc2:weight"])
    assert sb.meta == {"rounds": 2.0}
