"""Flower's ``Grid`` on the fleet engine: any ServerApp and strategy run on it unchanged.

Node ``i + 1`` is device ``i``. A TRAIN message to a device that is offline this round
(its profile's availability) or drops out mid-round (its dropout) gets no reply, as with
a real node that vanished; a device that cannot train within its RAM cap answers with an
error reply naming the bytes it needed. EVALUATE messages always reach every device: they
are the experiment's measurement of personalized accuracy, not part of the federation.
Every reply is also logged, one record per device and message, through ``on_record``.

A record's ``status``: ``ok``, ``offline``, ``dropped``, ``no-data``, ``cap-exceeded``, or,
for a device that gave no update, ``raised`` (``error`` in evaluate/final records),
``killed``, ``timeout``, ``crashed`` (see :mod:`experiments.fleet.faults`; each failure
also reaches the strategy as an error reply with the reason). A fault injected on purpose
is named in the record's ``fault``. A train round with fewer successful replies than the
engine's ``faults.min_replies`` is not aggregated: every reply is turned into an error.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, cast

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode, SType
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from device_runtime.device import REPLY_KEYS

from .engine import FleetEngine, Payloads
from .protocol import Job, TaskResult


def _content(r: TaskResult) -> RecordDict:
    """The reply a device's ClientApp would send (see device_runtime.flower_client)."""
    keys = REPLY_KEYS if r.kind == "train" else r.metrics
    content = RecordDict({"metrics": MetricRecord({k: float(r.metrics[k]) for k in keys})})
    if r.kind == "train":
        assert r.shared is not None
        content["arrays"] = ArrayRecord({k: Array(dtype=d, shape=s, stype=SType.NUMPY, data=b)
                                         for k, (d, s, b) in r.shared.items()})
    return content


