"""The node side of the Ray backend: one fleet worker as a Ray actor.

A :class:`NodeWorker` runs on one node of a Ray cluster (see :mod:`.ray_backend`). It owns
what a worker of the local engine has: one warm worker process (``experiments.fleet.worker``
started by :func:`~.procs.spawn_workers`, the very program the local engine runs, so a
device's RSS, cap checks and numbers are the same), the packed data of the devices it
trains, and their device states, all in a folder on the node's own disk. The actor itself
only passes messages: the device runs in the worker process, whose RSS is what the device's
cap covers, never in the actor's (a Ray worker process costs ~100 MiB before any device).

A device's new state is read back from the worker's state file after each train task and
returned with its result (the head keeps a copy: checkpoints and a node's death need it);
a device that comes to this actor from elsewhere brings its state with its first task.
The worker process dying mid-task (a device killed, or past ``faults.timeout``) costs only
that task, as in the local engine: the actor reports it and starts a fresh worker for the
rest. This module never imports ray: the driver wraps the class with ``ray.remote``.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from types import SimpleNamespace
from typing import Any

import numpy as np

from .procs import (
    READY_TIMEOUT,
    WorkerProc,
    death_of,
    finish_precompile,
    reap,
    spawn_workers,
    start_precompile,
)
from .protocol import Drop, Options, Payload, Reset, Result, Setup, Task, TaskResult, Tasks
from .store import SPLITS, StoreReader, write_store

FORK_GRACE = 5.0  # as the local engine's: fork isolation kills a late device itself first
# (device, its four arrays): what a node is sent of each device it trains
Shard = list[tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]]
# state file changes: (run key, device) -> the file's bytes, or None (no state: remove it)
States = dict[tuple[str, int], bytes | None]


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` as a new file (0600), renamed into place: never rewritten
    in place, so a hard link to the old file (a checkpoint's) keeps the old bytes."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class NodeWorker:
    """A warm fleet worker of one kernel kind, its devices' data and states, on one node."""

    def __init__(self, kind: str, isolation: str, options: Options, warm_models: list[str],
                 node_dir: str | None = None) -> None:
        import psutil

        # set for this actor only (its runtime is imported without numba by now): the
        # worker processes get their kind's own environment (procs.worker_env)
        os.environ.pop("NNFLEET_NO_NUMBA", None)
        self.kind, self.isolation, self.options = kind, isolation, options
        root = node_dir or tempfile.gettempdir()  # the node's $TMPDIR by default
        os.makedirs(root, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix="nnfleet-ray-", dir=root)  # this node's disk
        self.state_dir = os.path.join(self.dir, "states")
        self.store_path = ""
        self.meta: dict[str, Any] = {}
        self.data: dict[int, tuple[np.ndarray, ...]] = {}  # kept only until packed
        self.stores = 0
        self.compile_info: dict[str, Any] = {}
        if kind == "numba":  # numba's cache on this node, before the worker loads it
            self.compile_info = finish_precompile(start_precompile(warm_models, quiet=True))
        self.proc = self._spawn()
        self.payloads: dict[int, Payload] = {}
        self.respawned = 0
        self.actor_rss = int(psutil.Process().memory_info().rss)

    def _spawn(self) -> WorkerProc:
        p = spawn_workers(1, kernels=self.kind)[0]
        if not p.ready():
            raise RuntimeError(f"fleet worker did not start within {READY_TIMEOUT}s")
        return p

    def info(self) -> dict[str, Any]:
        """Where this worker runs and what it costs (RSS before any device)."""
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "worker_pid": self.proc.pid, "worker_rss": self.proc.baseline_rss,
                "kernels": self.proc.kernels, "actor_rss": self.actor_rss,
                "compile": self.compile_info, "dir": self.dir}

    # ------------------------------------------------------------------ data
    def add_devices(self, meta: dict[str, Any], shard: Shard) -> int:
        """Pack these devices' data (with any this worker has already) into a store on the
        node's disk; the worker reads it from now on. Returns the bytes received."""
        self.meta = meta
        old = StoreReader(self.store_path) if self.store_path else None
        have = {} if old is None else {i: old.read(i) for i in self._mine(old)}
        if old is not None:
            old.close()
        have.update({i: a for i, a in shard})
        empty = [np.zeros(0, np.float32 if s[0] == "x" else np.int64) for s in SPLITS]
        devices = [SimpleNamespace(device_id=meta["device_ids"][i],
                                   **dict(zip(SPLITS, have.get(i, empty))))
                   for i in range(meta["num_devices"])]
        fleet = SimpleNamespace(name=meta["name"], input_shape=meta["input_shape"],
                                num_classes=meta["num_classes"], devices=devices)
        self.stores += 1
        path = os.path.join(self.dir, f"store-{self.stores}")
        write_store(fleet, path)
        if self.store_path:
            shutil.rmtree(self.store_path, ignore_errors=True)
        self.store_path = path
        self._attach(self.proc)
        return sum(int(a.nbytes) for _, arrays in shard for a in arrays)

    @staticmethod
    def _mine(store: StoreReader) -> list[int]:
        return [i for i, e in enumerate(store.index["devices"]) if e["x_train"][1][0] > 0
                or e["x_test"][1][0] > 0]

    def _attach(self, p: WorkerProc) -> None:
        p.conn.send(Setup(self.store_path, self.isolation, self.state_dir))
        p.conn.send(self.options)
        for msg in self.payloads.values():
            p.conn.send(msg)

    # ------------------------------------------------------------------ running
    def begin(self, payloads: dict[int, tuple[dict[str, np.ndarray], dict[str, Any]]],
              options: Options) -> None:
        """The shared weights and configs of one run (sent to the worker once)."""
        if options != self.options:
            self.options = options
            self.proc.conn.send(options)
        self.payloads = {pid: Payload(pid, s, c) for pid, (s, c) in payloads.items()}
        for msg in self.payloads.values():
            self.proc.conn.send(msg)

    def end(self) -> None:
        """The run is over: the worker forgets its payloads."""
        for pid in self.payloads:
            self.proc.conn.send(Drop(pid))
        self.payloads = {}

    def run(self, tasks: list[Task], states: States) -> list[tuple[TaskResult, bytes | None]]:
        """Run ``tasks`` in order (after taking in the ``states`` that came with them); each
        result with the device's new state file when the task wrote one."""
        for (run_key, device), data in states.items():
            path = self._state_path(run_key, device)
            if data is None:
                if os.path.exists(path):
                    os.unlink(path)
            else:
                write_private(path, data)
        before = {t.task_id: _stamp(self._state_path(t.run_key, t.device)) for t in tasks}
        out: list[tuple[TaskResult, bytes | None]] = []
        rest = list(tasks)
        while rest:
            p = self.proc
            p.conn.send(Tasks(tuple(rest)))
            while rest:
                task = rest[0]
                msg = self._next(p)
                rest.pop(0)
                if msg is None:  # the worker died: this task failed, a fresh one goes on
                    out.append((self._died(p, task), None))
                    break
                new = None
                path = self._state_path(task.run_key, task.device)
                if task.kind == "train" and _stamp(path) != before[task.task_id]:
                    with open(path, "rb") as f:
                        new = f.read()
                err = msg.error
                if err is not None and task.fault is not None and "injected" not in err:
                    err += " (injected fault)"
                out.append((TaskResult(task.task_id, task.device, task.kind, msg.shared,
                                       msg.metrics, err, msg.detail, msg.status, task.fault,
                                       p.kernels, p.baseline_rss), new))
        return out

    def _state_path(self, run_key: str, device: int) -> str:
        return os.path.join(self.state_dir, run_key, f"{device}.npz")

    def _next(self, p: WorkerProc) -> Result | None:
        """The worker's next Result; None once it died (killed when past the timeout)."""
        limit = self.options.timeout
        if limit and self.isolation == "fork":
            limit += FORK_GRACE
        t0 = time.monotonic()
        while True:
            wait_s = None if not limit else max(0.0, t0 + limit - time.monotonic())
            try:
                if p.conn.poll(wait_s):
                    msg = p.conn.recv()
                    assert isinstance(msg, Result), f"a worker sent {msg!r}"
                    return msg
            except (EOFError, OSError):
                return None
            if not p.timed_out:  # past the timeout: kill it, then read its EOF
                p.timed_out = True
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                limit = 0.0

    def _died(self, p: WorkerProc, task: Task) -> TaskResult:
        """The failure of the task a dead worker was running; a fresh worker takes over."""
        code = reap(p)
        device = task.device
        how = " (injected fault)" if task.fault else ""
        # the local engine's words, so records match on both backends
        status, reason = death_of(device, code, p.timed_out, self.options.timeout, how)
        self.proc = self._spawn()
        self.respawned += 1
        self._attach(self.proc)
        return TaskResult(task.task_id, device, task.kind, None, {}, reason, None, status,
                          task.fault, p.kernels, p.baseline_rss)

    def reset(self, run_key: str) -> None:
        """Forget every device state of ``run_key`` on this node."""
        self.proc.conn.send(Reset(run_key))

    def close(self) -> None:
        """Stop the worker process; remove this worker's folder from the node."""
        self.proc.close()
        shutil.rmtree(self.dir, ignore_errors=True)
