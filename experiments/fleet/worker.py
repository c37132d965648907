"""A warm worker process of the fleet engine: imports and kernels are loaded once, then it
runs the device program for one device after another.

Started as ``python -m experiments.fleet.worker FD`` with one end of a socket pair; it
imports only device_runtime (never flwr; never numba either with ``NNFLEET_NO_NUMBA=1``, a
numpy-kernel worker), warms up the kernels (numba's are loaded from the cache the engine
compiled them into: a process that compiles keeps ~70 MiB more RSS), sends
:class:`~experiments.fleet.protocol.Ready` and answers the engine's messages (every one a
dataclass of :mod:`experiments.fleet.protocol`): ``Setup`` says where the fleet's data and
the device states are, and how devices run: ``worker`` runs each device in this process
after resetting the kernel's RSS high-water mark, ``fork`` runs each device in a fresh
child forked from this warm process and kills it if its RSS goes over the device's cap (a
watchdog on top of the runtime's own cap checks). ``Tasks`` get one ``Result`` each, the
shared arrays already serialized as Flower stores them (see :func:`npy_bytes`); a task's
``fault`` is None or a kind of :mod:`experiments.fleet.faults` to inject on purpose.
Where the engine made memory cgroups for its run (:mod:`experiments.fleet.cgroup`, named in
the worker's environment), the kernel holds each task to its cap too: worker isolation
limits the worker's own cgroup for the task, fork isolation the cgroup its child enters
(:mod:`experiments.fleet.forking`).

Device state (personal layers, Ditto's model, optimizer state) is kept in one file per
run and device (the device's own storage, ``<state_dir>/<run_key>/``), read before the device
runs and written after; it never goes back to the engine (only shared weights and
metrics do), and one device's state never sits in the memory of the next device.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
import traceback
from dataclasses import replace
from functools import partial
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from experiments.fleet.clean import (
    fix_mmap_threshold,
    forget_others,
    settle,
    warm_device_program,
)
from experiments.fleet.clock import Clock
from experiments.fleet.forking import CHILD, run_forked
from experiments.fleet.protocol import (
    Drop,
    NpyArrays,
    Options,
    Payload,
    Ready,
    Reset,
    Result,
    Setup,
    Stop,
    Task,
    Tasks,
    Timing,
    Timings,
)
from experiments.fleet.statefile import read_state, write_state

if TYPE_CHECKING:
    from device_runtime.device import DeviceSettings
    from experiments.fleet.cgroup_task import Confinement

ORPHAN_POLL_SECONDS = 0.5
PERSONAL_DIR = "personal-model-dir"  # evaluate config key: where to save the evaluated model


class _OverCap(Exception):
    def __init__(self, peak: int) -> None:
        self.peak = float(peak)


def _within(peak: int, cap: int) -> None:
    if peak > cap:
        raise _OverCap(peak)


def npy_bytes(arrays: dict) -> NpyArrays:
    """Arrays as ``(dtype, shape, .npy bytes)``: what a Flower ``Array`` holds, made here in
    the worker (in parallel) rather than in the engine's single server process."""
    import io

    import numpy as np

    out = {}
    for k, a in arrays.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
        out[k] = (str(a.dtype), tuple(int(d) for d in a.shape), buf.getvalue())
    return out


def _run_one(kind: str, state: Any, shared: dict, config: dict, fault: str | None = None,
             options: Options | None = None, parsed: Any = None) -> tuple[Any, dict, Any]:
    """``parsed``: ``config`` as a ``DeviceConfig`` already (parsed once per payload)."""
    from device_runtime.device import evaluate_device, run_device

    cfg = config if parsed is None else parsed
    if kind != "train":
        # the experiment's final evaluation names a folder: the weights evaluated (the
        # device's personalized model) are saved there as <device index>.npz
        keep: dict[str, Any] | None = {} if config.get(PERSONAL_DIR) else None
        metrics = evaluate_device(state, shared, cfg, keep)
        if keep:
            from device_runtime.weights import save_npz_atomic

            save_npz_atomic(os.path.join(str(config[PERSONAL_DIR]), f"{state.device_id}.npz"),
                            keep, fsync=False)  # the experiment syncs the folder once
        return None, metrics, state
    if fault is None:
        return run_device(state, shared, cfg)
    from experiments.fleet.faults import corrupt, corrupt_metrics, striking

    with striking(fault, state.settings):
        out, metrics, new_state = run_device(state, shared, cfg)
    return (corrupt(fault, out, shared, options or Options()), corrupt_metrics(fault, metrics),
            new_state)


