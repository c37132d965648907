"""The engine's side of its worker processes: starting them and talking to one of them."""

from __future__ import annotations

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
READY_TIMEOUT = 120.0  # a cold numba cache compiles every kernel on first start


class WorkerProc:
    """One worker: its end of the socket pair, its pid, and the Popen of a spawned one."""

    def __init__(self, index: int, conn: Connection, popen: subprocess.Popen | None) -> None:
        self.index = index
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


def spawn_workers(n: int, first_index: int = 0, zygote: bool = False) -> list[WorkerProc]:
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
    procs: list[WorkerProc] = []
    for group in groups:
        fds = [pairs[i][1].fileno() for i in group]
        popen = subprocess.Popen([sys.executable, "-m", "experiments.fleet.worker",
                                  *map(str, fds)], pass_fds=fds, env=env,
                                 stdin=subprocess.DEVNULL)
        for j, i in enumerate(group):
            pairs[i][1].close()
            procs.append(WorkerProc(first_index + i, Connection(pairs[i][0].detach()),
                                    popen if j == 0 else None))
    return procs
