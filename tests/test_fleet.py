"""The fleet engine behind Flower's Grid: the same ServerApp and strategies run on it,
personal layers never reach the server, per-device memory and cap failures are reported."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

pytest.importorskip("flwr")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import server  # noqa: E402
from experiments.data import make_fleet_data  # noqa: E402
from experiments.fleet import DeviceProfile, FleetEngine  # noqa: E402
from experiments.fleet.grid import FleetGrid, run_serverapp  # noqa: E402

logging.getLogger("flwr").setLevel(logging.WARNING)

MODEL = json.dumps([
    {"type": "input", "name": "in", "input_shape": "20"},
    {"type": "fully_connected", "name": "fc1", "unit": 16, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 10},
])
SMALL_CAP = 16 << 20  # far below any Python process: device 0 cannot train
N = 8


def _fleet():
    return make_fleet_data("synthetic_fedprox", N, seed=1, dim=20, samples=40)


def _profiles() -> list[DeviceProfile]:
    out = [DeviceProfile(i, None, 1.0, 1.0, 0.0) for i in range(N)]
    out[0].ram_cap = SMALL_CAP
    out[1].availability = 0.0  # never online
    return out


@pytest.fixture(scope="module")
def engine():
    eng = FleetEngine(_fleet(), _profiles(), workers=2)
    yield eng
    eng.close()


def _rc(**kw: object) -> dict:
    rc = {"model": MODEL, "num-rounds": 2, "lr": 0.1, "batch-size": 8, "local-epochs": 1,
          "min-nodes": 2, "seed": 3}
    rc.update(kw)
    return rc


def _run(eng: FleetEngine, key: str, **kw: object) -> tuple[FleetGrid, list[dict], dict]:
    records: list[dict] = []
    grid = FleetGrid(eng, run_key=key, seed=0, on_record=records.append, keep_messages=True)
    ctx = run_serverapp(server.app, grid, _rc(**kw))
    eng.reset(key)
    return grid, records, {k: a.numpy() for k, a in ctx.state["final-arrays"].items()}


def test_personal_layers_never_leave_the_device(engine):
    grid, records, final = _run(engine, "fedper", personal="fc2")
    shared = {"fc1:weight", "fc1:bias"}
    assert set(final) == shared
    train_replies = [m for m in grid.received if m.has_content() and "arrays" in m.content]
    assert len(train_replies) == 2 * (N - 2)  # two rounds; device 0 capped out, 1 offline
    for m in train_replies:
        assert set(m.content["arrays"].keys()) == shared
        assert len(m.content.array_records) == 1
    for m in grid.received:  # evaluation replies: metrics only, no arrays at all
        if m.has_content() and "arrays" not in m.content:
            assert not m.content.array_records
    for m in grid.sent:  # and the server only ever sends the shared part
        if "arrays" in m.content:
            assert set(m.content["arrays"].keys()) == shared
    ok = [r for r in records if r["phase"] == "train" and r["status"] == "ok"]
    assert all(r["accuracy-after"] >= 0 for r in ok)


def test_per_device_peak_rss_and_an_unmeetable_cap(engine):
    grid, records, _ = _run(engine, "caps", **{"num-rounds": 1})
    train = {r["device"]: r for r in records if r["phase"] == "train"}
    # Device 0 was given 16 MiB: reported as unable to train, with the bytes it needed
    assert train[0]["status"] == "cap-exceeded"
    assert train[0]["cap-exceeded"] == 1 and train[0]["needed-bytes"] > SMALL_CAP
    errors = [m for m in grid.received if m.has_error() and m.metadata.message_type == "train"]
    assert len(errors) == 1 and errors[0].metadata.src_node_id == 1
    assert "MemoryCapExceeded" in errors[0].error.reason and "bytes" in errors[0].error.reason
    # It cannot even evaluate: the runtime alone is larger than its cap
    ev = [r for r in records if r["phase"] == "evaluate" and r["device"] == 0]
    assert ev and ev[0]["status"] == "error" and "MemoryCapExceeded" in ev[0]["error"]
    # Device 1 was offline: no reply at all, as from a node that vanished
    assert train[1]["status"] == "offline"
    assert all(m.metadata.src_node_id != 2 for m in grid.received if m.metadata.message_type
               == "train")
    # Everyone else trained and has its own measured peak RSS
    for d in range(2, N):
        assert train[d]["status"] == "ok"
        assert train[d]["peak-rss"] >= train[d]["baseline-rss"] > 50 << 20


@pytest.mark.parametrize("strategy,args", [("fedadam", {"eta": 0.05}), ("fedtrimmedavg", {}),
                                           ("krum", {"num_malicious_nodes": 1}),
                                           ("fedprox", {"proximal_mu": 0.1})])
def test_flower_strategies_run_unchanged(engine, strategy, args):
    grid, records, final = _run(engine, strategy, strategy=strategy,
                                **{"num-rounds": 1, "strategy-args": json.dumps(args)})
    assert set(final) == {"fc1:weight", "fc1:bias", "fc2:weight", "fc2:bias"}
    assert all(np.isfinite(a).all() for a in final.values())
    assert grid.rounds[0]["ok"] == N - 2


def test_fork_isolation_gives_the_same_weights_as_worker_isolation():
    fleet = _fleet()
    finals = []
    for isolation in ("worker", "fork"):
        with FleetEngine(fleet, workers=2, isolation=isolation) as eng:
            grid, records, final = _run(eng, isolation)
            finals.append(final)
            assert all(r["peak-rss"] > 0 for r in records if r["phase"] == "train")
    for k in finals[0]:
        np.testing.assert_allclose(finals[0][k], finals[1][k], rtol=0, atol=1e-6)


def test_a_task_carries_the_settings_a_device_would_parse_from_its_node_config():
    # Prepare: profiles with and without caps, small batches, freezes and fallbacks
    from device_runtime.device import parse_settings
    from experiments.fleet import draw_profiles

    cfg = {"ram-cap": {"dist": "choice", "values": ["96MiB", "300MB", "1GiB"]},
           "small-below": "256MiB", "small-batch-size": 4, "small-freeze": "conv*",
           "fallbacks": " batch:2; swap ;freeze:fc1", "swap": "on"}
    profiles = draw_profiles(30, cfg, seed=1) + [DeviceProfile(30, None, 1.0, 1.0, 0.0)]
    # Execute / Assert: what the engine sends is what a real device reads from node_config
    for p in profiles:
        assert p.device_settings() == parse_settings(p.settings()), p
    assert profiles[-1].device_settings().ram_cap is None
    assert profiles[0].device_settings().fallbacks == ("batch:2", "swap", "freeze:fc1")


def test_a_grid_keeps_no_message_past_its_round(engine):
    # every reply held would grow the engine's memory by a model per device per round
    # (922 MiB after 2 rounds, 1,886 MiB after 6, on a 50 MiB model); a default grid keeps
    # none once the server has pulled it, and gives the same result as one that keeps them
    kept, _, want = _run(engine, "kept")
    grid = FleetGrid(engine, run_key="lean", seed=0)
    ctx = run_serverapp(server.app, grid, _rc())
    engine.reset("lean")
    got = {k: a.numpy() for k, a in ctx.state["final-arrays"].items()}
    assert not grid.sent and not grid.received and not grid._replies and not grid._pending
    assert kept.received and kept.sent  # the test's own grids keep them, when asked
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
