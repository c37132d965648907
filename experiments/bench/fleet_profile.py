"""``nnfleet bench fleet --profile``: where a device-round's time goes on the fleet engine.

The head (the bench's own process: ServerApp, strategy, grid, engine) and every worker
keep phase clocks (:mod:`experiments.fleet.clock`); this module times the grid's side
(:class:`TimedGrid`), gathers the clocks after the rounds and prints one table of
microseconds per device-round. Head phases run one after another in one process, so
they add up to the rounds' wall time; worker phases are summed over the workers, which
run side by side (divide by the workers for their share of the wall time).
"""

from __future__ import annotations

import os
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
                "forget others": "earlier devices' models and garbage dropped (capped)",
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


def _cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` used so far."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _pids(eng: Any) -> tuple[list[int], list[int]]:
    return [os.getpid()], [p.pid for p in eng.procs]


def collect(eng: Any, grid: TimedGrid, rounds_s: float, device_rounds: int,
            cpu0: tuple[float, float]) -> dict[str, Any]:
    """The profile of the rounds just run (``cpu0``: what :func:`reset` returned)."""
    head, _ = eng.clock.take()
    timings = eng.worker_timings()
    head_pids, worker_pids = _pids(eng)
    cpu = (_cpu(head_pids) - cpu0[0], _cpu(worker_pids) - cpu0[1])
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
            "worker_tasks": sum(t.tasks for t in timings),
            "cpu_us": {"head": cpu[0] * us, "workers": cpu[1] * us}}


def reset(eng: Any) -> tuple[float, float]:
    """Start every clock afresh (before the rounds); the CPU seconds of the head and of
    the workers so far."""
    eng.clock.take()
    eng.worker_timings()
    head_pids, worker_pids = _pids(eng)
    return _cpu(head_pids), _cpu(worker_pids)


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
    cpu = prof["cpu_us"]
    lines.append(f"CPU used (user + system): head {cpu['head']:.0f} us, workers "
                 f"{cpu['workers']:.0f} us per device-round (the rest of the wall time above "
                 f"is waiting: for the CPU, the disk, each other)")
    return "\n".join(lines)
