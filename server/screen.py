"""Screening of training replies before aggregation: hostile or broken updates never reach
the strategy.

A reply is rejected, with a reason, when it is malformed (not exactly one ArrayRecord and
one MetricRecord, arrays that do not decode, metric keys that differ from the round's
other replies), when ``num-examples`` is not a positive finite number, when its arrays do
not match the global ones (missing or unknown keys, another shape or dtype), when a value
is NaN or infinite, or when its update is absurdly large. Error replies (a device that
failed) pass through untouched: the strategy counts them as failures, as before.

The norm rule, on the update ``d_i = w_i - w`` of reply ``i`` against the global shared
weights ``w`` the round started from (all arrays flattened into one float64 vector):

1. ``||d_i|| > max-update-norm * ||w||`` is rejected (``norm``): an update larger than the
   whole model by that factor is not training. Skipped when ``||w|| == 0``.
2. Of the replies still standing, when there are at least three,
   ``||d_i|| > max-norm-over-median * median_j ||d_j||`` is rejected (``norm-median``).
   The median cannot be dragged up by fewer than half of the replies, so scaled updates
   from a minority are caught however large their factor, while honest spread (devices
   with more data take more steps) stays far below the bound. Skipped when the median
   is 0 (most devices did not change the weights: nothing to compare with).

The claimed ``num-examples`` weighs a reply in FedAvg, so a device that lies about it steers
the aggregate (one of ten claiming 1e9 examples would own it). Two rules hold it:

3. A claim above ``max-num-examples`` (the most training examples a device can have; 0 =
   no bound) is rejected (``num-examples``). ``nnfleet simulate`` knows every device's data
   and can set it to the largest training split; a deployment sets it in its run config.
4. A node's data does not grow between rounds: a claim above what the same node claimed in
   the first round it was accepted is rejected (``num-examples-grew``). The server keeps
   these first claims with its state (``claims``), so they survive a resume.

So a lying device weighs at most what the largest honest device (rule 3) or its own first
claim (rule 4) does.

Rules 1 and 2 are off when their factor is 0. Defaults: rule 1 at 10, rule 2 off. Measured on
the shipped configs (experiments/configs), the largest honest ``||d_i|| / ||w||`` was 0.69
for the MLPs and 3.0 for the CNN with batch-norm (its moving statistics are shared and
move a lot); the largest honest ratio to the round's median was 2.5 for FedAvg but 16 for
FedPer, FedRep and LG-FedAvg late in training (most devices have converged, one that was
offline for rounds has not). A peer bound tight enough to matter would reject honest
devices there, so it is opt-in (``experiments/configs/robust.toml`` uses it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import ArrayRecord, Message

WEIGHT_KEY = "num-examples"


@dataclass(frozen=True)
class ScreenRules:
    """What the server accepts (run config keys in brackets)."""

    max_update_norm: float = 10.0  # [max-update-norm] ||d_i|| / ||w|| above this: rejected
    max_norm_over_median: float = 0.0  # [max-norm-over-median] ||d_i|| / median above this
    enabled: bool = True  # [screen-updates] false: every reply goes to the strategy as is
    max_num_examples: float = 0.0  # [max-num-examples] claims above it rejected; 0 = none

    @classmethod
    def from_run_config(cls, cfg: dict[str, Any]) -> ScreenRules:
        from device_runtime.errors import ConfigError

        d = cls()
        rules = cls(float(cfg.get("max-update-norm", d.max_update_norm)),
                    float(cfg.get("max-norm-over-median", d.max_norm_over_median)),
                    _flag(cfg.get("screen-updates", d.enabled)),
                    float(cfg.get("max-num-examples", d.max_num_examples)))
        for name in ("max_update_norm", "max_norm_over_median", "max_num_examples"):
            v = getattr(rules, name)
            if not (np.isfinite(v) and v >= 0):
                raise ConfigError(f"{name.replace('_', '-')} must be a finite number >= 0 "
                                  f"(0 turns the rule off), got {v}")
        return rules


def _flag(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() not in ("0", "false", "no", "off")


@dataclass(frozen=True)
class Rejection:
    """One rejected reply: the node it came from, a kind, and a one-line reason."""

    node: int
    # malformed | metrics | num-examples | num-examples-grew | keys | shape | dtype |
    # non-finite | norm | norm-median
    kind: str
    reason: str

    def as_dict(self, server_round: int) -> dict[str, Any]:
        return {"round": server_round, "node": self.node, "kind": self.kind,
                "reason": self.reason}


def screen_replies(replies: Iterable[Message], global_arrays: ArrayRecord,
                   rules: ScreenRules = ScreenRules(), layout: ArrayRecord | None = None,
                   claims: dict[str, float] | None = None
                   ) -> tuple[list[Message], list[Rejection]]:
    """Split training replies into those the strategy may aggregate and the rejected ones.

    ``global_arrays``: the weights the round started from (updates are measured from them);
    ``layout``: the keys, shapes and dtypes a reply must have (default: those of
    ``global_arrays``; the model's own, since a strategy may change the dtype: FedAdam's
    aggregate is float64 while devices train and reply in float32). Error replies are kept
    (the strategy logs and skips them); the order of the kept replies is the order they
    came in, so aggregation is the same as without screening. ``claims``: each node's
    first accepted ``num-examples`` (by node id, as text), checked by rule 4 and updated
    with the nodes accepted now for the first time.
    """
    replies = list(replies)
    if not rules.enabled:
        return replies, []
    glob = {k: a.numpy() for k, a in global_arrays.items()}
    spec = {k: (np.dtype(a.dtype), tuple(a.shape)) for k, a in (layout or global_arrays).items()}
    rejected: list[Rejection] = []
    norms: dict[int, float] = {}  # index in replies -> ||d_i||
    metric_keys: dict[int, frozenset[str]] = {}
    for i, m in enumerate(replies):
        if m.has_error():
            continue
        node = m.metadata.src_node_id
        why = _check_one(m, glob, spec, rules.max_num_examples, (claims or {}).get(str(node)))
        if isinstance(why, tuple):
            rejected.append(Rejection(node, *why))
        else:
            norms[i] = why
            metric_keys[i] = frozenset(next(iter(m.content.metric_records.values())).keys())
    # Flower refuses a whole round whose replies disagree on metric keys: the odd ones go
    common = Counter(metric_keys.values()).most_common(1)
    for i, keys in metric_keys.items():
        if keys != common[0][0]:
            extra, missing = sorted(keys - common[0][0]), sorted(common[0][0] - keys)
            rejected.append(Rejection(replies[i].metadata.src_node_id, "metrics",
                                      f"metric keys differ from the round's other replies "
                                      f"(unknown {extra}, missing {missing})"))
            del norms[i]
    _norm_rules(replies, norms, _norm(glob), rules, rejected)
    gone = {id(replies[i]) for i in range(len(replies))
            if not replies[i].has_error() and i not in norms}
    if claims is not None:
        for i in norms:
            m = replies[i]
            n = next(iter(m.content.metric_records.values()))[WEIGHT_KEY]
            claims.setdefault(str(m.metadata.src_node_id), float(cast(float, n)))
    return [m for m in replies if id(m) not in gone], rejected


def _norm(arrays: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.square(a, dtype=np.float64).sum() for a in arrays.values())))


def _check_one(m: Message, glob: dict[str, np.ndarray],
               spec: dict[str, tuple[np.dtype, tuple[int, ...]]], most: float = 0.0,
               first: float | None = None) -> tuple[str, str] | float:
    """``(kind, reason)`` when reply ``m`` is unusable, else the norm of its update."""
    c = m.content
    if len(c.array_records) != 1 or len(c.metric_records) != 1:
        return ("malformed", (f"expected one ArrayRecord and one MetricRecord, got "
                              f"{len(c.array_records)} and {len(c.metric_records)}"))
    n = next(iter(c.metric_records.values())).get(WEIGHT_KEY)
    if isinstance(n, list) or n is None or not np.isfinite(n) or n <= 0:
        return ("num-examples", f"'{WEIGHT_KEY}' must be a positive finite number, got {n!r}")
    if most and n > most:
        return ("num-examples", f"claims {n:g} examples, more than any device has "
                                f"(max-num-examples = {most:g})")
    if first is not None and n > first:
        return ("num-examples-grew", f"claims {n:g} examples, {first:g} in its first "
                                     f"accepted round (a device's data does not grow)")
    record = next(iter(c.array_records.values()))
    missing, unknown = sorted(set(spec) - set(record)), sorted(set(record) - set(spec))
    if missing or unknown:
        return ("keys", (f"arrays do not match the global ones: missing {missing}, "
                         f"unknown {unknown}"))
    sq = 0.0
    for k, (dtype, shape) in spec.items():
        try:
            a = record[k].numpy()
        except Exception as e:  # noqa: BLE001 - whatever the bytes are, they are not an array
            return ("malformed", f"{k} does not decode as an array: {type(e).__name__}: {e}")
        if a.dtype != dtype:
            return ("dtype", f"{k} is {a.dtype}, expected {dtype}")
        if a.shape != shape:
            return ("shape", f"{k} has shape {a.shape}, expected {shape}")
        bad = a.size - int(np.isfinite(a).sum())
        if bad:
            return ("non-finite", f"{k} has {bad} NaN or infinite values of {a.size}")
        sq += float(np.square(np.subtract(a, glob[k], dtype=np.float64)).sum())
    return float(np.sqrt(sq))


def _norm_rules(replies: list[Message], norms: dict[int, float], w_norm: float,
                rules: ScreenRules, rejected: list[Rejection]) -> None:
    """Apply the two norm rules of the module docstring, removing rejected entries."""
    # the median is taken after the first rule, so that absurd updates do not raise it
    for kind, factor, what, name in (
            ("norm", rules.max_update_norm, "the global weights' norm", "max-update-norm"),
            ("norm-median", rules.max_norm_over_median, "the round's median",
             "max-norm-over-median")):
        ref = w_norm if kind == "norm" else \
            float(np.median(list(norms.values()))) if len(norms) >= 3 else 0.0
        if factor <= 0 or ref <= 0:
            continue
        for i, d in list(norms.items()):
            if d > factor * ref:
                rejected.append(Rejection(replies[i].metadata.src_node_id, kind,
                                          f"update norm {d:.4g} is {d / ref:.3g} x {what} "
                                          f"{ref:.4g} ({name} = {factor:g})"))
                del norms[i]