class FleetGrid(Grid):
    """A Grid whose nodes are the engine's devices; ``run_key`` namespaces device state."""

    def __init__(self, engine: FleetEngine, run_key: str = "run", seed: int = 0,
                 on_record: Callable[[dict[str, Any]], None] | None = None,
                 on_progress: Callable[[str, int, int], None] | None = None,
                 keep_messages: bool = False,
                 on_round: Callable[[dict[str, Any]], None] | None = None,
                 on_round_end: Callable[[int, Context], None] | None = None,
                 rounds: list[dict[str, Any]] | None = None) -> None:
        """``keep_messages=True`` (tests): keep every message in ``sent``/``received``; by
        default a reply is dropped once the server has pulled it, so memory stays flat
        over rounds. ``on_round``: called with each train round's
        entry of ``rounds`` once its replies are in. ``on_round_end(server_round,
        context)``: called by the server's round loop (server/rounds.py) once a round's
        state is stored in ``context.state`` (a checkpoint can be taken there).
        ``rounds``: the entries of the rounds run before (a resumed run); the grid appends
        to this very list."""
        self.engine = engine
        self.on_round_end = on_round_end
        self.keep_messages = keep_messages
        self.on_round = on_round
        self.run_key = run_key
        self.seed = seed
        self.on_record = on_record
        self.on_progress = on_progress
        self._run = Run.create_empty(run_id=abs(hash(run_key)) % (1 << 62))
        self._pending: dict[str, Message] = {}
        self._replies: dict[str, Message] = {}
        # per train round: devices, simulated seconds
        self.rounds: list[dict[str, Any]] = [] if rounds is None else rounds
        self.sent: list[Message] = []  # every instruction message (tests inspect them)
        self.received: list[Message] = []  # every reply handed to the ServerApp

    # ------------------------------------------------------------------ Grid API
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(range(1, self.engine.num_devices + 1))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            m.metadata.__dict__["_run_id"] = self._run.run_id
            self._pending[m.metadata.message_id] = m
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        if self._pending:
            self._execute()
        out = []
        for mid in message_ids:
            r = self._replies.pop(mid, None)
            if r is not None:
                out.append(r)
        if self.keep_messages:
            self.received += out
        return out

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    # ------------------------------------------------------------------ execution
    def _online(self, rnd: int) -> tuple[np.ndarray, np.ndarray]:
        """Availability and dropout draws of round ``rnd`` (reproducible from the seed)."""
        rng = np.random.default_rng([self.seed, rnd, 11])
        n = self.engine.num_devices
        avail = np.array([p.availability for p in self.engine.profiles])
        drop = np.array([p.dropout for p in self.engine.profiles])
        return rng.random(n) < avail, rng.random(n) < drop

    def _execute(self) -> None:
        pending, self._pending = list(self._pending.values()), {}
        if self.keep_messages:
            self.sent += pending
        payloads: Payloads = {}
        pid_of: dict[int, int] = {}
        tasks: list[Job] = []
        by_device: dict[tuple[str, int], Message] = {}
        kinds = {MessageType.TRAIN: "train", MessageType.EVALUATE: "evaluate"}
        rnd = 0
        records = []
        for m in pending:
            kind = kinds.get(m.metadata.message_type)
            device = m.metadata.dst_node_id - 1
            if kind is None or not 0 <= device < self.engine.num_devices:
                self._reply_error(m, ErrorCode.UNKNOWN,
                                  f"fleet engine: no device {m.metadata.dst_node_id} or "
                                  f"unsupported message type {m.metadata.message_type}")
                continue
            key = id(m.content)
            if key not in pid_of:  # strategies send one RecordDict to many nodes: convert once
                pid_of[key] = len(payloads)
                cfg: dict[str, Any] = dict(cast(ConfigRecord, m.content["config"])) \
                    if "config" in m.content else {}
                arrays = {k: a.numpy() for k, a in cast(ArrayRecord, m.content["arrays"]).items()} \
                    if "arrays" in m.content else {}
                payloads[pid_of[key]] = (arrays, cfg)
                rnd = int(cfg.get("server-round", rnd))
            tasks.append(Job(kind, device, pid_of[key]))
            by_device[(kind, device)] = m
        online, dropped = self._online(rnd)
        faults = self.engine.faults.for_round(rnd, self.engine.num_devices) \
            if self.engine.faults.active else {}
        run_tasks = []
        for job in tasks:
            if job.kind == "train" and not online[job.device]:
                records.append(self._record("train", rnd, job.device, "offline", {}))
            elif job.kind == "train" and dropped[job.device]:
                records.append(self._record("train", rnd, job.device, "dropped", {}))
            elif job.kind == "train":
                run_tasks.append(Job(job.kind, job.device, job.payload, faults.get(job.device)))
            else:
                run_tasks.append(job)
        total, done = len(run_tasks), [0]
        phase = "train" if any(t.kind == "train" for t in run_tasks) else "evaluate"

        sim = [0.0]
        ok_train: list[Message] = []  # instructions whose reply is an update

        def got(r: TaskResult) -> None:  # replies are built while other devices still run
            m = by_device[(r.kind, r.device)]
            if r.error is not None:
                status = r.status or "error"
                if r.kind != "train" and status == "raised":
                    status = "error"  # evaluate/final records keep their historic name
                self._reply_error(m, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, r.error)
            elif r.kind == "train" and not r.metrics.get("trained"):
                status = "cap-exceeded" if r.metrics.get("cap-exceeded") else "no-data"
                needed = int(r.metrics.get("needed-bytes", -1))
                cap = int(r.metrics.get("ram-cap", -1))
                reason = (f"MemoryCapExceeded: device {r.device} cannot train within its RAM cap: "
                          f"needs {needed:,} bytes but the cap is {cap:,} bytes"
                          if status == "cap-exceeded" else f"device {r.device} has no data")
                self._reply_error(m, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason)
            else:
                status = "ok"
                self._replies[m.metadata.message_id] = Message(_content(r), reply_to=m)
                if r.kind == "train":
                    ok_train.append(m)
            rec = self._record(r.kind, rnd, r.device, status, r.metrics, r.error, r)
            if r.fault is not None:
                rec["fault"] = r.fault
            if r.kind == "train" and status == "ok":
                sim[0] = max(sim[0], rec["sim_seconds"])
            records.append(rec)
            done[0] += 1
            if self.on_progress is not None:
                self.on_progress(phase, done[0], total)

        t0 = time.perf_counter()
        self.engine.run(payloads, run_tasks, self.run_key, got)
        wall = time.perf_counter() - t0
        need = self.engine.faults.min_replies
        aggregated = not (phase == "train" and len(ok_train) < need)
        if not aggregated:  # too few updates: the strategy gets none of them
            for m in ok_train:
                self._reply_error(m, ErrorCode.UNKNOWN,
                                  f"round {rnd} not aggregated: {len(ok_train)} successful "
                                  f"replies, fewer than [faults] min-replies = {need}")
        if phase == "train":
            self.rounds.append({"round": rnd, "devices": total, "wall_seconds": wall,
                                "sim_seconds": sim[0], "aggregated": aggregated,
                                "ok": sum(1 for r in records if r["status"] == "ok")})
        if self.on_record is not None:
            for rec in records:
                self.on_record(rec)
        if phase == "train" and self.on_round is not None:
            self.on_round(self.rounds[-1])

    def _reply_error(self, m: Message, code: int, reason: str) -> None:
        self._replies[m.metadata.message_id] = Message(Error(code, reason), reply_to=m)

    def _record(self, kind: str, rnd: int, device: int, status: str, metrics: dict[str, float],
                error: str | None = None, result: TaskResult | None = None) -> dict[str, Any]:
        prof = self.engine.profiles[device]
        rec: dict[str, Any] = {"run": self.run_key, "phase": kind, "round": rnd, "device": device,
                               "device_id": self.engine.device_ids[device], "status": status,
                               # the device's kernel kind, and the RSS of its worker before
                               # any device (what that kind costs)
                               "kernels": (result.kernels if result and result.kernels
                                           else self.engine.kernels[device])}
        if result is not None and result.worker_rss:
            rec["worker-rss"] = float(result.worker_rss)
        rec.update({k: (float(v) if isinstance(v, (int, float, np.floating)) else v)
                    for k, v in metrics.items()})
        secs = float(metrics.get("train-seconds", 0.0) or 0.0)
        rec["sim_seconds"] = max(secs, 0.0) / prof.speed
        if error:
            rec["error"] = error
        return rec

    # ------------------------------------------------------------------ outside Flower
    def evaluate_all(self, shared: dict[str, np.ndarray], config: dict[str, Any],
                     rnd: int = -1) -> list[dict[str, Any]]:
        """Every device's personalized accuracy now (the experiment's final measurement)."""
        results = self.engine.run({0: (shared, dict(config))},
                                  [Job("evaluate", d, 0) for d in range(self.engine.num_devices)],
                                  self.run_key)
        recs = [self._record("final", rnd, r.device, "ok" if r.error is None else "error",
                             r.metrics, r.error, r)
                for r in sorted(results, key=lambda r: r.device)]
        if self.on_record is not None:
            for rec in recs:
                self.on_record(rec)
        return recs


def run_serverapp(server_app: Any, grid: FleetGrid, run_config: dict[str, Any],
                  run_id: int | None = None, state: RecordDict | None = None) -> Any:
    """Run a Flower ``ServerApp`` on ``grid`` as Flower's runtimes do; returns its Context.

    Like ``flwr.superlink.runtime.run_serverapp``, this sets the process's task identity
    (which ``Message`` reads for its metadata) before calling the app. ``state``: the
    context's initial state (a stored round to resume from, see server/rounds.py).
    """
    from flwr.app import Context
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    run = Run.create_empty(run_id if run_id is not None else grid.run.run_id)
    grid.set_run(run)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=SUPERLINK_NODE_ID, node_config={},
                      state=RecordDict() if state is None else state,
                      run_config=dict(run_config))
    server_app(grid, context)
    return context
