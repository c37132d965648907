"""The worker's side of the run's memory cgroups (:mod:`experiments.fleet.cgroup`): the
cgroup limited for one device task at a time, and what a task the kernel killed reports."""

from __future__ import annotations

import os

from .cgroup import ENV, HEADROOM, Cgroups


def over_cap_metrics(cap: int | None, limit: int | None) -> dict[str, float]:
    """The metrics of a device task the kernel killed at its cgroup limit."""
    return {"trained": 0.0, "cap-exceeded": 1.0, "ram-cap": float(cap or -1),
            "cgroup-limit": float(limit if limit is not None else -1), "oom-killed": 1.0}


class Confinement:
    """A cgroup of the run limited for one device task at a time: a worker's own
    (``w<pid>``, worker isolation: the worker is in it) or the one its forked device
    children enter (``f<pid>``). Its limit, set before each task, lets the task charge
    ``cap - RSS at task start + HEADROOM`` more than the cgroup holds then (memory the
    worker charged before, page cache included, stays counted but never counts against the
    task); between tasks it has none."""

    def __init__(self, cg: Cgroups, name: str, enter: bool) -> None:
        self.cg, self.entered = cg, enter
        self.path = cg.make(name)
        self.kills = 0
        self.limit = -1  # the limit set for the current task; -1 between tasks
        self.last = -1  # that of the last task
        if enter:
            cg.enter(self.path)

    def arm(self, cap: int, base: int) -> int:
        """Limit the cgroup for a task of a device capped at ``cap`` whose process holds
        ``base`` bytes of RSS now; the limit set (bytes)."""
        allowance = max(int(cap) - int(base), 0) + HEADROOM
        self.limit = self.last = self.cg.usage(self.path) + allowance
        self.cg.set_limit(self.path, self.limit)
        self.cg.reset_peak(self.path)
        self.kills = self.cg.oom_kills(self.path)
        return allowance

    def disarm(self) -> None:
        self.cg.set_limit(self.path, None)
        self.limit = -1

    def killed(self) -> bool:
        """Whether the kernel killed a process in it since :meth:`arm`."""
        return self.cg.oom_kills(self.path) > self.kills

    def close(self) -> None:
        """Leave (v1: back to the engine's own cgroup) and remove it; v2 leaves a worker's
        own cgroup to the engine, which removes it after the worker is gone."""
        if self.entered and self.cg.version == 2:
            return
        if self.entered:
            Cgroups.enter(os.path.dirname(self.cg.run))
        self.cg.remove(self.path)


def worker_confinement(isolation: str) -> tuple[Confinement | None, Confinement | None]:
    """A worker's (limited cgroup, own leaf) in the run the engine named in ``ENV``:
    worker isolation limits the worker's own cgroup; fork isolation limits its children's
    (and, under v2, puts the worker in a leaf of its own). (None, None) without cgroups."""
    cg = Cgroups.from_env(os.environ.get(ENV))
    if cg is None:
        return None, None
    me = os.getpid()
    if isolation != "fork":
        return Confinement(cg, f"w{me}", True), None
    home = Confinement(cg, f"w{me}", True) if cg.version == 2 else None
    return Confinement(cg, f"f{me}", False), home
