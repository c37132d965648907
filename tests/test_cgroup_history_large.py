"""A device's verdict and reported memory do not depend on what its worker ran before, for
a model of 12 MiB of weights (issue 14, item 4): test_cgroup_history.py's check with a
3072-1024-10 MLP in worker isolation, where a device runs inside the long-lived worker.

Devices of another model and of other caps leave compiled models (pools, weights), initial
weights and dead heap in the worker; the worker drops what the next capped device cannot
use before it runs and keeps glibc's mmap threshold fixed (experiments/fleet/clean.py).
Before that, device 0's baseline grew by ~14-40 MiB after such devices and its
whole-life peak by as much, so the caps just above its edge flipped to cap-exceeded.

The same device, at caps around the edge of what it needs over its whole task (training,
evaluation, the reply's serialization: ~50 MiB over its baseline, measured), gets the same
verdict alone, after devices 1-3, and right after itself (reusing its trainer), with one
worker or two; its reported peak stays within 1 MiB, and so does its baseline except right
after itself (the trainer it reuses is part of it then: ~13.5 MiB). Each cap is >= 1.8 MiB
from that edge.
"""

from __future__ import annotations

import json

from device_runtime.device import initial_weights
from experiments.data import make_fleet_data
from experiments.fleet import DeviceProfile, Job
from tests.helpers import history_engine


def _mlp(hidden: int) -> str:
    return json.dumps([
        {"type": "input", "name": "in", "input_shape": "3072"},
        {"type": "fully_connected", "name": "fc1", "unit": hidden, "activation": "relu"},
        {"type": "fully_connected", "name": "fc2", "unit": 10},
    ])


MODEL, OTHER = _mlp(1024), _mlp(512)  # 12.0 and 6.0 MiB of weights
CONFIG = {"lr": 0.1, "batch-size": 8, "local-epochs": 1, "seed": 3, "server-round": 1}
MIB = 1 << 20
# devices run before device 0: (payload: 0 = MODEL, 1 = OTHER, cap)
OTHERS = {1: (1, 1 << 30), 2: (0, 300 * MIB), 3: (1, None)}
# device 0's caps over its baseline on a fresh worker. Its task needs ~50.3 MiB over it
# (measured: whole-life peak 126.7-126.9 MiB over a 76.5 MiB baseline); below ~27 MiB it
# cannot even plan its step
# training alone needs ~+26 MiB over the baseline, the whole task ~+50.5 MiB. +18 stays 8 MiB
# under the first: a device refused there was seen (2 runs of 8, after the merge of this
# session's branches) on the second worker with a baseline 3.7 MiB below a fresh worker's,
# which at +24 let it train (the one history effect left; see the closing note)
DELTAS = (18 * MIB, int(48.5 * MIB), int(52.5 * MIB))
EXPECTED = ("cap-exceeded", "cap-exceeded", "ok")


def _verdict(r) -> str:
    if r.error is not None:
        return r.status or "error"
    return "ok" if r.metrics.get("trained") else "cap-exceeded"


def _runs(workers: int, base: int | None = None) -> tuple[int, dict]:
    fleet = make_fleet_data("synthetic_fedprox", 4, seed=1, dim=3072, samples=40)
    profiles = [DeviceProfile(i, OTHERS.get(i, (0, 1 << 30))[1], 1.0, 1.0, 0.0)
                for i in range(4)]
    payload = {0: (initial_weights(MODEL, 0), {**CONFIG, "model": MODEL}),
               1: (initial_weights(OTHER, 0), {**CONFIG, "model": OTHER})}
    out: dict[tuple[int, str], object] = {}
    eng, base = history_engine(fleet, profiles, workers, "worker", payload, base)
    with eng:
        for i, delta in enumerate(DELTAS):
            eng.profiles[0].ram_cap = base + delta
            out[(delta, "alone")] = eng.run(payload, [Job("train", 0, 0)], f"alone{i}")[0]
            after = eng.run(payload, [Job("train", d, OTHERS[d][0]) for d in (1, 2, 3)] +
                            [Job("train", 0, 0)], f"after{i}")
            out[(delta, "after")] = after[-1]
            # right after itself, at the same cap: it reuses the trainer it compiled
            out[(delta, "again")] = eng.run(payload, [Job("train", 0, 0)], f"again{i}")[0]
    return base, out


def test_a_larger_models_verdict_and_memory_do_not_depend_on_its_workers_history():
    base, one = _runs(1)
    _, two = _runs(2, base)
    runs = {**{(d, w, "1"): r for (d, w), r in one.items()},
            **{(d, w, "2"): r for (d, w), r in two.items()}}
    print(f"\nbaseline {base / MIB:.2f} MiB: " + "; ".join(
        f"+{d / MIB:g} MiB " + ", ".join(
            f"{w}/{n}w {_verdict(r)} base {r.metrics.get('baseline-rss', -1) / MIB:.2f} "
            f"peak {r.metrics.get('peak-rss', -1) / MIB:.2f}"
            for (dd, w, n), r in runs.items() if dd == d) for d in DELTAS))
    for d, want in zip(DELTAS, EXPECTED):  # alone or after others, on one worker or two
        got = {k: _verdict(r) for k, r in runs.items() if k[0] == d}
        assert set(got.values()) == {want}, (d / MIB, got)
    # what a device that trained reports: its peak, whatever ran before; its baseline too,
    # but after itself (a reused trainer of its model and cap is part of its baseline then)
    trained = {k: r.metrics for k, r in runs.items() if _verdict(r) == "ok"}
    assert len(trained) == 6
    peaks = [m["peak-rss"] for m in trained.values()]
    assert max(peaks) - min(peaks) < MIB, peaks
    bases = [m["baseline-rss"] for k, m in trained.items() if k[1] != "again"]
    assert max(bases) - min(bases) < MIB, bases
    trained = {k: m for k, m in trained.items() if k[1] != "again"}
    # a fresh worker's first task reads up to ~1 MiB less: OpenBLAS's per-thread buffers
    # are touched further by the first products of this size (inside that task's peak)
    assert all(abs(m["baseline-rss"] - base) < 1.5 * MIB for m in trained.values()), (base, trained)
