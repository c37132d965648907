"""Kernels per device: numba for devices whose cap holds numba's fixed cost, the numpy
references for smaller ones; each device always on a worker of its kind, and both kinds
computing the same numbers within float32 rounding."""

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
from experiments.fleet import DeviceProfile, FleetEngine  # noqa: E402
from experiments.fleet.grid import FleetGrid, run_serverapp  # noqa: E402
from experiments.fleet.kernels import (  # noqa: E402
    NUMBA_MIN_CAP,
    device_kernels,
    numba_available,
    split_workers,
)

logging.getLogger("flwr").setLevel(logging.WARNING)

MIB = 1 << 20
MODEL = json.dumps([
    {"type": "input", "name": "in", "input_shape": "20"},
    {"type": "fully_connected", "name": "fc1", "unit": 16, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 10},
])
N = 6
# float32 kernels that sum in another order: two rounds of SGD drift by ~1e-6 (measured
# 6e-8 at most here); a genuine difference in the maths is orders of magnitude larger
WEIGHT_ATOL = 1e-5


def test_the_kernel_rule_is_the_cap_against_the_numba_minimum():
    # Prepare: caps on both sides of the minimum, and uncapped
    caps = [96 * MIB, NUMBA_MIN_CAP - 1, NUMBA_MIN_CAP, 1 << 30, None]
    # Execute / Assert
    assert device_kernels(caps, have_numba=True) == ["numpy", "numpy", "numba", "numba",
                                                     "numba"]
    assert device_kernels(caps, "auto", 64 * MIB, have_numba=True) == ["numba"] * 5
    assert device_kernels(caps, have_numba=False) == ["numpy"] * 5  # numba not installed
    assert device_kernels(caps, "numpy", have_numba=True) == ["numpy"] * 5
    assert device_kernels(caps, "numba", have_numba=True) == ["numba"] * 5
    with pytest.raises(ConfigError, match="numba is not installed"):
        device_kernels(caps, "numba", have_numba=False)
    with pytest.raises(ConfigError, match="kernels"):
        device_kernels(caps, "fast")


def test_workers_are_split_by_kind_with_one_at_least_for_each():
    assert split_workers(4, ["numba"] * 3 + ["numpy"]) == {"numba": 3, "numpy": 1}
    assert split_workers(2, ["numba"] * 9 + ["numpy"]) == {"numba": 1, "numpy": 1}
    assert split_workers(1, ["numba", "numpy"]) == {"numba": 1, "numpy": 1}  # raised to 2
    assert split_workers(3, ["numpy"] * 5) == {"numpy": 3}


def _fleet():
    return make_fleet_data("synthetic_fedprox", N, seed=2, dim=20, samples=40)


def _run(eng: FleetEngine, key: str) -> tuple[list[dict], dict]:
    records: list[dict] = []
    grid = FleetGrid(eng, run_key=key, seed=0, on_record=records.append)
    rc = {"model": MODEL, "num-rounds": 2, "lr": 0.1, "batch-size": 8, "local-epochs": 1,
          "min-nodes": 2, "seed": 3}
    ctx = run_serverapp(server.app, grid, rc)
    final = {k: a.numpy() for k, a in ctx.state["final-arrays"].items()}
    records += grid.evaluate_all(final, rc, rnd=2)
    eng.reset(key)
    return records, final


needs_numba = pytest.mark.skipif(not numba_available(), reason="numba is not installed")


