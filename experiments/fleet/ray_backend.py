"""The fleet engine on a Ray cluster: the same warm capped workers, one Ray actor each.

:class:`RayEngine` has the interface of :class:`~.engine.FleetEngine` (``run``, ``reset``,
``close``, ``profiles``, ``faults``, ...), so :class:`~.grid.FleetGrid`, the ServerApp, its
strategies, screening, faults, checkpoints and resume run on it unchanged. Each worker is a
:class:`~.ray_actor.NodeWorker` actor driving the local engine's own worker process, placed
on a node by Ray's ``memory`` resource (:mod:`.ray_place`): the sum of the caps on a node
never exceeds what the node offers. Devices are dealt to workers as in the local engine (by
kernel kind, ``rank % workers``); a worker is sent its devices' data once, and keeps their
states on its node. A device's new state also comes back to this process (the head), into
``state_dir`` as the local engine's workers write it there, so checkpoints and ``--resume``
work as on one machine; a device that moves to another worker (its node died, or a resumed
run) takes its state with its first task. Bytes moved are counted in :attr:`moved`.

A node that dies (or any actor that does) costs the tasks of its workers not yet answered:
each gets a failed result (status ``node-lost``, or ``crashed`` when only the actor died),
and before the next run the dead workers are replaced where a node has room, else their
devices go to the surviving workers of their kind with room for their caps.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any, Self

from device_runtime.errors import ConfigError

from .backends import need_ray
from .engine import Payloads
from .faults import FaultPlan
from .kernels import NUMBA_MIN_CAP, device_kernels, split_workers
from .procs import READY_TIMEOUT
from .profiles import DeviceProfile
from .protocol import Job, Options, Task, TaskResult
from .ray_actor import NodeWorker, Shard, States, _stamp, write_private
from .ray_nodes import Slot as _Slot
from .ray_nodes import node_gone, rooms_left
from .ray_place import place, reservation

CHUNK = 32  # at most this many tasks per call to a worker (results stream back per call)


class RayEngine:
    """FleetEngine's interface over workers that are Ray actors on a cluster's nodes."""

    def __init__(self, fleet: Any, profiles: list[DeviceProfile] | None = None,
                 workers: int = 0, isolation: str = "worker", workdir: str | None = None,
                 zygote: bool = False, faults: FaultPlan | dict[str, Any] | None = None,
                 seed: int = 0, state_dir: str | None = None, kernels: str = "auto",
                 numba_min_cap: int = NUMBA_MIN_CAP, warm_models: list[str] | None = None,
                 quiet: bool = False, address: str | None = None,
                 node_dir: str | None = None, cgroups: str = "auto") -> None:
        """FleetEngine's arguments (``zygote`` has no meaning here; ``cgroups``: Ray's
        workers are not confined in memory cgroups yet, the runtime's guard holds each cap,
        so ``require`` is refused and ``auto`` says so once), plus ``address``: the
        Ray cluster to join (None: the one this process is connected to, else a local Ray
        of ``workers`` CPUs started here and stopped by :meth:`close`); ``node_dir``:
        where workers keep data and states on their nodes (default: the node's ``$TMPDIR``
        or ``/tmp``)."""
        if cgroups == "require":
            raise ConfigError("[fleet] cgroups = \"require\" is not available on the Ray "
                              "backend (its workers are held by the runtime's guard): use "
                              "auto or off, or the local backend")
        if cgroups == "auto":
            from .cgroup import note_once
            note_once("cgroups: not on the Ray backend; the runtime's guard holds each cap")
        ray = need_ray()
        self.t_start = time.perf_counter()
        if isolation not in ("worker", "fork"):
            raise ConfigError(f"isolation must be worker or fork, got {isolation!r}")
        if workers < 0:
            raise ConfigError(f"workers must be >= 0, got {workers}")
        self.isolation, self.faults = isolation, (
            faults if isinstance(faults, FaultPlan) else FaultPlan.from_config(faults, seed))
        self.warm_models, self.node_dir, self.respawned = list(warm_models or []), node_dir, 0
        self.lost_nodes: set[str] = set()  # nodes seen dead (Ray's node table can lag)
        self._why = ""  # the first line of the last actor error
        self.moved = {"data_to_nodes": 0, "states_to_nodes": 0, "states_to_head": 0,
                      "updates_to_head": 0}
        self._own_ray = not ray.is_initialized()
        self.ray_start_seconds = 0.0  # joining (or starting) Ray, part of startup_seconds
        if self._own_ray:
            if address:
                ray.init(address=address, logging_level="WARNING", log_to_driver=False)
            else:  # this machine only, sized to the workers (not the whole shared machine)
                ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                         object_store_memory=256 << 20, logging_level="WARNING",
                         log_to_driver=False)
            self.ray_start_seconds = time.perf_counter() - self.t_start
        self.slots: list[_Slot] = []
        try:
            self._start(fleet, profiles, workers, kernels, numba_min_cap, workdir, state_dir)
        except BaseException:
            self.close()
            raise

    def _start(self, fleet: Any, profiles: list[DeviceProfile] | None, workers: int,
               kernels: str, numba_min_cap: int, workdir: str | None,
               state_dir: str | None) -> None:
        ray = need_ray()
        caps: list[int | None] = [p.ram_cap for p in profiles] if profiles else [None]
        kinds = device_kernels(caps, kernels, numba_min_cap)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        n = workers or int(sum(n["Resources"].get("CPU", 0) for n in nodes)) or 1
        fleet = fleet() if callable(fleet) else fleet  # made while nothing waits on it yet
        self.fleet = fleet
        self.num_devices = len(fleet.devices)
        self.device_ids = [d.device_id for d in fleet.devices]
        self.profiles = profiles or [DeviceProfile(i, None, 1.0, 1.0, 0.0)
                                     for i in range(self.num_devices)]
        if len(self.profiles) != self.num_devices:
            raise ConfigError(f"{len(self.profiles)} profiles for {self.num_devices} devices")
        self.kernels = kinds if profiles else kinds[:1] * self.num_devices
        for kind, count in split_workers(n, self.kernels).items():
            mine = [d for d in range(self.num_devices) if self.kernels[d] == kind]
            for j in range(count):
                devs = mine[j::count]  # rank % workers, as the local engine deals them
                if devs:
                    self.slots.append(_Slot(len(self.slots), kind, reservation(
                        [self.profiles[d].ram_cap for d in devs]), devs))
        self.owner = {d: s for s in self.slots for d in s.devices}
        rooms = list(rooms_left([], set()).values())
        for s, node in zip(self.slots, place([s.reserve for s in self.slots], rooms)):
            s.node = node
        self._own_dir = workdir is None
        self.workdir = workdir or tempfile.mkdtemp(prefix="nnfleet-ray-head-")
        self.state_dir = state_dir or os.path.join(self.workdir, "states")
        self.meta = {"name": fleet.name, "input_shape": list(fleet.input_shape),
                     "num_classes": int(fleet.num_classes), "num_devices": self.num_devices,
                     "device_ids": self.device_ids}
        for s in self.slots:
            self._launch(s)
        if any(s.node not in self.lost_nodes for s in self._ready(self.slots)):
            raise RuntimeError(f"Ray backend: a worker died as it started: {self._why}")
        self._heal()  # workers whose node died as they started go elsewhere
        self.procs = self.slots  # FleetEngine's name for its workers
        self.holder: dict[tuple[str, int], tuple[int, Any]] = {}  # state: worker, head stamp
        self._running = False
        self._ids = itertools.count()
        self.startup_seconds = time.perf_counter() - self.t_start

    # ------------------------------------------------------------------ workers
    def _launch(self, s: _Slot) -> None:
        """Start the actor of ``s`` on its node and send it its devices' data."""
        ray = need_ray()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = ray.remote(NodeWorker).options(
            num_cpus=1, memory=s.reserve, max_restarts=0, max_concurrency=1,
            # the actor unpickles device settings, which imports the runtime: without numba
            # (~75 MiB); NodeWorker gives its numba workers their numba back
            runtime_env={"env_vars": {"NNFLEET_NO_NUMBA": "1"}},
            scheduling_strategy=NodeAffinitySchedulingStrategy(s.node, soft=False))
        s.actor = actor.remote(s.kind, self.isolation, self._options(), self.warm_models,
                               self.node_dir)
        s.alive = True
        s.pending = s.actor.add_devices.remote(self.meta, self._shard(s.devices))

    def _shard(self, devices: list[int]) -> Shard:
        out: Shard = []
        for d in devices:
            dev = self.fleet.devices[d]
            arrays = (dev.x_train, dev.y_train, dev.x_test, dev.y_test)
            self.moved["data_to_nodes"] += sum(int(a.nbytes) for a in arrays)
            out.append((d, arrays))
        return out

    def _ready(self, slots: list[_Slot]) -> list[_Slot]:
        """Wait for ``slots`` to hold their devices; the ones whose actor died meanwhile."""
        ray = need_ray()
        refs = [s.pending for s in slots] + [s.actor.info.remote() for s in slots]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=READY_TIMEOUT)
        if len(done) < len(refs):
            raise RuntimeError(f"Ray backend: {len(slots)} workers did not start within "
                               f"{READY_TIMEOUT:g} s (resources held by other jobs?)")
        died = []
        for s, packed, info in zip(slots, refs[:len(slots)], refs[len(slots):]):
            try:
                ray.get(packed)
                s.info = ray.get(info)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnschedulableError) as e:
                self._why = str(e).strip().splitlines()[0]
                self._died(s, e)
                died.append(s)
        return died

    def _died(self, s: _Slot, err: BaseException) -> str:
        """``s``'s actor raised ``err``: ``node-lost`` if its node died (never used again),
        else ``crashed``."""
        s.alive, s.status = False, "node-lost" if node_gone(s.node, err) else "crashed"
        self.lost_nodes |= {s.node} if s.status == "node-lost" else set()
        return s.status

    def _options(self) -> Options:
        return self.faults.options() if self.faults.active or self.faults.timeout \
            else Options()

    def _heal(self) -> None:
        """Replace dead workers where a node has room; else deal their devices to the
        surviving workers of their kind that reserve enough for the devices' caps. Again
        while a node dies under the workers just given devices (each time one node fewer);
        a replacement that crashes as it starts is an error."""
        while died := self._ready(self._replace()):
            if any(s.node not in self.lost_nodes for s in died):
                raise RuntimeError(f"Ray backend: a replacement worker died as it started: "
                                   f"{self._why}")

    def _replace(self) -> list[_Slot]:
        """One pass of :meth:`_heal`: the workers started or given devices."""
        dead = [s for s in self.slots if not s.alive]
        if not dead:
            return []
        rooms = rooms_left([s for s in self.slots if s.alive], self.lost_nodes)
        fresh: list[_Slot] = []
        grown: dict[int, tuple[_Slot, list[int]]] = {}
        for s in dead:
            self.slots.remove(s)  # the states it held are gone with it
            self.holder = {k: v for k, v in self.holder.items() if v[0] != s.index}
            try:
                s.node = place([s.reserve], list(rooms.values()))[0]
            except ConfigError:  # no room: the survivors take its devices
                for d in s.devices:
                    need = reservation([self.profiles[d].ram_cap])
                    fit = [t for t in self.slots if t.alive and t.kind == s.kind
                           and t.reserve >= need and t not in fresh]  # not one just started
                    self.owner.pop(d, None)
                    if fit:
                        t = min(fit, key=lambda t: (len(t.devices), t.index))
                        t.devices.append(d)
                        grown.setdefault(t.index, (t, []))[1].append(d)
                        self.owner[d] = t
                continue
            self.slots.append(s)
            self._launch(s)
            self.respawned += 1
            fresh.append(s)
        for t, devs in grown.values():
            t.pending = t.actor.add_devices.remote(self.meta, self._shard(devs))
            fresh.append(t)
        self.slots.sort(key=lambda s: s.index)
        self.procs = self.slots
        return fresh

    # ------------------------------------------------------------------ running
    def run(self, payloads: Payloads, jobs: Iterable[Job], run_key: str,
            on_result: Callable[[TaskResult], None] | None = None) -> list[TaskResult]:
        """Run ``jobs`` on the workers; every job gets exactly one result (FleetEngine.run)."""
        ray = need_ray()
        self._heal()
        self._running = True  # until every result is in (close() then need not wait)
        out: list[TaskResult] = []

        def report(r: TaskResult) -> None:
            out.append(r)
            if on_result is not None:
                on_result(r)

        queue: dict[int, list[Task]] = {}
        for job in jobs:
            task = Task(next(self._ids), job.kind, job.device, job.payload,
                        self.profiles[job.device].device_settings(), run_key, job.fault)
            s = self.owner.get(job.device)
            if s is None:
                report(self._lost(task, "node-lost", "no node has room for it"))
            else:
                queue.setdefault(s.index, []).append(task)
        slot = {s.index: s for s in self.slots}
        ref = ray.put(payloads)
        opts = self._options()
        pending: dict[Any, tuple[_Slot, list[Task]]] = {}
        for i, tasks in queue.items():
            s = slot[i]
            s.actor.begin.remote(ref, opts)
            size = max(1, min(CHUNK, math.ceil(len(tasks) / 4)))
            for k in range(0, len(tasks), size):
                chunk = tasks[k:k + size]
                pending[s.actor.run.remote(chunk, self._states_for(s, chunk))] = (s, chunk)
            s.actor.end.remote()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for r in done:
                s, chunk = pending.pop(r)
                try:
                    results = ray.get(r)
                except ray.exceptions.RayActorError as e:  # the actor (or its node) died
                    status = self._died(s, e) if s.alive else s.status  # once per worker
                    why = f"its node {s.node[:12]} died mid-round" if status == "node-lost" \
                        else "its Ray worker died mid-round"
                    for task in chunk:
                        report(self._lost(task, status, why, s))
                    continue
                for res, state in results:
                    self._took(s, run_key, res, state)
                    report(res)
        self._running = False
        return out

    def _lost(self, task: Task, status: str, why: str, s: _Slot | None = None) -> TaskResult:
        how = " (injected fault)" if task.fault else ""
        return TaskResult(task.task_id, task.device, task.kind, None, {},
                          f"device {task.device} gave no reply: {why}{how}", None, status,
                          task.fault, s.kind if s else self.kernels[task.device],
                          int(s.info.get("worker_rss", 0)) if s else 0)

    def _path(self, run_key: str, device: int) -> str:
        return os.path.join(self.state_dir, run_key, f"{device}.npz")

    def _states_for(self, s: _Slot, tasks: list[Task]) -> States:
        """The head's state of each device whose worker ``s`` does not hold it yet."""
        out: States = {}
        for t in tasks:
            key, path = (t.run_key, t.device), self._path(t.run_key, t.device)
            stamp = _stamp(path)
            if self.holder.get(key) != (s.index, stamp):
                if stamp is None:
                    out[key] = None
                else:
                    with open(path, "rb") as f:
                        out[key] = f.read()
                    self.moved["states_to_nodes"] += len(out[key] or b"")
                self.holder[key] = (s.index, stamp)
        return out

    def _took(self, s: _Slot, run_key: str, r: TaskResult, state: bytes | None) -> None:
        """Keep the head's copy of a device's new state (as the local engine's file)."""
        if r.shared is not None:
            self.moved["updates_to_head"] += sum(len(b) for _, _, b in r.shared.values())
        if state is not None:
            path = self._path(run_key, r.device)
            write_private(path, state)
            self.moved["states_to_head"] += len(state)
            self.holder[(run_key, r.device)] = (s.index, _stamp(path))

    def reset(self, run_key: str) -> None:
        """Forget every device's state for ``run_key``, on the nodes and here."""
        for s in self.slots:
            if s.alive:
                s.actor.reset.remote(run_key)
        self.holder = {k: v for k, v in self.holder.items() if k[0] != run_key}
        shutil.rmtree(os.path.join(self.state_dir, run_key), ignore_errors=True)

    def wait_ready(self) -> None:
        """Every worker is warm (a dead one is replaced before the next run)."""

    # ------------------------------------------------------------------ reports
    def kernel_summary(self) -> dict[str, Any]:
        """FleetEngine's summary, plus where each worker runs (``placement``)."""
        out: dict[str, Any] = {}
        for kind in sorted(set(self.kernels)):
            mine = [s for s in self.slots if s.kind == kind]
            out[kind] = {"devices": self.kernels.count(kind), "workers": len(mine),
                         "worker_rss": sorted(int(s.info.get("worker_rss", 0)) for s in mine),
                         "in_use": sorted({s.info.get("kernels", kind) for s in mine})}
        compile_info: dict[str, Any] = next(
            (s.info["compile"] for s in self.slots if s.info.get("compile")), {})
        return {"per_kind": out, "compile": compile_info, "placement": self.placement()}

    def placement(self) -> dict[str, dict[str, Any]]:
        """Per node: its workers, the Ray memory they reserve, their devices."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.slots:
            n = out.setdefault(s.node, {"workers": 0, "reserved": 0, "devices": 0})
            n["workers"] += 1
            n["reserved"] += s.reserve
            n["devices"] += len(s.devices)
        return out

    def node_of(self, device: int) -> str:
        """The Ray node id of the worker that trains ``device`` now."""
        return self.owner[device].node

    def close(self) -> None:
        """Stop every worker (and the local Ray this engine started); remove its folder."""
        ray = need_ray()
        live = [s for s in getattr(self, "slots", []) if s.actor is not None and s.alive]
        # stopped mid-run (Ctrl-C): the actors are busy, so they are killed at once (their
        # worker processes end by themselves, their folders stay in the nodes' $TMPDIR)
        if live and ray.is_initialized() and not getattr(self, "_running", False):
            ray.wait([s.actor.close.remote() for s in live], num_returns=len(live),
                     timeout=30)
            for s in live:
                ray.kill(s.actor)
        self.slots = []
        if getattr(self, "_own_dir", False):
            shutil.rmtree(self.workdir, ignore_errors=True)
        if getattr(self, "_own_ray", False) and ray.is_initialized():
            ray.shutdown()
            self._own_ray = False

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
