"""A device over its cap after training (issue 14, item 4): the cap holds over a device
task's whole life, so a device whose training fits but whose reply serialization (and the
pickling of its results, in fork isolation) takes it over its cap is reported
``cap-exceeded``, with no update and no saved state, in worker and in fork isolation alike,
with memory cgroups (the kernel may be the one that stops it) and without them."""

from __future__ import annotations

import json
import os

import pytest

from device_runtime.device import initial_weights
from experiments.data import make_fleet_data
from experiments.fleet import DeviceProfile, FleetEngine, Job
from experiments.fleet.cgroup import open_run

DIM, HIDDEN = 3072, 2048  # a 24 MiB weight: the serialized reply alone is as large
MODEL = json.dumps([
    {"type": "input", "name": "in", "input_shape": str(DIM)},
    {"type": "fully_connected", "name": "fc1", "unit": HIDDEN, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 10},
])
CONFIG = {"model": MODEL, "lr": 0.01, "batch-size": 8, "local-epochs": 1, "seed": 3,
          "server-round": 1}
BIG = 2 << 30
MARGIN = 8 << 20  # over the measured training peak: training fits, what follows does not


def _verdict(r) -> str:
    if r.error is not None:
        return r.status or "error"
    if r.metrics.get("trained"):
        return "ok"
    return "cap-exceeded" if r.metrics.get("cap-exceeded") else "no-data"


def _cgroup_modes() -> list[str]:
    cg, _ = open_run("auto")
    if cg is None:
        return ["off"]
    cg.close()
    return ["off", "require"]


@pytest.mark.parametrize("cgroups", _cgroup_modes())
def test_over_the_cap_after_training_is_the_same_verdict_in_both_isolations(cgroups):
    fleet = make_fleet_data("synthetic_fedprox", 2, seed=1, dim=DIM, samples=40)
    shared = initial_weights(MODEL, 0)
    verdicts = {}
    for isolation in ("worker", "fork"):
        profiles = [DeviceProfile(i, BIG, 1.0, 1.0, 0.0) for i in range(2)]
        with FleetEngine(fleet, profiles, workers=2, isolation=isolation, kernels="numpy",
                         faults={"timeout": 300.0}, cgroups=cgroups, quiet=True) as eng:
            # device 0 (worker 0) measures the training peak; device 1, as large, runs on
            # worker 1, fresh too, with its cap just above that peak
            calib = eng.run({0: (shared, CONFIG)}, [Job("train", 0, 0)], "calib")[0]
            assert _verdict(calib) == "ok", calib.error
            peak = int(calib.metrics["peak-rss"])
            eng.profiles[1].ram_cap = peak + MARGIN
            r = eng.run({0: (shared, CONFIG)}, [Job("train", 1, 0)], "tight")[0]
            verdicts[isolation] = _verdict(r)
            print(f"\n[{isolation}, cgroups {cgroups}] training peak {peak:,}, cap "
                  f"{peak + MARGIN:,}: {verdicts[isolation]} "
                  f"{r.error or {k: r.metrics.get(k) for k in ('steps', 'peak-rss')}}")
            assert r.shared is None  # no update
            assert not os.path.exists(os.path.join(eng.workdir, "states", "tight", "1.npz"))
            if r.error is None:  # the worker's check, the fork child's or its watchdog
                assert r.metrics["peak-rss"] > peak + MARGIN
                if isolation == "worker":  # it did train, then went over
                    assert r.metrics["steps"] > 0
            else:  # only the kernel stops a device before the worker's own check
                assert "oom" in r.error and cgroups != "off"
    assert verdicts == {"worker": "cap-exceeded", "fork": "cap-exceeded"}
