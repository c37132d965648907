"""Where a device-round's time goes in the fleet engine: phase clocks kept by the engine
(the head) and by each worker, read by ``nnfleet bench fleet --profile``.

A :class:`Clock` adds up seconds per phase name; ``with clock("phase"):`` times a block
(two ``perf_counter`` calls, well under a microsecond, so the clocks always run). The
worker's totals come back on a :class:`~.protocol.Timings` message when the engine asks
(:meth:`~.engine.FleetEngine.worker_timings`), between runs only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# the worker's phases, in the order a task goes through them
WORKER_PHASES = ("recv", "state read", "forget others", "guard arm", "device program", "serialize",
                 "state write", "guard disarm", "heap release", "send")
# the engine's: pickling payloads and tasks, waiting for workers, unpickling their
# results, and the grid's callback for each (building the Flower reply)
HEAD_PHASES = ("send", "wait", "recv", "report")


class Clock:
    """Seconds per phase, added up over many tasks."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.tasks = 0

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(phase, time.perf_counter() - t)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds

    def take(self) -> tuple[dict[str, float], int]:
        """(seconds per phase, tasks) since the last take; starts afresh."""
        out = (self.seconds, self.tasks)
        self.seconds, self.tasks = {}, 0
        return out


def merge(parts: list[dict[str, float]]) -> dict[str, float]:
    """The sum of several clocks' seconds per phase."""
    out: dict[str, float] = {}
    for p in parts:
        for k, v in p.items():
            out[k] = out.get(k, 0.0) + v
    return out
