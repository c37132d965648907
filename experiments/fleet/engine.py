"""The fleet engine: a pool of warm worker processes that run the device program.

One engine serves a whole experiment: it packs the fleet's data once, starts ``workers``
processes (each imports device_runtime and loads its kernels once, in parallel), and then
runs batches of device tasks. Workers are of two kernel kinds (numba's kernels or the numpy
references, :mod:`experiments.fleet.kernels`); each device has a kind, fixed for the run by
its RAM cap, and is run by the worker ``rank % workers of its kind``, where ``rank`` counts
the devices of that kind before it. Numba's kernels are compiled into its cache once, in a
process of its own, before any numba worker starts (:func:`~.procs.start_precompile`).
A device's state (personal layers and so on) is kept in its own file by the workers: it
never comes back to this process, which only sees shared weights and metrics.

A worker that dies (a device killed mid-task, or killed by the engine because its task ran
past ``faults.timeout``) costs only the task it was running: that task is reported
("killed", "timeout"), a warm spare worker (kept when faults are injected in worker
isolation, else started then) takes its place with the data store re-attached and runs
the worker's remaining tasks (device states are files, so they survive), and a new spare
warms up in the background. See :mod:`experiments.fleet.faults`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from typing import Any, Self, cast

import numpy as np

from device_runtime.errors import ConfigError

from .cgroup import ENV as CGROUP_ENV
from .cgroup import note_once, open_run
from .clock import Clock
from .faults import FaultPlan
from .kernels import NUMBA_MIN_CAP, device_kernels, split_workers
from .procs import (
    READY_TIMEOUT,
    WorkerProc,
    death_of,
    finish_precompile,
    reap,
    spawn_workers,
    start_precompile,
)
from .profiles import DeviceProfile
from .protocol import Drop, Job, Payload, Ready, Reset, Result, Setup, Task, TaskResult, Tasks
from .store import write_store

FORK_GRACE = 5.0  # fork isolation: the worker kills a late device itself; the engine only
# kills the worker when even that did not happen this much later
GATHER_SECONDS = 0.001  # between two wake-ups of a run: a worker's result wakes no one
# (on a loaded machine, each wake-up could take the core from a worker)
# payload id -> (shared weights, server config) of the messages of one run
Payloads = dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]]


def _payload_messages(payloads: Payloads) -> list[Payload]:
    return [Payload(pid, shared, config) for pid, (shared, config) in payloads.items()]


class FleetEngine:
    """Warm workers + the fleet's packed data + device profiles.

    ``isolation="worker"`` runs each device inside a worker after resetting the kernel's
    high-water mark (fast); ``"fork"`` forks a fresh child per device from the warm worker
    and kills it when it goes over its cap (strict, about a millisecond more per device).
    """

    def __init__(self, fleet: Any, profiles: list[DeviceProfile] | None = None,
                 workers: int = 0, isolation: str = "worker", workdir: str | None = None,
                 zygote: bool = False, faults: FaultPlan | dict[str, Any] | None = None,
                 seed: int = 0, state_dir: str | None = None, kernels: str = "auto",
                 numba_min_cap: int = NUMBA_MIN_CAP, warm_models: list[str] | None = None,
                 quiet: bool = False, cgroups: str = "auto") -> None:
        """``fleet``: ``experiments.data.FleetData``, or a function returning it, called
        while the workers start (so making the data overlaps with their warm-up).
        ``faults``: a :class:`FaultPlan` or the ``[faults]`` table of the experiment config
        (drawn from ``seed`` unless it has its own). ``state_dir``: where the workers keep
        device states, ``<state_dir>/<run_key>/<device>.npz`` (default: in ``workdir``).
        ``kernels``, ``numba_min_cap``: the ``[fleet]`` keys kernels and numba-min-cap (see
        :func:`~.kernels.device_kernels`). ``warm_models``: model specs whose own kernel
        specialisations are compiled with the rest. ``quiet``: no progress line.
        ``cgroups``: the ``[fleet]`` key, ``auto`` / ``off`` / ``require``: each device
        process in a memory cgroup limited at its cap (:mod:`.cgroup`)."""
        self.state_dir = state_dir or ""
        if isolation not in ("worker", "fork"):
            raise ConfigError(f"isolation must be worker or fork, got {isolation!r}")
        self.faults = faults if isinstance(faults, FaultPlan) else \
            FaultPlan.from_config(faults, seed)
        self.respawned = 0  # workers replaced after they died
        self.clock = Clock()  # the head's side of a device-round (bench fleet --profile)
        self.cgroups, self.cgroup_note = open_run(cgroups)
        if self.cgroups is None and cgroups != "off":
            note_once(self.cgroup_note)  # the fallback, said once
        self._env = {CGROUP_ENV: self.cgroups.env()} if self.cgroups is not None else {}
        self.t_start = time.perf_counter()
        if workers < 0:
            raise ConfigError(f"workers must be >= 0, got {workers}")
        n = workers or (os.cpu_count() or 1)
        # uncapped devices when no profiles are given: one kind for every device
        self.kernels = device_kernels([p.ram_cap for p in profiles] if profiles else [None],
                                      kernels, numba_min_cap)
        per_kind = split_workers(n, self.kernels)
        self.procs: list[WorkerProc] = []
        self.spares: dict[str, WorkerProc] = {}
        self.compile_info: dict[str, Any] = {}  # what the precompile process reported
        compiling = start_precompile(warm_models or [], quiet) if "numba" in per_kind else None
        try:
            # numpy workers warm up while numba compiles; every worker while we get the data
            self._spawn("numpy", per_kind.get("numpy", 0), zygote, isolation)
            if compiling is not None:
                self.compile_info = finish_precompile(compiling)
                compiling = None
                self._spawn("numba", per_kind["numba"], zygote, isolation)
            self._setup(fleet() if callable(fleet) else fleet, profiles, isolation, workdir)
        except BaseException:
            if compiling is not None:
                compiling.kill()
                compiling.wait()
            self.close()
            raise

    def _spawn(self, kind: str, n: int, zygote: bool, isolation: str) -> None:
        if not n:
            return
        self.procs += spawn_workers(n, len(self.procs), zygote, kind, self._env)
        # a warm spare takes a dead worker's place at once (a fresh one takes ~0.5 s to
        # warm up): kept from the start when injected faults will kill workers (worker
        # isolation; in fork isolation only the device's child dies), else after a death
        if self.faults.active and isolation == "worker":
            self.spares[kind] = spawn_workers(1, -1, kernels=kind, extra_env=self._env)[0]

    def _setup(self, fleet: Any, profiles: list[DeviceProfile] | None, isolation: str,
               workdir: str | None) -> None:
        self.fleet = fleet
        self.num_devices = len(fleet.devices)
        self.device_ids = [d.device_id for d in fleet.devices]
        self.profiles = profiles or [DeviceProfile(i, None, 1.0, 1.0, 0.0)
                                     for i in range(self.num_devices)]
        if len(self.profiles) != self.num_devices:
            raise ConfigError(f"{len(self.profiles)} profiles for {self.num_devices} devices")
        if profiles is None:
            self.kernels = self.kernels[:1] * self.num_devices
        seen: dict[str, int] = {}
        self._rank = []  # device -> how many devices of its kind come before it
        for k in self.kernels:
            self._rank.append(seen.get(k, 0))
            seen[k] = seen.get(k, 0) + 1
        self.isolation = isolation
        self._own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="nnfleet-fleet-")
        self.store_dir = os.path.join(self.workdir, "store")
        self.state_dir = self.state_dir or os.path.join(self.workdir, "states")
        write_store(fleet, self.store_dir)
        for p in self.procs:
            if not p.ready():
                raise RuntimeError(f"fleet worker {p.index} did not start within {READY_TIMEOUT}s")
            self._attach(p)
        self.startup_seconds = time.perf_counter() - self.t_start
        self._ids = itertools.count()

    # ------------------------------------------------------------------ running
    def owner(self, device: int) -> WorkerProc:
        """The worker that runs ``device``: one of its kernel kind, always the same."""
        pool = [p for p in self.procs if p.kind == self.kernels[device]]
        return pool[self._rank[device] % len(pool)]

    def kernel_summary(self) -> dict[str, Any]:
        """Per kernel kind: its devices, workers and their RSS when ready (before any
        device), and the numba compilation (the precompile process's report)."""
        out: dict[str, Any] = {}
        for kind in sorted(set(self.kernels)):
            rss = sorted(p.baseline_rss for p in self.procs if p.kind == kind)
            out[kind] = {"devices": self.kernels.count(kind),
                         "workers": len(rss), "worker_rss": rss,
                         "in_use": sorted({p.kernels for p in self.procs if p.kind == kind})}
        return {"per_kind": out, "compile": self.compile_info,
                "cgroups": {**(self.cgroups.info() if self.cgroups else {"mode": "off"}),
                            "note": self.cgroup_note}}

    def _attach(self, p: WorkerProc) -> None:
        """A worker that is ready: tell it where the data is, then what waited for it."""
        p.conn.send(Setup(self.store_dir, self.isolation, self.state_dir))
        if self.faults.active or self.faults.timeout:
            p.conn.send(self.faults.options())
        for msg in p.outbox:
            p.conn.send(msg)
        p.outbox = []

    def _send(self, p: WorkerProc, msg: Any) -> None:
        if p.starting:
            p.outbox.append(msg)
        else:
            p.conn.send(msg)

    def run(self, payloads: Payloads, jobs: Iterable[Job], run_key: str,
            on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
        """Run ``jobs``; results come back as they finish (``on_result`` sees each at once).

        Every job gets exactly one result: a device's reply, or a failure (``status``)."""
        clock = self.clock
        t_send = time.perf_counter()
        for p in self.procs:
            if p.starting and p.conn.poll(0):  # respawned during an earlier run, now warm
                p.got_ready(p.conn.recv())
                self._attach(p)
            for payload in _payload_messages(payloads):
                self._send(p, payload)
        queue: dict[int, list[Task]] = {p.index: [] for p in self.procs}  # in running order
        for job in jobs:
            queue[self.owner(job.device).index].append(
                Task(next(self._ids), job.kind, job.device, job.payload,
                     self.profiles[job.device].device_settings(), run_key, job.fault))
        for p in self.procs:
            if queue[p.index]:
                self._send(p, Tasks(tuple(queue[p.index])))
        clock.add("send", time.perf_counter() - t_send)
        heads = {i: 0 for i in queue}  # tasks of worker i answered so far
        limit = self.faults.timeout
        if limit and self.isolation == "fork":
            limit += FORK_GRACE
        now = time.monotonic()
        since = {i: now for i in queue}  # when worker i began its current task
        out: list[TaskResult] = []

        def report(r: TaskResult) -> None:
            out.append(r)
            clock.tasks += 1
            if on_result is not None:
                with clock("report"):
                    on_result(r)

        while True:
            busy = {p.conn: p for p in self.procs if heads[p.index] < len(queue[p.index])}
            if not busy:
                break
            wait_s = None
            if limit:
                due = [since[p.index] + limit for p in busy.values() if not p.starting]
                wait_s = max(0.0, min(due) - time.monotonic()) if due else limit
            with clock("wait"):
                ready = cast(list[Connection], wait(list(busy), wait_s))
            todo = list(ready)
            while todo:
                conn = todo.pop()
                p = busy[conn]
                try:
                    with clock("recv"):
                        msg = conn.recv()
                except (EOFError, OSError):  # the worker died: its current task failed
                    self._worker_died(p, queue, heads, payloads, report)
                    since[p.index] = time.monotonic()
                    continue
                if isinstance(msg, Ready):  # a respawned worker is warm: give it its tasks
                    p.got_ready(msg)
                    self._attach(p)
                    since[p.index] = time.monotonic()
                    continue
                assert isinstance(msg, Result), f"a worker sent {msg!r}"
                task = queue[p.index][heads[p.index]]
                assert task.task_id == msg.task_id, "results come in task order"
                heads[p.index] += 1
                since[p.index] = time.monotonic()
                err = msg.error
                if err is not None and task.fault is not None and "injected" not in err:
                    err += " (injected fault)"
                report(TaskResult(task.task_id, task.device, task.kind, msg.shared, msg.metrics,
                                  err, msg.detail, msg.status, task.fault, p.kernels,
                                  p.baseline_rss))
                if heads[p.index] < len(queue[p.index]) and conn.poll(0):
                    todo.append(conn)  # more waiting: taken in this same wake-up
            if limit:
                self._kill_late(busy.values(), since, limit)
            if any(heads[i] < len(q) for i, q in queue.items()):
                with clock("wait"):  # let results gather: one wake-up takes several
                    time.sleep(GATHER_SECONDS)
        for p in self.procs:
            for pid in payloads:
                self._send(p, Drop(pid))
        return out

    def _kill_late(self, procs: Iterable[WorkerProc], since: dict[int, float],
                   limit: float) -> None:
        """SIGKILL every worker whose current task has run longer than ``limit`` seconds."""
        now = time.monotonic()
        for p in procs:
            if p.starting:
                if now - p.started > READY_TIMEOUT:
                    raise RuntimeError(f"fleet worker {p.index} did not restart within "
                                       f"{READY_TIMEOUT}s")
            elif not p.timed_out and now - since[p.index] > limit:
                p.timed_out = True
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _worker_died(self, p: WorkerProc, queue: dict[int, list[Task]], heads: dict[int, int],
                     payloads: Payloads, report: Callable[[TaskResult], None]) -> None:
        """Report the task the dead worker was running; respawn it for the rest."""
        code = reap(p)
        mine = queue[p.index]
        if heads[p.index] < len(mine):
            task = mine[heads[p.index]]
            heads[p.index] += 1
            device = task.device
            how = " (injected fault)" if task.fault else ""
            metrics: dict[str, float] = {}
            oom = None if self.cgroups is None or self.isolation == "fork" else \
                self.cgroups.worker_oom(p.pid, device, task.settings.ram_cap)
            if oom is not None:
                status, reason, metrics = "cap-exceeded", oom[0] + how, oom[1]
            else:
                status, reason = death_of(device, code, p.timed_out, self.faults.timeout, how)
            report(TaskResult(task.task_id, device, task.kind, None, metrics, reason, None,
                              status, task.fault, p.kernels, p.baseline_rss))
        if self.cgroups is not None:
            self.cgroups.drop_worker(p.pid)
        # replace it so the experiment can go on (the spare, or a fresh one that warms up
        # while the others work)
        fresh = self.spares.get(p.kind) or spawn_workers(1, kernels=p.kind,
                                                         extra_env=self._env)[0]
        fresh.index = p.index
        self.spares[p.kind] = spawn_workers(1, -1, kernels=p.kind, extra_env=self._env)[0]
        self.respawned += 1
        fresh.outbox = list(_payload_messages(payloads))
        rest = mine[heads[p.index]:]
        if rest:
            fresh.outbox.append(Tasks(tuple(rest)))
        self.procs[p.index] = fresh
        if fresh.starting and fresh.conn.poll(0):  # a spare, warm already
            fresh.got_ready(fresh.conn.recv())
        if not fresh.starting:  # start it now
            self._attach(fresh)

    def worker_timings(self) -> list[Any]:
        """Every worker's phase clocks since the last call (``protocol.Timings``; between
        runs only)."""
        from .protocol import Timing

        for p in self.procs:
            p.conn.send(Timing())
        return [p.conn.recv() for p in self.procs]

    def reset(self, run_key: str) -> None:
        """Forget every device's state for ``run_key`` (a new experiment run)."""
        for p in self.procs:
            self._send(p, Reset(run_key))

    def wait_ready(self) -> None:
        """Block until every respawned worker, and the spare, is warm (the pool is whole
        again)."""
        spares = list(self.spares.values())
        for p in self.procs + spares:
            if p.starting:
                if not p.ready():
                    raise RuntimeError(f"fleet worker {p.index} did not restart within "
                                       f"{READY_TIMEOUT}s")
                if p not in spares:  # a spare is attached when it takes over
                    self._attach(p)

    # ------------------------------------------------------------------ memory
    def tree_rss(self) -> int:
        """RSS of this process plus its workers (and the spare), now."""
        import psutil
        total = psutil.Process().memory_info().rss
        for p in self.procs + list(self.spares.values()):
            try:
                total += psutil.Process(p.pid).memory_info().rss
            except psutil.Error:
                pass
        return int(total)

    def close(self) -> None:
        """Stop every worker (and the spares); remove the work folder if the engine made it."""
        for p in getattr(self, "procs", []) + list(getattr(self, "spares", {}).values()):
            p.close()
        self.procs, self.spares = [], {}
        cg = getattr(self, "cgroups", None)
        if cg is not None:
            cg.close()
        if getattr(self, "_own_dir", False):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