class Worker:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.store: Any = None
        self.isolation = "worker"
        self.payloads: dict[int, tuple[dict, dict]] = {}
        self.state_dir = ""
        self.options = Options()  # FaultPlan.options()
        # the run's memory cgroups (experiments.fleet.cgroup): the one limited for each
        # task (the worker's own, or its fork children's), and a v2 fork worker's own leaf
        self.conf: Confinement | None = None
        self.home: Confinement | None = None
        self.clock = Clock()  # where a task's time goes (bench fleet --profile)
        self.folders: set[str] = set()  # state folders known to exist
        self.configs: dict[int, Any] = {}  # payload id -> its parsed DeviceConfig

    def _parsed(self, pid: int, config: dict) -> Any:
        """Payload ``pid``'s config as the device program's ``DeviceConfig``, parsed once
        for all its tasks (a config that does not parse raises for each of them)."""
        if pid not in self.configs:
            from device_runtime.device.config import DeviceConfig

            self.configs[pid] = DeviceConfig.from_mapping(config)
        return self.configs[pid]

    def _state_path(self, run_key: str, device: int) -> str:
        return os.path.join(self.state_dir, run_key, f"{device}.npz")

    def state_for(self, run_key: str, device: int, settings: DeviceSettings) -> Any:
        """Device ``device``'s state: its data from the store, its settings, its stored state."""
        from device_runtime.device import DeviceData, DeviceState

        x, y, xt, yt = self.store.read(device)
        arrays, meta = read_state(self._state_path(run_key, device)) or ({}, {})
        # a copy: a device (or a "cap" fault) may change its settings while it runs
        return DeviceState(device, DeviceData(x, y, xt, yt), replace(settings), arrays, meta)

    def save_state(self, run_key: str, device: int, state: Any,
                   before_rename: Any = None) -> None:
        """The device runtime's own state file (private, atomic; no pickle)."""
        path = self._state_path(run_key, device)
        folder = os.path.dirname(path)
        if folder in self.folders:  # made before (unless removed since: then again)
            try:
                return write_state(state, path, before_rename)
            except FileNotFoundError:
                pass
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.folders.add(folder)
        write_state(state, path, before_rename)

    def task(self, task: Task) -> Result:
        """Run one task; its Result (the device's reply, or why there is none)."""
        from device_runtime import rss

        # worker isolation: the cap holds over the task's whole life (evaluation, the
        # reply's serialization and the state's saving too), as fork isolation's watchdog
        # holds it over the child's; a fork child is measured by that watchdog
        clock = self.clock
        clock.tasks += 1
        cap = task.settings.ram_cap
        if cap and self.isolation != "fork":  # nothing earlier devices left is charged
            with clock("forget others"):
                forget_others(self.payloads[task.pid][1], cap)
        with clock("guard arm"):
            win = rss.open_window() if self.isolation != "fork" else None
            # the kernel's limit too, where the run has cgroups (fork: set for the child)
            limit = self.conf.arm(cap, rss.current_rss()) \
                if self.conf is not None and cap and self.isolation != "fork" else None
        try:
            res = self._task(task, win)
        finally:
            with clock("guard disarm"):
                if win is not None:
                    rss.close_window(win)
                if limit is not None and self.conf is not None:
                    self.conf.disarm()
        # in train records (an evaluate reply carries all its metrics, and every reply
        # must have the same keys, capped or not)
        if self.conf is not None and cap and res.metrics is not None and task.kind == "train":
            res.metrics.setdefault("cgroup-limit", float(limit if limit is not None else
                                                         self.conf.last))
        return res

    def _task(self, task: Task, win: list[int] | None) -> Result:
        from device_runtime import rss

        kind, device, fault, task_id = task.kind, task.device, task.fault, task.task_id
        shared, config = self.payloads[task.pid]
        clock = self.clock
        try:
            with clock("state read"):
                state = self.state_for(task.run_key, device, task.settings)
            with clock("device program"):
                parsed = self._parsed(task.pid, config)
                if self.isolation == "fork":
                    out, metrics, new_state = run_forked(partial(_run_one, parsed=parsed), kind,
                                                         state, shared, config, fault,
                                                         self.options, self.conf)
                else:
                    out, metrics, new_state = _run_one(kind, state, shared, config, fault,
                                                       self.options, parsed)
        except Exception as e:  # noqa: BLE001 - the device's error reply to the server
            from experiments.fleet.faults import DeviceFailure

            if isinstance(e, DeviceFailure):
                return Result(task_id, None, e.metrics, e.reason, None, e.status)
            return Result(task_id, None, {}, f"{type(e).__name__}: {e}",
                          traceback.format_exc(limit=4), "raised")
        cap = task.settings.ram_cap
        with clock("serialize"):
            payload = None if out is None else npy_bytes(out)
        over = rss.window_peak(win) if win is not None and cap else 0
        if cap and over > cap:
            if kind == "evaluate":
                metrics["cap-exceeded"], metrics["ram-cap"] = 1.0, float(cap)
            elif metrics.get("trained"):  # over after training: the OS would have killed it
                metrics.update({"cap-exceeded": 1.0, "trained": 0.0, "needed-bytes": float(over),
                                "peak-rss": float(over), "ram-cap": float(cap)})
                payload, new_state = None, None
        if kind == "evaluate" and metrics.get("cap-exceeded"):  # killed by the watchdog
            why = (f"MemoryCapExceeded: device {device} went over its RAM cap of "
                   f"{int(metrics['ram-cap']):,} bytes while evaluating")
            return Result(task_id, None, {}, why)
        if new_state is not None and kind == "train" and metrics.get("trained"):
            try:
                with clock("state write"):
                    self.save_state(task.run_key, device, new_state,
                                    None if win is None or not cap else
                                    lambda: _within(rss.window_peak(win), cap))
            except _OverCap as e:  # saving took it over: the round's work is lost
                metrics.update({"cap-exceeded": 1.0, "trained": 0.0, "needed-bytes": e.peak,
                                "peak-rss": e.peak, "ram-cap": float(cap or -1)})
                payload = None
        del state, new_state
        # give this device's garbage back to the OS: it must not count in the next one's RSS
        with clock("heap release"):
            rss.release_heap(collect=False)
        return Result(task_id, payload, metrics)

    def leave(self) -> None:
        """Out of the run's cgroups (the engine removes what is left)."""
        for c in (self.conf, self.home):
            if c is not None:
                c.close()
        self.conf = self.home = None

    def serve(self) -> None:
        """Answer the engine's messages until Stop (or the engine's end of the socket closes)."""
        from experiments.fleet.store import StoreReader

        clock = self.clock
        while True:
            try:
                with clock("recv"):
                    msg = self.conn.recv()
            except EOFError:
                return
            match msg:
                case Setup():
                    self.store = StoreReader(msg.store_path)
                    self.isolation = msg.isolation
                    self.state_dir = msg.state_dir
                    self.folders.clear()
                    self.payloads.clear()
                    self.configs.clear()
                    if self.conf is None:
                        from experiments.fleet.cgroup_task import worker_confinement
                        self.conf, self.home = worker_confinement(self.isolation)
                case Options():
                    self.options = msg
                case Payload():
                    self.payloads[msg.pid] = (msg.shared, msg.config)
                    self.configs.pop(msg.pid, None)
                    settle()  # the round's long-lived objects, out of the tasks' collections
                case Drop():
                    self.payloads.pop(msg.pid, None)
                    self.configs.pop(msg.pid, None)
                case Tasks():
                    for t in msg.tasks:
                        res = self.task(t)
                        with clock("send"):
                            self.conn.send(res)
                        del res  # its reply bytes must not sit in memory through the next task
                case Timing():
                    self.conn.send(Timings(*clock.take()))
                case Reset():
                    shutil.rmtree(os.path.join(self.state_dir, msg.run_key), ignore_errors=True)
                    self.folders.clear()
                case Stop():
                    self.leave()
                    return
                case _:
                    raise AssertionError(f"fleet worker: unknown message {msg!r}")


