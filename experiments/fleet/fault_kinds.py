"""The fault kinds, one entry each in :data:`FAULTS`, and how a device carries them out.

A :class:`DeviceFault` strikes inside the device while it trains (through a
``device_runtime.hooks`` step hook), so the device gives no update; a
:class:`HostileUpdate` lets the device train and reply, with its returned shared weights
corrupted. A new fault kind is one function and one entry of :data:`FAULTS` (its order is
the precedence between explicit faults, see :meth:`FaultPlan.for_round`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .protocol import Options

Arrays = dict[str, np.ndarray]
STRIKE_STEP = 1  # kill/hang/raise strike before this training step (0-based): mid-training
UNCAPPED_HEADROOM = 256 << 20  # the cap a "cap" fault gives a device that has none
# how far past its cap a "cap" fault goes: less than a memory cgroup's headroom over the cap
# (experiments.fleet.cgroup.HEADROOM), so that the runtime's own guard stops it cleanly
OVERSHOOT = 4 << 20
OOM_OVERSHOOT = 64 << 20  # an "oom" fault's one allocation: the whole cap and this much more
CLAIM = 1e9  # the num-examples a "claim" fault reports


class InjectedFault(RuntimeError):
    """What a device raises for a ``raise`` fault."""


@dataclass(frozen=True)
class DeviceFault:
    """A fault that strikes inside the device while it trains: it gives no update."""

    status: str  # what the device's record says
    strike: Callable[[Any, list[np.ndarray]], None]  # (settings, memory held until the end)
    step: int = STRIKE_STEP  # strikes right before this training step (0-based)
    late: bool = True  # strikes after training, when training ended before ``step``
    prepare: Callable[[Any], None] | None = None  # on the settings, before training
    needs_timeout: str = ""  # why faults.timeout must be set with this kind ("" = it need not)


@dataclass(frozen=True)
class HostileUpdate:
    """The device trains and replies normally, its update corrupted; the server must reject
    it (its record says "ok")."""

    corrupt: Callable[[Arrays, Arrays, Options], None]  # (a copy of the returned shared
    # weights, changed in place; the received weights; the plan's options)
    metrics: Callable[[dict[str, float]], None] | None = None  # changes the reply's metrics


# ---------------------------------------------------------------- device faults
def _kill(settings: Any, hold: list[np.ndarray]) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _hang(settings: Any, hold: list[np.ndarray]) -> None:
    while True:
        time.sleep(3600)


def _raise(settings: Any, hold: list[np.ndarray]) -> None:
    raise InjectedFault(f"injected fault: the device raised at training step {STRIKE_STEP}")


def _give_cap(settings: Any) -> None:
    """A device without a cap gets one for the round: its RSS + 256 MiB."""
    from device_runtime import rss

    if not settings.ram_cap:
        settings.ram_cap = (rss.current_rss() + UNCAPPED_HEADROOM) >> 26 << 26


def _overshoot(settings: Any, hold: list[np.ndarray]) -> None:
    from device_runtime import rss

    # touched pages, so the RSS really grows past the cap
    hold.append(np.ones(max(settings.ram_cap - rss.current_rss(), 0) + OVERSHOOT, np.uint8))


def _oom(settings: Any, hold: list[np.ndarray]) -> None:
    # one native call that touches more than the whole cap: no sampler between two
    # operations can stop it, only the kernel (a memory cgroup) or, after it, the guard
    a = np.empty((settings.ram_cap + OOM_OVERSHOOT) // 8)
    a.fill(1)
    hold.append(a)


# ---------------------------------------------------------------- hostile updates
def _poison(bad: float, out: Arrays, received: Arrays, options: Options) -> None:
    for k, a in out.items():
        a = out[k] = np.array(a, copy=True)
        if a.size and a.dtype.kind == "f":
            a.flat[0] = bad


def _scale(out: Arrays, received: Arrays, options: Options) -> None:
    f = float(options.scale)
    for k, a in out.items():
        r = received.get(k, np.zeros_like(a))
        out[k] = (r + f * (a - r)).astype(a.dtype)


def _shape(out: Arrays, received: Arrays, options: Options) -> None:
    first = next(iter(out))
    a = out[first]
    out[first] = np.append(a.reshape(-1), np.zeros(1, a.dtype))


def _dtype(out: Arrays, received: Arrays, options: Options) -> None:
    first = next(iter(out))
    out[first] = out[first].astype(str(options.dtype))


def _missing(out: Arrays, received: Arrays, options: Options) -> None:
    del out[next(reversed(out))]


def _extra(out: Arrays, received: Arrays, options: Options) -> None:
    out["injected:extra"] = np.zeros(4, np.float32)


def _same(out: Arrays, received: Arrays, options: Options) -> None:
    pass


def _claim(metrics: dict[str, float]) -> None:
    metrics["num-examples"] = CLAIM


FAULTS: dict[str, DeviceFault | HostileUpdate] = {
    "kill": DeviceFault("killed", _kill),
    "cap": DeviceFault("cap-exceeded", _overshoot, step=0, late=False, prepare=_give_cap),
    "hang": DeviceFault("timeout", _hang,
                        needs_timeout="a hung device is only stopped by the timeout"),
    "raise": DeviceFault("raised", _raise),
    "nan": HostileUpdate(partial(_poison, np.nan)),
    "inf": HostileUpdate(partial(_poison, np.inf)),
    "scale": HostileUpdate(_scale),
    "shape": HostileUpdate(_shape),
    "dtype": HostileUpdate(_dtype),
    "missing": HostileUpdate(_missing),
    "extra": HostileUpdate(_extra),
    # a native over-allocation past the cap (the kernel kills it where the device runs
    # in a memory cgroup), and an inflated num-examples claim (the server rejects it)
    "oom": DeviceFault("cap-exceeded", _oom, step=0, late=False, prepare=_give_cap),
    "claim": HostileUpdate(_same, _claim),
}
DEVICE_FAULTS = tuple(k for k, f in FAULTS.items() if isinstance(f, DeviceFault))
HOSTILE = tuple(k for k, f in FAULTS.items() if isinstance(f, HostileUpdate))
KINDS = tuple(FAULTS)
# what a device fault's record says (hostile kinds reply normally: "ok")
EXPECTED_STATUS = {k: f.status for k, f in FAULTS.items() if isinstance(f, DeviceFault)}


# ---------------------------------------------------------------- in the device
@contextmanager
def striking(kind: str | None, settings: Any) -> Iterator[None]:
    """Carry out device fault ``kind`` (if it is one) while the device trains in this block.

    The fault strikes from inside the training loop (a ``device_runtime.hooks`` step
    hook), so a kill or a hang happens mid-training; if training ends first, it strikes
    right after (unless the kind says otherwise).
    """
    fault = FAULTS.get(kind) if kind is not None else None
    if not isinstance(fault, DeviceFault):
        yield
        return
    from device_runtime.hooks import before_each_step

    if fault.prepare is not None:
        fault.prepare(settings)
    hold: list[np.ndarray] = []
    calls = [0]

    def strike() -> None:
        calls[0] = -1 << 30  # once only
        fault.strike(settings, hold)

    def before_step() -> None:
        if calls[0] == fault.step:
            strike()
        calls[0] += 1

    try:
        with before_each_step(before_step):
            yield
        if calls[0] >= 0 and fault.late:  # training ended before the strike
            strike()
    finally:
        hold.clear()


def corrupt_metrics(kind: str | None, metrics: dict[str, float]) -> dict[str, float]:
    """The reply's metrics made hostile by ``kind`` (in place), if it changes them."""
    fault = FAULTS.get(kind) if kind is not None else None
    if isinstance(fault, HostileUpdate) and fault.metrics is not None and metrics.get("trained"):
        fault.metrics(metrics)
    return metrics


def corrupt(kind: str, out: Arrays, received: Arrays, options: Options) -> Arrays:
    """The device's returned shared weights made hostile by ``kind`` (if it is a hostile
    kind; ``out`` itself is left as it was)."""
    fault = FAULTS.get(kind)
    if not isinstance(fault, HostileUpdate) or not out:
        return out
    out = dict(out)
    fault.corrupt(out, received, options)
    return out
