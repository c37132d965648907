"""``nnfleet bench fleet --profile``: where a device-round's time goes on the fleet engine.

The head (the bench's own process: ServerApp, strategy, grid, engine) and every worker
keep phase clocks (:mod:`experiments.fleet.clock`); this module times the grid's side
(:class:`TimedGrid`), gathers the clocks after the rounds and prints one table of
microseconds per device-round. Head phases run one after another in one process, so
they add up to the rounds' wall time; worker phases are summed over the workers, which
run side by side (divide by the workers for their share of the wall time).
"""

from __future__ import annotations

import time
from typing import Any

from experiments.fleet.clock import HEAD_PHASES, WORKER_PHASES, merge
from experiments.fleet.grid import FleetGrid

HEAD_NAMES = {"send": "engine: pickle + send payloads and tasks",
              "wait": "engine: wait for workers (idle)",
              "recv": "engine: receive + unpickle results",
              "report": "grid: build each Flower reply and record"}
WORKER_NAMES = {"recv": "receive + unpickle (idle between rounds)",
                "state read": "device data (store) + state file read",
                "guard arm": "RAM guard window + cgroup limit set",
                "device program": "device program (model, guard, training)",
                "serialize": "shared weights -> .npy bytes",
                "state write": "state file write (atomic)",
                "guard disarm": "RAM guard window + cgroup limit lifted",
                "heap release": "heap given back (malloc_trim)",
                "send": "pickle + send result"}


class TimedGrid(FleetGrid):
    """A FleetGrid that adds up the seconds of its executions (messages in, replies out)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.execute_seconds = 0.0

    def _execute(self) -> None:
        t = time.perf_counter()
        try:
            super()._execute()
        finally:
            self.execute_seconds += time.perf_counter() - t


def collect(eng: Any, grid: TimedGrid, rounds_s: float, device_rounds: int) -> dict[str, Any]:
    """The profile of the rounds just run (the clocks were started afresh before them)."""
    head, _ = eng.clock.take()
    timings = eng.worker_timings()
    workers = merge([t.seconds for t in timings])
    in_engine = sum(head.get(k, 0.0) for k in HEAD_PHASES)
    us = 1e6 / device_rounds
    return {"device_rounds": device_rounds, "workers": len(timings),
            "wall_us": rounds_s * us,
            "head_us": {"ServerApp + strategy (server/, flwr)":
                        (rounds_s - grid.execute_seconds) * us,
                        "grid: messages -> payloads, records": (grid.execute_seconds
                                                                - in_engine) * us,
                        **{HEAD_NAMES[k]: head.get(k, 0.0) * us for k in HEAD_PHASES}},
            "worker_us": {WORKER_NAMES[k]: workers.get(k, 0.0) * us for k in WORKER_PHASES},
            "worker_tasks": sum(t.tasks for t in timings)}


def reset(eng: Any) -> None:
    """Start every clock afresh (before the rounds)."""
    eng.clock.take()
    eng.worker_timings()


def table(prof: dict[str, Any]) -> str:
    """The profile as printed lines."""
    n = prof["workers"]
    lines = [f"\nwhere a device-round goes (microseconds per device-round, "
             f"{prof['device_rounds']} device-rounds; wall {prof['wall_us']:.0f} us)",
             "head (one process, phases in sequence):"]
    for k, v in prof["head_us"].items():
        lines.append(f"  {k:52s} {v:8.0f}")
    busy = sum(v for k, v in prof["worker_us"].items() if not k.startswith("receive"))
    lines.append(f"workers ({n}, side by side; summed over them, busy {busy:.0f} us = "
                 f"{busy / max(n, 1):.0f} us of wall each):")
    for k, v in prof["worker_us"].items():
        lines.append(f"  {k:52s} {v:8.0f}")
    return "\n".join(lines)