def _exit_when_orphaned(parent: int) -> None:
    """End this worker (and its device process) once the engine's process is gone.

    A worker notices a closed socket only when it reads it; one whose device hangs (or
    computes for long) would outlive an engine that was killed. This thread polls the
    parent pid instead, which changes when the parent dies.
    """
    while os.getppid() == parent:
        time.sleep(ORPHAN_POLL_SECONDS)
    if CHILD[0]:
        try:
            os.kill(CHILD[0], signal.SIGKILL)
        except OSError:
            pass
    os._exit(1)


def main(argv: list[str]) -> int:
    """``worker FD [FD ...]``: warm up once, fork one worker per further FD, serve FD 0."""
    t0 = time.perf_counter()
    # Ctrl-C reaches the whole process group: the engine stops its workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    fds = [int(a) for a in argv]
    fix_mmap_threshold()  # freed blocks go back to the OS: none is charged to the next device
    from device_runtime import rss
    from device_runtime.kernels import USE_NUMBA
    from device_runtime.warmup import warmup

    warmup()  # loads the kernels from numba's cache (the engine compiled them before)
    try:
        warm_device_program()  # the first device maps no more pages than every later one
    except Exception:  # noqa: BLE001 - a task would fail the same way, with its reason
        pass
    mine = fds[0]
    for fd in fds[1:]:
        if os.fork() == 0:  # a worker forked from the warm process: imports and JIT shared
            mine = fd
            break
    for fd in fds:
        if fd != mine:
            os.close(fd)
    conn = Connection(mine)
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    conn.send(Ready(os.getpid(), rss.current_rss(), time.perf_counter() - t0,
                    "numba" if USE_NUMBA else "numpy"))
    try:
        Worker(conn).serve()
    except (EOFError, OSError):  # the engine is gone (killed, or stopped by Ctrl-C): quietly
        if mine != fds[0]:
            os._exit(1)
        return 1
    if mine != fds[0]:
        os._exit(0)  # a forked worker: no interpreter teardown of the parent's state
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
