"""The server's round loop: what ``flwr.serverapp.strategy.Strategy.start`` does, with the
training replies screened (:mod:`server.screen`) before ``aggregate_train`` and the
server's state kept in ``context.state`` after every round, so a run can be resumed.

Per round, exactly as ``start()`` (Flower 1.41): ``configure_train`` ->
``grid.send_and_receive`` -> ``aggregate_train`` -> ``configure_evaluate`` ->
``grid.send_and_receive`` -> ``aggregate_evaluate``; the aggregation maths stays the
strategy's. Between the two steps the rejected replies are taken out and reported.

``context.state`` after round ``r`` holds ``"server-arrays"`` (the global shared weights)
and ``"server-state"``: a ConfigRecord with ``round``, ``random-state`` (Python's
``random``, with which Flower samples nodes), ``strategy`` (its state attributes as JSON,
:mod:`server.strategy_state`; their arrays, FedAdam's moments, FedAvgM's momentum..., in
the ArrayRecord ``"server-strategy-arrays"``), ``history`` (aggregated metrics per round) and
``rejected`` (every rejected reply: round, node, kind, reason) and ``claims`` (each node's
first accepted ``num-examples``, server/screen.py rule 4), the last four as JSON.
A run started with that state in its context continues at round ``r + 1`` and computes
what an uninterrupted run would have. A grid that has a round-end hook (a
:class:`RoundEndGrid`, such as the fleet engine's ``FleetGrid``, which checkpoints there)
gets it called right after the state is stored; Flower's own grids have none.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import INFO
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid
from flwr.supercore import log

from .screen import ScreenRules, screen_replies
from .strategy_state import decode_into, encode


@runtime_checkable
class RoundEndGrid(Protocol):
    """A grid with a hook called as ``on_round_end(server_round, context)`` once a round's
    state is stored (None: no hook)."""

    on_round_end: Callable[[int, Context], None] | None


@dataclass
class RoundState:
    """Where a run stands after ``round`` complete rounds."""

    round: int
    arrays: ArrayRecord
    history: dict[str, dict[int, dict[str, Any]]] = field(
        default_factory=lambda: {"train": {}, "evaluate": {}})
    rejected: list[dict[str, Any]] = field(default_factory=list)
    claims: dict[str, float] = field(default_factory=dict)  # node -> first num-examples

    def store(self, context: Context, strategy: Any) -> None:
        """Put this state, Python's ``random`` and the strategy's into ``context.state``."""
        tree, arrays = encode(strategy)
        context.state["server-arrays"] = self.arrays
        context.state["server-strategy-arrays"] = ArrayRecord(
            {k: Array(np.ascontiguousarray(a)) for k, a in arrays.items()})
        context.state["server-state"] = ConfigRecord({
            "round": self.round, "random-state": json.dumps(random.getstate()),
            "strategy": json.dumps(tree),
            "history": json.dumps(self.history), "rejected": json.dumps(self.rejected),
            "claims": json.dumps(self.claims)})

    @classmethod
    def resume(cls, context: Context, strategy: Any) -> RoundState | None:
        """The state stored in ``context.state``, with ``random`` and ``strategy`` restored
        to where they were; None for a fresh run."""
        if "server-state" not in context.state:
            return None
        s = cast(ConfigRecord, context.state["server-state"])
        version, internal, gauss = json.loads(str(s["random-state"]))
        random.setstate((version, tuple(internal), gauss))
        saved = context.state.get("server-strategy-arrays")
        arrays = {k: a.numpy() for k, a in cast(ArrayRecord, saved).items()} if saved else {}
        decode_into(strategy, json.loads(str(s["strategy"])), arrays)
        history = {phase: {int(r): m for r, m in per.items()}
                   for phase, per in json.loads(str(s["history"])).items()}
        shared = cast(ArrayRecord, context.state["server-arrays"])
        return cls(int(cast(int, s["round"])), shared, history, json.loads(str(s["rejected"])),
                   json.loads(str(s.get("claims", "{}"))))


def run_rounds(strategy: Any, grid: Grid, context: Context, initial: ArrayRecord,
               num_rounds: int, timeout: float, train_config: ConfigRecord,
               evaluate_config: ConfigRecord, rules: ScreenRules) -> RoundState:
    """Run rounds ``1..num_rounds`` (or the rest of them, when ``context.state`` holds a
    stored state) and return the final state."""
    state = RoundState.resume(context, strategy) or RoundState(0, initial)
    log(INFO, "Starting %s strategy at round %d of %d", type(strategy).__name__,
        state.round + 1, num_rounds)
    strategy.summary()
    on_round_end = grid.on_round_end if isinstance(grid, RoundEndGrid) else None
    for rnd in range(state.round + 1, num_rounds + 1):
        log(INFO, "[ROUND %s/%s]", rnd, num_rounds)
        replies = grid.send_and_receive(
            messages=strategy.configure_train(rnd, state.arrays, train_config, grid),
            timeout=timeout)
        accepted, rejected = screen_replies(replies, state.arrays, rules, layout=initial,
                                            claims=state.claims)
        for r in rejected:
            log(INFO, "\t> Rejected the reply of node %d: %s", r.node, r.reason)
        state.rejected += [r.as_dict(rnd) for r in rejected]
        arrays, metrics = strategy.aggregate_train(rnd, accepted)
        if arrays is not None:
            state.arrays = arrays
        _keep(state.history["train"], rnd, metrics)
        replies = grid.send_and_receive(
            messages=strategy.configure_evaluate(rnd, state.arrays, evaluate_config, grid),
            timeout=timeout)
        _keep(state.history["evaluate"], rnd, strategy.aggregate_evaluate(rnd, replies))
        state.round = rnd
        state.store(context, strategy)
        if on_round_end is not None:
            on_round_end(rnd, context)
    return state


def _keep(history: dict[int, dict[str, Any]], rnd: int, metrics: MetricRecord | None) -> None:
    if metrics is not None:
        log(INFO, "\t└──> Aggregated MetricRecord: %s", metrics)
        history[rnd] = dict(metrics)


def rejection_summary(rejected: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of rejected replies: in total, per round, per kind and per node."""
    out: dict[str, Any] = {"total": len(rejected), "per_round": {}, "per_kind": {},
                           "per_node": {}}
    for r in rejected:
        for key, val in (("per_round", r["round"]), ("per_kind", r["kind"]),
                         ("per_node", r["node"])):
            out[key][str(val)] = out[key].get(str(val), 0) + 1
    return out
