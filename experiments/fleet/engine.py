"""The fleet engine: a pool of warm worker processes that run the device program.

One engine serves a whole experiment: it packs the fleet's data once, starts ``workers``
processes (each imports device_runtime and pays the JIT once, in parallel), and then runs
batches of device tasks, device ``i`` on worker ``i % workers``. A device's state
(personal layers and so on) is kept in its own file by the workers: it never comes back
to this process, which only sees shared weights and metrics.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable

import numpy as np

from device_runtime.errors import ConfigError

from .profiles import DeviceProfile
from .store import write_store

# one BLAS thread per worker: the workers are the parallelism
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMBA_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}
READY_TIMEOUT = 120.0  # a cold numba cache compiles every kernel on first start


@dataclass
class TaskResult:
    task_id: int
    device: int
    kind: str
    shared: dict[str, tuple[str, tuple[int, ...], bytes]] | None  # (dtype, shape, .npy bytes)
    metrics: dict[str, float]
    error: str | None
    detail: str | None = None


class _Proc:
    """One worker: its end of the socket pair, its pid, and the Popen of a spawned one."""

    def __init__(self, index: int, conn: Connection, popen: subprocess.Popen | None) -> None:
        self.index = index
        self.conn = conn
        self.popen = popen
        self.pid = popen.pid if popen is not None else 0
        self.baseline_rss = 0
        self.warmup_seconds = 0.0

    def ready(self, timeout: float = READY_TIMEOUT) -> bool:
        if not self.conn.poll(timeout):
            return False
        _, self.pid, self.baseline_rss, self.warmup_seconds = self.conn.recv()
        return True

    def close(self) -> None:
        import psutil

        try:
            self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        try:
            if self.popen is not None:
                self.popen.wait(timeout=5)
            elif self.pid:
                psutil.Process(self.pid).wait(timeout=5)
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            os.kill(self.pid, 9)
        except psutil.Error:
            pass
        self.conn.close()


def spawn_workers(n: int, first_index: int = 0, zygote: bool = False) -> list[_Proc]:
    """Start ``n`` worker processes.

    By default each is a fresh interpreter that imports and warms up by itself, so its
    RSS is what a device running the runtime would see (the cap is on the whole process).
    With ``zygote=True`` one process warms up and forks the others: faster to start and
    lighter, but a forked worker's RSS leaves out the parent's file-backed pages it has
    not touched yet (tens of MiB), so per-device peaks read lower than on a real device.
    """
    env = dict(os.environ, **WORKER_ENV)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    pairs = [socket.socketpair() for _ in range(n)]
    groups = [list(range(n))] if zygote else [[i] for i in range(n)]
    procs: list[_Proc] = []
    for group in groups:
        fds = [pairs[i][1].fileno() for i in group]
        popen = subprocess.Popen([sys.executable, "-m", "experiments.fleet.worker",
                                  *map(str, fds)], pass_fds=fds, env=env,
                                 stdin=subprocess.DEVNULL)
        for j, i in enumerate(group):
            pairs[i][1].close()
            procs.append(_Proc(first_index + i, Connection(pairs[i][0].detach()),
                               popen if j == 0 else None))
    return procs


class FleetEngine:
    """Warm workers + the fleet's packed data + device profiles.

    ``isolation="worker"`` runs each device inside a worker after resetting the kernel's
    high-water mark (fast); ``"fork"`` forks a fresh child per device from the warm worker
    and kills it when it goes over its cap (strict, about a millisecond more per device).
    """

    def __init__(self, fleet: Any, profiles: list[DeviceProfile] | None = None,
                 workers: int = 0, isolation: str = "worker", workdir: str | None = None,
                 zygote: bool = False) -> None:
        """``fleet``: ``experiments.data.FleetData``, or a function returning it, called
        while the workers start (so making the data overlaps with their warm-up)."""
        if isolation not in ("worker", "fork"):
            raise ConfigError(f"isolation must be worker or fork, got {isolation!r}")
        self.t_start = time.perf_counter()
        if workers < 0:
            raise ConfigError(f"workers must be >= 0, got {workers}")
        n = workers or (os.cpu_count() or 1)
        self.procs = spawn_workers(n, zygote=zygote)  # they warm up while we get the data
        try:
            self._setup(fleet() if callable(fleet) else fleet, profiles, isolation, workdir)
        except BaseException:
            self.close()
            raise

    def _setup(self, fleet: Any, profiles: list[DeviceProfile] | None, isolation: str,
               workdir: str | None) -> None:
        self.fleet = fleet
        self.num_devices = len(fleet.devices)
        self.device_ids = [d.device_id for d in fleet.devices]
        self.profiles = profiles or [DeviceProfile(i, None, 1.0, 1.0, 0.0)
                                     for i in range(self.num_devices)]
        if len(self.profiles) != self.num_devices:
            raise ConfigError(f"{len(self.profiles)} profiles for {self.num_devices} devices")
        self.isolation = isolation
        self._own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="nnfleet-fleet-")
        self.store_dir = os.path.join(self.workdir, "store")
        write_store(fleet, self.store_dir)
        for p in self.procs:
            if not p.ready():
                raise RuntimeError(f"fleet worker {p.index} did not start within {READY_TIMEOUT}s")
            p.conn.send(("setup", self.store_dir, isolation))
        self.startup_seconds = time.perf_counter() - self.t_start
        self._ids = itertools.count()

    # ------------------------------------------------------------------ running
    def owner(self, device: int) -> _Proc:
        return self.procs[device % len(self.procs)]

    def run(self, payloads: dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]],
            tasks: Iterable[tuple[str, int, int]], run_key: str,
            on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
        """Run ``(kind, device, payload_id)`` tasks; results come back as they finish."""
        for p in self.procs:
            for pid, (shared, config) in payloads.items():
                p.conn.send(("payload", pid, shared, config))
        per: dict[int, list[tuple]] = {p.index: [] for p in self.procs}
        meta: dict[int, tuple[str, int]] = {}
        for kind, device, pid in tasks:
            tid = next(self._ids)
            meta[tid] = (kind, device)
            per[self.owner(device).index].append(
                (tid, kind, device, pid, self.profiles[device].settings(), run_key))
        for p in self.procs:
            if per[p.index]:
                p.conn.send(("tasks", per[p.index]))
        out: list[TaskResult] = []
        waiting = {p.conn: p for p in self.procs if per[p.index]}
        left = {p.index: len(per[p.index]) for p in self.procs}
        while waiting:
            for conn in wait(list(waiting)):
                p = waiting[conn]
                try:
                    _, tid, shared, metrics, err, detail = conn.recv()
                except (EOFError, OSError):  # the worker died: its devices' tasks failed
                    out += self._worker_died(p, per[p.index], out, on_result)
                    del waiting[conn]
                    continue
                kind, device = meta[tid]
                r = TaskResult(tid, device, kind, shared, metrics, err, detail)
                out.append(r)
                if on_result is not None:
                    on_result(r)
                left[p.index] -= 1
                if left[p.index] == 0:
                    del waiting[conn]
        for p in self.procs:
            for pid in payloads:
                p.conn.send(("drop", pid))
        return out

    def _worker_died(self, p: _Proc, sent: list[tuple], done: list[TaskResult],
                     on_result: Callable[[TaskResult], None] | None) -> list[TaskResult]:
        code = p.popen.wait() if p.popen is not None else "unknown"
        finished = {r.task_id for r in done}
        lost = []
        for tid, kind, device, *_ in sent:
            if tid not in finished:
                r = TaskResult(tid, device, kind, None, {}, f"worker process died (exit {code})")
                lost.append(r)
                if on_result is not None:
                    on_result(r)
        # replace it so the experiment can go on (device states are files: they survive)
        fresh = spawn_workers(1, p.index)[0]
        if fresh.ready():
            fresh.conn.send(("setup", self.store_dir, self.isolation))
        self.procs[p.index] = fresh
        return lost

    def reset(self, run_key: str) -> None:
        """Forget every device's state for ``run_key`` (a new experiment run)."""
        for p in self.procs:
            p.conn.send(("reset", run_key))

    # ------------------------------------------------------------------ memory
    def tree_rss(self) -> int:
        """RSS of this process plus its workers, now."""
        import psutil
        total = psutil.Process().memory_info().rss
        for p in self.procs:
            try:
                total += psutil.Process(p.pid).memory_info().rss
            except psutil.Error:
                pass
        return int(total)

    def close(self) -> None:
        for p in self.procs:
            p.close()
        self.procs = []
        if getattr(self, "_own_dir", False):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "FleetEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
