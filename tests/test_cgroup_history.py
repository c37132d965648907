"""A device's verdict does not depend on what its worker ran before (issue 14, item 4):
the same device, at caps around the edge of what it needs, gets the same status whether it
runs first on a fresh worker or after other devices (other caps, hence other compiled
models), and with one worker or two. In fork isolation a worker never runs a device itself,
so nothing a device leaves behind is charged to the next (the worker freezes its garbage
collector across the fork, so a child does not copy its pages either); in worker isolation
the device's baseline must not creep by more than the steps between these caps."""

from __future__ import annotations

import json

import pytest

from device_runtime.cap.fit import MARGIN_BYTES
from device_runtime.device import initial_weights
from experiments.data import make_fleet_data
from experiments.fleet import DeviceProfile, Job
from tests.helpers import history_engine

MODEL = json.dumps([
    {"type": "input", "name": "in", "input_shape": "20"},
    {"type": "fully_connected", "name": "fc1", "unit": 512, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 10},
])
CONFIG = {"model": MODEL, "lr": 0.1, "batch-size": 8, "local-epochs": 1, "seed": 3,
          "server-round": 1}
MIB = 1 << 20
OTHERS = {1: 1 << 30, 2: 300 * MIB, 3: None}  # devices run before device 0, their caps
# device 0's caps over its baseline. It needs the cap margin plus ~0.75 MiB (fork) to ~1.5 MiB
# (worker) over it (measured with a 2 MiB margin); each cap stays >= 1.5 MiB from that edge, so
# only a baseline that creeps by more than that can flip a verdict
DELTAS = (-2 * MIB, MIB // 2, MARGIN_BYTES + 3 * MIB, MARGIN_BYTES + 8 * MIB)


def _verdict(r) -> str:
    if r.error is not None:
        return r.status or "error"
    return "ok" if r.metrics.get("trained") else "cap-exceeded"


def _verdicts(isolation: str, workers: int, base: int | None = None) -> tuple[int, dict]:
    fleet = make_fleet_data("synthetic_fedprox", 4, seed=1, dim=20, samples=40)
    profiles = [DeviceProfile(i, OTHERS.get(i, 1 << 30), 1.0, 1.0, 0.0) for i in range(4)]
    payload = {0: (initial_weights(MODEL, 0), CONFIG)}
    out: dict[tuple[int, str], str] = {}
    eng, base = history_engine(fleet, profiles, workers, isolation, payload, base)
    with eng:
        for i, delta in enumerate(DELTAS):
            eng.profiles[0].ram_cap = base + delta
            alone = eng.run(payload, [Job("train", 0, 0)], f"alone{i}")[0]
            after = {r.device: r for r in eng.run(
                payload, [Job("train", d, 0) for d in (1, 2, 3, 0)], f"after{i}")}[0]
            out[(delta, "alone")], out[(delta, "after")] = _verdict(alone), _verdict(after)
    return base, out


@pytest.mark.parametrize("isolation", ["fork", "worker"])
def test_the_same_device_gets_the_same_verdict_whatever_ran_before_it(isolation):
    base, one = _verdicts(isolation, 1)
    _, two = _verdicts(isolation, 2, base)
    print(f"\n[{isolation}] baseline {base:,}: " + ", ".join(
        f"+{d / MIB:g} MiB {one[(d, 'alone')]}" for d in DELTAS))
    for d in DELTAS:  # alone or after others, on one worker or on one of two
        assert one[(d, "alone")] == one[(d, "after")] == two[(d, "alone")] == \
            two[(d, "after")], (d, one, two)
    verdicts = [one[(d, "alone")] for d in DELTAS]
    assert verdicts[0] == "cap-exceeded" and verdicts[-1] == "ok"  # the edge is in range