@needs_numba
def test_numba_and_numpy_kernels_give_the_same_fleet_within_float32_rounding():
    # Prepare: one small fleet, every device forced to one kind, then to the other
    fleet = _fleet()
    out = {}
    for kind in ("numba", "numpy"):
        with FleetEngine(fleet, workers=2, kernels=kind) as eng:
            assert {p.kernels for p in eng.procs} == {kind}
            out[kind] = _run(eng, kind)
    # Assert: same weights within float32 rounding, same accuracies, statuses
    (rec_a, w_a), (rec_b, w_b) = out["numba"], out["numpy"]
    assert set(w_a) == set(w_b)
    for k in w_a:
        np.testing.assert_allclose(w_a[k], w_b[k], rtol=0, atol=WEIGHT_ATOL, err_msg=k)

    def final(records: list[dict]) -> dict:
        return {r["device"]: (r["status"], r["accuracy"]) for r in records
                if r["phase"] == "final"}
    fa, fb = final(rec_a), final(rec_b)
    assert fa.keys() == fb.keys() == set(range(N))
    for d in fa:
        assert fa[d][0] == fb[d][0] == "ok"
        assert abs(fa[d][1] - fb[d][1]) < 1e-9, (d, fa[d], fb[d])
    # each record names its kernels and what its worker cost before any device
    for kind, (records, _) in out.items():
        assert {r["kernels"] for r in records} == {kind}
    rss = {kind: {r["worker-rss"] for r in recs if "worker-rss" in r}
           for kind, (recs, _) in out.items()}
    # numba + LLVM are ~110-130 MiB of fixed RSS that a numpy worker does not have
    assert min(rss["numba"]) > max(rss["numpy"]) + 80 * MIB, rss


@needs_numba
def test_a_mixed_fleet_runs_each_device_on_a_worker_of_its_kind():
    # Prepare: two small devices (numpy kernels), the others uncapped (numba)
    profiles = [DeviceProfile(i, None, 1.0, 1.0, 0.0) for i in range(N)]
    profiles[1].ram_cap = profiles[4].ram_cap = 96 * MIB
    kinds = ["numba", "numpy", "numba", "numba", "numpy", "numba"]
    owners = []
    for workers in (2, 3):
        with FleetEngine(_fleet(), profiles, workers=workers) as eng:
            # Execute
            records, _ = _run(eng, "mixed")
            # Assert: the kinds depend on the caps only, never on the number of workers
            assert eng.kernels == kinds
            assert all(eng.owner(d).kind == kinds[d] for d in range(N))
            owners.append([eng.owner(d).index for d in range(N)])
            summary = eng.kernel_summary()["per_kind"]
            assert summary["numpy"]["devices"] == 2 and summary["numba"]["devices"] == 4
            for r in records:
                assert r["kernels"] == kinds[r["device"]], r
            # the 96 MiB devices train (numba's fixed cost alone would not fit them)
            small = [r for r in records if r["device"] in (1, 4) and r["phase"] == "train"]
            assert small and all(r["status"] == "ok" for r in small), small
            assert all(r["peak-rss"] <= 96 * MIB for r in small)
    assert owners[0] != owners[1]  # more workers: other owners, same kinds


@needs_numba
def test_a_dead_worker_is_replaced_by_one_of_its_kind():
    # Prepare: device 1 on the numpy kernels, the others on numba's
    from device_runtime.device import initial_weights
    from experiments.fleet import Job

    profiles = [DeviceProfile(i, None, 1.0, 1.0, 0.0) for i in range(4)]
    profiles[1].ram_cap = 96 * MIB
    cfg = {"model": MODEL, "lr": 0.1, "batch-size": 8, "seed": 3, "server-round": 1}
    payloads = {0: (initial_weights(MODEL, 0), cfg)}
    fleet = make_fleet_data("synthetic_fedprox", 4, seed=2, dim=20, samples=40)
    with FleetEngine(fleet, profiles, workers=2) as eng:
        before = eng.owner(1)
        assert before.kind == before.kernels == "numpy"
        # Execute: device 1's worker is killed mid-task, then every device trains again
        res = eng.run(payloads, [Job("train", d, 0, "kill" if d == 1 else None)
                                 for d in range(4)], "kill")
        eng.wait_ready()
        again = eng.run(payloads, [Job("train", d, 0) for d in range(4)], "after")
        # Assert: the replacement is a numpy worker, and device 1 trains on it
        after = eng.owner(1)
        assert after.pid != before.pid and after.kind == after.kernels == "numpy"
        assert {r.device: r.status for r in res}[1] == "killed"
        assert {r.device: r.kernels for r in again} == {0: "numba", 1: "numpy", 2: "numba",
                                                        3: "numba"}
        assert all(r.error is None and r.metrics["trained"] == 1 for r in again)
