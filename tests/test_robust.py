"""Hostile devices on the real fleet engine: a fifth of the devices send scaled updates
(``[faults]`` kind ``scale``). FedAvg is wrecked by sign-flipped ones; Flower's robust
strategies keep the model useful; and absurdly scaled ones are rejected by the server,
which then aggregates exactly what it would have without those devices."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

pytest.importorskip("flwr")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import server  # noqa: E402
from device_runtime.errors import ConfigError  # noqa: E402
from experiments.data import make_fleet_data  # noqa: E402
from experiments.fleet import FleetEngine  # noqa: E402
from experiments.fleet.faults import FaultPlan  # noqa: E402
from experiments.fleet.grid import FleetGrid, run_serverapp  # noqa: E402

logging.getLogger("flwr").setLevel(logging.WARNING)

N, ATTACKERS = 10, [0, 1]
MODEL = json.dumps([
    {"type": "input", "name": "in", "input_shape": "20"},
    {"type": "fully_connected", "name": "fc1", "unit": 16, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 4},
])


def _attack(scale: float) -> FaultPlan:
    return FaultPlan.from_config({"scale": scale, "at": {"scale": {"devices": ATTACKERS}}})


def _engine(scale: float) -> FleetEngine:
    fleet = make_fleet_data("synthetic_images", N, seed=4, shape=(20,), classes=4,
                            partition="iid", samples_per_device=60, noise=0.5)
    return FleetEngine(fleet, workers=2, faults=_attack(scale))


def _run(eng: FleetEngine, strategy: str, args: dict | None = None, **rc: object
         ) -> tuple[float, dict[str, np.ndarray], list[dict]]:
    """Mean final accuracy over the honest devices, final weights, rejected replies."""
    key = f"{strategy}-run"
    grid = FleetGrid(eng, run_key=key, seed=0)
    cfg = {"model": MODEL, "num-rounds": 8, "lr": 0.1, "batch-size": 8, "local-epochs": 1,
           "min-nodes": 2, "seed": 1, "strategy": strategy,
           "strategy-args": json.dumps(args or {}), **rc}
    ctx = run_serverapp(server.app, grid, cfg)
    final = {k: a.numpy() for k, a in ctx.state["final-arrays"].items()}
    acc = [r["accuracy"] for r in grid.evaluate_all(final, cfg) if r["device"] not in ATTACKERS]
    eng.reset(key)
    return float(np.mean(acc)), final, json.loads(str(ctx.state["server-state"]["rejected"]))


def test_robust_strategies_against_sign_flipped_scaled_updates():
    with _engine(-4.0) as engine:
        # Prepare: the same fleet without the attack, for reference
        plan, engine.faults = engine.faults, FaultPlan()
        clean, _, _ = _run(engine, "fedavg")
        engine.faults = plan

        # Execute: 2 of 10 devices send -4 x their update every round; the server's
        # default screening lets them through (their norms are plausible): the strategy
        # has to cope
        acc = {s: _run(engine, s, a)[0] for s, a in [
            ("fedavg", {}), ("krum", {"num_malicious_nodes": 2}),
            ("fedtrimmedavg", {"beta": 0.2}), ("fedmedian", {})]}

    # Assert (measured: clean FedAvg 0.90; attacked FedAvg 0.10, Krum 0.83, trimmed mean
    # 0.91, median 0.89): FedAvg loses most of its accuracy, the robust ones stay close
    assert acc["fedavg"] < clean - 0.4, (clean, acc)
    for s in ("krum", "fedtrimmedavg", "fedmedian"):
        assert acc[s] > acc["fedavg"] + 0.4 and acc[s] > clean - 0.15, (s, clean, acc)


def test_absurdly_scaled_updates_are_rejected_as_if_never_sent():
    with _engine(100.0) as engine:
        # Execute: FedAvg, the server rejecting updates larger than 10 x the global weights
        # (the default) or than 10 x the round's median update (opt-in)...
        rules = {"max-update-norm": 10, "max-norm-over-median": 10}
        _, screened, rejected = _run(engine, "fedavg", **rules)
        # ...and FedAvg where the attackers are offline instead (no reply at all)
        for d in ATTACKERS:
            engine.profiles[d].availability = 0.0
        _, offline, _ = _run(engine, "fedavg", **rules)

    # Assert: every attacker's update of every round was rejected for its norm (node
    # d + 1 is device d; by the first rule while the honest updates are large, by the
    # second once they are small), nothing else was, and the result is bit for bit the
    # federation of the honest devices alone
    assert sorted((r["round"], r["node"] - 1) for r in rejected) == \
        [(rnd, d) for rnd in range(1, 9) for d in ATTACKERS]
    assert {r["kind"] for r in rejected} <= {"norm", "norm-median"}
    assert rejected[0]["kind"] == "norm"
    for k in screened:
        assert np.array_equal(screened[k], offline[k]), k


def test_server_settings_of_a_config_reach_the_server(tmp_path):
    # [server] timeout and the screening keys are checked at load and forwarded
    from experiments.config import load_config
    from experiments.simulate import run_config

    path = tmp_path / "c.toml"
    path.write_text('[server]\nmax-update-norm = 3.5\nscreen-updates = false\ntimeout = 60\n'
                    'max-norm-over-median = 4\n')
    from device_runtime.modelspec import load_model
    from experiments.simulate import model_text

    cfg = load_config(str(path))
    rc = run_config(cfg, "fedavg", load_model(model_text(cfg), 0)[0].specs)
    assert (rc["max-update-norm"], rc["screen-updates"], rc["timeout"],
            rc["max-norm-over-median"]) == (3.5, False, 60, 4)
    path.write_text('[server]\nmax-update-norm = -1\n')
    with pytest.raises(ConfigError, match=r"\[server\] max-update-norm"):
        load_config(str(path))
