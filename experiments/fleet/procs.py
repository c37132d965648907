"""The engine's side of its worker processes: starting them and talking to one of them.

A worker is of one kernel kind (:mod:`experiments.fleet.kernels`): ``numba`` or ``numpy``
(``NNFLEET_NO_NUMBA=1`` in its environment: numba is never imported). Before numba workers
start, :func:`precompile` compiles every kernel into numba's cache in a process of its own,
so that workers only load machine code and no device is measured while compiling.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from .protocol import Ready, Stop

# one BLAS thread per worker: the workers are the parallelism
WORKER_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "NUMBA_NUM_THREADS": "1", "FLWR_TELEMETRY_ENABLED": "0"}
READY_TIMEOUT = 120.0  # seconds a worker may take to import and load its kernels
KINDS = ("numba", "numpy")


def worker_env(kernels: str) -> dict[str, str]:
    """The environment of a worker (or the precompile process) of kind ``kernels``."""
    assert kernels in KINDS, f"kernel kind {kernels!r} is not one of {KINDS}"
    env = dict(os.environ, **WORKER_ENV)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    if kernels == "numpy":
        env["NNFLEET_NO_NUMBA"] = "1"
    return env


def start_precompile(models: list[str], quiet: bool = False) -> subprocess.Popen:
    """Start compiling every kernel (and each model's specialisations) into numba's cache, in
    a process of its own (``python -m device_runtime.warmup``); see :func:`finish_precompile`.

    It prints "compiling numba kernels into DIR (first run only)..." on stderr when the
    cache is empty (unless ``quiet``); a warm cache only loads, in about a second."""
    args = [sys.executable, "-m", "device_runtime.warmup", *(["--quiet"] if quiet else [])]
    for m in models:
        args += ["--model", m]
    return subprocess.Popen(args, env=worker_env("numba"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, text=True)


def finish_precompile(popen: subprocess.Popen) -> dict[str, Any]:
    """Wait for the precompile process (no timeout: a cold cache on a loaded machine takes
    as long as it takes, ~15 s idle here); its report (``device_runtime.warmup``)."""
    out, _ = popen.communicate()
    if popen.returncode != 0:
        raise RuntimeError(f"compiling the numba kernels failed (exit {popen.returncode}; "
                           "its error is above)")
    return dict(json.loads(out.strip().splitlines()[-1]))


class WorkerProc:
    """One worker: its end of the socket pair, its pid, and the Popen of a spawned one."""

    def __init__(self, index: int, conn: Connection, popen: subprocess.Popen | None,
                 kind: str = "numba") -> None:
        self.index = index
        self.kind = kind  # the kernels it was started with
        self.kernels = kind  # the kernels it reports in use (numpy where numba is disabled)
        self.conn = conn
        self.popen = popen
        self.pid = popen.pid if popen is not None else 0
        self.baseline_rss = 0
        self.warmup_seconds = 0.0
        self.started = time.monotonic()
        self.starting = True  # until its Ready message; messages wait in the outbox
        self.outbox: list[Any] = []  # protocol messages
        self.timed_out = False  # killed by the engine for running past the timeout

    def ready(self, timeout: float = READY_TIMEOUT) -> bool:
        """Wait up to ``timeout`` seconds for the worker's Ready message."""
        if not self.conn.poll(timeout):
            return False
        self.got_ready(self.conn.recv())
        return True

    def got_ready(self, msg: Ready) -> None:
        """Take in the worker's Ready message."""
        assert isinstance(msg, Ready), f"a worker's first message is Ready, got {msg!r}"
        self.pid, self.baseline_rss, self.warmup_seconds = (msg.pid, msg.baseline_rss,
                                                            msg.warmup_seconds)
        self.kernels = msg.kernels
        self.starting = False

    def close(self) -> None:
        """Ask the worker to stop; kill it if it has not within 5 s."""
        import psutil

        try:
            self.conn.send(Stop())
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


def spawn_workers(n: int, first_index: int = 0, zygote: bool = False,
                  kernels: str = "numba", extra_env: dict[str, str] | None = None
                  ) -> list[WorkerProc]:
    """Start ``n`` worker processes with the ``kernels`` kind.

    By default each is a fresh interpreter that imports and warms up by itself, so its
    RSS is what a device running the runtime would see (the cap is on the whole process).
    With ``zygote=True`` one process warms up and forks the others: faster to start and
    lighter, but a forked worker's RSS leaves out the parent's file-backed pages it has
    not touched yet (tens of MiB), so per-device peaks read lower than on a real device.
    ``extra_env``: more environment (the run's cgroups, :mod:`.cgroup`).
    """
    env = {**worker_env(kernels), **(extra_env or {})}
    pairs = [socket.socketpair() for _ in range(n)]
    groups = [list(range(n))] if zygote else [[i] for i in range(n)]
    procs: list[WorkerProc] = []
    for group in groups:
        fds = [pairs[i][1].fileno() for i in group]
        popen = subprocess.Popen([sys.executable, "-m", "experiments.fleet.worker",
                                  *map(str, fds)], pass_fds=fds, env=env,
                                 stdin=subprocess.DEVNULL)
        for j, i in enumerate(group):
            pairs[i][1].close()
            procs.append(WorkerProc(first_index + i, Connection(pairs[i][0].detach()),
                                    popen if j == 0 else None, kernels))
    return procs


def reap(p: WorkerProc) -> int | str:
    """The exit code of a worker process that died (killed if it has not exited within
    10 s); its pipe closed. ``"unknown"`` where it is not this process's child."""
    import signal

    code: int | str = "unknown"
    if p.popen is not None:
        try:
            code = p.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            code = p.popen.wait()
    p.conn.close()
    return code


def death_of(device: int, code: object, timed_out: bool, timeout: float | None,
             how: str = "") -> tuple[str, str]:
    """(status, reason) of a device whose worker process died mid-task (exit ``code``): the
    words both backends report, so that their records match."""
    import signal

    if timed_out:
        return "timeout", (f"device {device} did not answer within {float(timeout or 0):g} s "
                           f"(faults.timeout): its worker process was killed{how}")
    if isinstance(code, int) and code < 0:
        return "killed", (f"device {device}'s process was killed by "
                          f"{signal.Signals(-code).name} mid-task{how}")
    return "crashed", f"device {device}'s worker process died (exit {code}){how}"


def kill_trees(procs: list[subprocess.Popen[Any]], timeout: float = 30.0) -> None:
    """Kill each process and everything it started (even in new sessions); reap them."""
    import psutil

    for p in procs:
        try:
            kids = psutil.Process(p.pid).children(recursive=True)
        except psutil.Error:
            kids = []
        for q in kids + ([psutil.Process(p.pid)] if p.poll() is None else []):
            try:
                q.kill()
            except psutil.Error:
                pass
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
