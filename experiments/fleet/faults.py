"""Faults injected on purpose: what goes wrong on a device, and how the fleet copes.

The ``[faults]`` table of an experiment config (every key optional; see
``experiments/configs/faults.toml``)::

    rate = 0.05          # probability that a device's train task of a round gets a fault
    kinds = ["kill", "hang"]  # kinds the rate draws from, uniformly (default: all), or a
                              # table of weights: {kill = 2, nan = 1}
    seed = 0             # default: the experiment's seed
    timeout = 60.0       # seconds a device task may run before it is killed ("timeout")
    min-replies = 0      # a train round with fewer successful replies is not aggregated
    scale = 100.0        # "scale": the update (returned - received weights) times this
    dtype = "float64"    # "dtype": the first returned array in this dtype
    [faults.at]          # explicit faults: an absent list means every device / round
    kill = {devices = [3], rounds = [2]}  # device 3 is killed in round 2

Faults are drawn per train round and device from the seed alone (never from what ran
before), so a rerun injects the same faults in the same places. An explicit entry wins
over the rate; between explicit entries the first kind in :data:`KINDS` order wins.

Every kind is one entry of :data:`FAULTS` (a :class:`DeviceFault` or a
:class:`HostileUpdate`): a new fault kind is one function and one entry there.

Device faults (the device gives no update; the status its record gets):

- ``kill``: the device's process is SIGKILLed at its second training step: in ``worker``
  isolation the worker process itself dies and the engine respawns it ("killed");
- ``cap``: the device allocates past its RAM cap (by 4 MiB, less than a memory cgroup's
  headroom) at its first training step; the runtime's own guard (or the fork watchdog)
  catches it ("cap-exceeded"). A device without a cap gets one for that round: its RSS +
  256 MiB;
- ``oom``: the same, but in one native call (``np.empty(n).fill(1)``) of more than the
  whole cap: where devices run in memory cgroups (:mod:`.cgroup`) the kernel kills the
  process, reported "cap-exceeded" with ``oom`` in the reason; elsewhere the guard catches
  it after the call;
- ``hang``: the device stops responding at its second training step; the per-task
  ``timeout`` kills it ("timeout");
- ``raise``: the device raises at its second training step ("raised").

Hostile updates (the device trains and replies normally; the server must reject them):
``nan`` / ``inf`` (one such value in every returned array), ``scale``, ``shape`` (the first
array one element longer, flattened), ``dtype``, ``missing`` (the last key dropped),
``extra`` (an unknown key ``injected:extra``), ``claim`` (the update untouched, its
``num-examples`` claimed as 1e9: the server's screening rejects it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_runtime.errors import ConfigError

from .fault_kinds import (
    DEVICE_FAULTS,
    EXPECTED_STATUS,
    FAULTS,
    HOSTILE,
    KINDS,
    DeviceFault,
    InjectedFault,
    corrupt,
    corrupt_metrics,
    striking,
)
from .protocol import Options

__all__ = ["DEVICE_FAULTS", "DTYPES", "EXPECTED_STATUS", "FAULTS", "HOSTILE", "KEYS", "KINDS",
           "DeviceFailure", "FaultPlan", "InjectedFault", "corrupt", "corrupt_metrics",
           "striking"]

DTYPES = ("float64", "float16", "int64", "int32")
KEYS = ("rate", "kinds", "seed", "timeout", "min-replies", "scale", "dtype", "at")


class DeviceFailure(Exception):
    """A device task that ended without any reply: ``status`` ("killed", "timeout")."""

    def __init__(self, status: str, reason: str,
                 metrics: dict[str, float] | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason
        self.metrics = dict(metrics or {})  # what is known of the task (its cap, ...)


@dataclass
class FaultPlan:
    """Which device gets which fault in which round, and how the fleet copes."""

    rate: float = 0.0  # probability of a fault per device and train round
    kinds: tuple[str, ...] = KINDS  # what the rate draws from
    weights: tuple[float, ...] = ()  # of ``kinds``; empty = uniform
    seed: int = 0
    timeout: float | None = None  # seconds per device task; None = wait for ever
    min_replies: int = 0  # fewer successful train replies: the round is not aggregated
    scale: float = 100.0
    dtype: str = "float64"
    # kind -> (devices or None = all, rounds or None = all)
    explicit: dict[str, tuple[frozenset[int] | None, frozenset[int] | None]] = \
        field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.rate > 0 or bool(self.explicit)

    def for_round(self, rnd: int, n: int) -> dict[int, str]:
        """``{device: kind}`` of the devices that get a fault in train round ``rnd``."""
        out: dict[int, str] = {}
        if self.rate > 0:
            rng = np.random.default_rng([self.seed, int(rnd), 23])
            hit = rng.random(n) < self.rate
            p = np.asarray(self.weights, np.float64) if self.weights else None
            which = rng.choice(len(self.kinds), n, p=None if p is None else p / p.sum())
            out = {int(d): self.kinds[which[d]] for d in np.flatnonzero(hit)}
        for kind in reversed(KINDS):  # earlier kinds overwrite later ones
            if kind not in self.explicit:
                continue
            devices, rounds = self.explicit[kind]
            if rounds is None or rnd in rounds:
                for d in (range(n) if devices is None else devices):
                    if 0 <= d < n:
                        out[d] = kind
        return out

    def options(self) -> Options:
        """What a worker needs to carry faults out."""
        return Options(timeout=self.timeout, scale=self.scale, dtype=self.dtype)

    @classmethod
    def from_config(cls, cfg: dict[str, Any] | None, seed: int = 0) -> FaultPlan:
        """The plan of a ``[faults]`` table; a bad value is a one-line ConfigError."""
        cfg = dict(cfg or {})
        unknown = sorted(set(cfg) - set(KEYS))
        if unknown:
            raise ConfigError(f"faults: unknown key '{unknown[0]}' (known: {', '.join(KEYS)})")
        plan = cls(seed=_int(cfg, "seed", seed, 0))
        plan.rate = _num(cfg, "rate", 0.0, 0.0, 1.0)
        kinds = cfg.get("kinds", list(KINDS))
        if isinstance(kinds, dict):
            plan.kinds = tuple(kinds)
            plan.weights = tuple(_num(kinds, k, 0.0, 0.0, math.inf, "faults.kinds.") for k in kinds)
            if plan.kinds and sum(plan.weights) <= 0:
                raise ConfigError("faults.kinds: the weights must not all be 0")
        elif isinstance(kinds, list) and all(isinstance(k, str) for k in kinds):
            plan.kinds = tuple(kinds)
        else:
            raise ConfigError(f"faults.kinds must be a list of kinds or a table of weights, "
                              f"got {kinds!r}")
        for k in plan.kinds:
            if k not in KINDS:
                raise ConfigError(f"faults.kinds: unknown fault kind {k!r} (known: "
                                  f"{', '.join(KINDS)})")
        if plan.rate > 0 and not plan.kinds:
            raise ConfigError("faults.kinds is empty but faults.rate > 0")
        if cfg.get("timeout") is not None:
            plan.timeout = _num(cfg, "timeout", 0.0, 1e-3, math.inf)
        plan.min_replies = _int(cfg, "min-replies", 0, 0)
        plan.scale = _num(cfg, "scale", 100.0, -math.inf, math.inf)
        plan.dtype = str(cfg.get("dtype", "float64"))
        if plan.dtype not in DTYPES:
            raise ConfigError(f"faults.dtype must be one of {', '.join(DTYPES)}, "
                              f"got {plan.dtype!r}")
        at = cfg.get("at", {})
        if not isinstance(at, dict):
            raise ConfigError(f"faults.at must be a table of kind = {{devices, rounds}}, "
                              f"got {at!r}")
        for kind, spec in at.items():
            if kind not in KINDS:
                raise ConfigError(f"faults.at: unknown fault kind {kind!r} (known: "
                                  f"{', '.join(KINDS)})")
            plan.explicit[kind] = _where(spec, kind)
        for kind, fault in FAULTS.items():
            injected = kind in plan.explicit or (plan.rate > 0 and kind in plan.kinds)
            if injected and isinstance(fault, DeviceFault) and fault.needs_timeout \
                    and plan.timeout is None:
                raise ConfigError(f"faults.timeout must be set when {kind} faults are injected "
                                  f"({fault.needs_timeout})")
        return plan


def _num(cfg: dict[str, Any], key: str, default: float, lo: float, hi: float,
         prefix: str = "faults.") -> float:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi \
            or math.isnan(v):
        raise ConfigError(f"{prefix}{key} must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _int(cfg: dict[str, Any], key: str, default: int, lo: int) -> int:
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"faults.{key} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _where(spec: Any, kind: str) -> tuple[frozenset[int] | None, frozenset[int] | None]:
    if not isinstance(spec, dict) or set(spec) - {"devices", "rounds"}:
        raise ConfigError(f"faults.at.{kind} must be a table {{devices = [...], rounds = "
                          f"[...]}}, got {spec!r}")
    out: list[frozenset[int] | None] = []
    for key, lo in (("devices", 0), ("rounds", 1)):
        v = spec.get(key)
        if v is not None and (not isinstance(v, list) or any(
                isinstance(x, bool) or not isinstance(x, int) or x < lo for x in v)):
            raise ConfigError(f"faults.at.{kind}.{key} must be a list of integers >= {lo}, "
                              f"got {v!r}")
        out.append(None if v is None else frozenset(v))
    return out[0], out[1]
