"""RAM caps: an RSS sampler thread plus the kernel's high-water mark.

The sampler reads this process's RSS (``/proc/self/statm``, or psutil where there is no
``/proc``: :mod:`device_runtime.rss`) every ``interval`` seconds; the training loop
checks the flag between operations and stops with :class:`MemoryCapExceeded`. The
high-water mark (``VmHWM``) is read at the end, so even a spike shorter than the
sampling interval is reported. :func:`guard_training` wraps a model's training run.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from .. import hooks, rss, switches
from ..errors import ConfigError, MemoryCapExceeded
from ..units import parse_size

if TYPE_CHECKING:
    from ..executor import Executor
    from ..model import Model

DEFAULT_INTERVAL = 0.005  # seconds between samples
NO_RSS = ("a RAM cap needs the process's RSS: this system has no /proc and psutil is not "
          "installed (pip install psutil)")


class _Sampler:
    """One sampler thread per process, armed for each guarded run and idle otherwise
    (starting a thread per run cost 0.4-1 ms, more than training a tiny model)."""

    def __init__(self) -> None:
        self.guard: RamGuard | None = None
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = -1

    def arm(self, guard: RamGuard) -> None:
        with self.lock:
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                self.pid = os.getpid()  # after a fork the parent's thread does not exist
                self.thread = threading.Thread(target=self._run, name="nnfleet-ramguard",
                                               daemon=True)
                self.thread.start()
            self.guard = guard
            self.wake.set()

    def disarm(self, guard: RamGuard) -> None:
        with self.lock:
            if self.guard is guard:
                self.guard = None
                self.wake.clear()

    def _run(self) -> None:
        while True:
            self.wake.wait()
            g = self.guard
            if g is None:
                continue
            time.sleep(g.interval)
            g = self.guard
            if g is not None:
                g.sample()


_SAMPLER = _Sampler()


class RamGuard:
    """Watch the process RSS against ``cap`` bytes while a block of code runs."""

    def __init__(self, cap: int, interval: float = DEFAULT_INTERVAL) -> None:
        if cap <= 0:
            raise ValueError(f"RAM cap must be positive, got {cap}")
        if not rss.can_measure():
            raise ConfigError(NO_RSS)
        self.cap = int(cap)
        self.interval = float(interval)
        self.exceeded = False
        self.max_sampled = 0
        self.samples = 0
        self.sample_seconds = 0.0  # time spent sampling, to report the guard's overhead

    def sample(self) -> None:
        t0 = time.perf_counter()
        r = rss.current_rss()
        self.sample_seconds += time.perf_counter() - t0
        self.samples += 1
        self.max_sampled = max(self.max_sampled, r)
        if r > self.cap:
            self.exceeded = True

    def __enter__(self) -> Self:
        rss.reset_peak()
        _SAMPLER.arm(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _SAMPLER.disarm(self)
        if self.peak_rss > self.cap:
            self.exceeded = True

    @property
    def peak_rss(self) -> int:
        """Largest RSS seen: the OS high-water mark, or the sampler's maximum."""
        return max(rss.peak_rss(), self.max_sampled)

    def check(self) -> None:
        """Raise if the cap was crossed (called by the training loop between operations)."""
        if self.exceeded:
            raise MemoryCapExceeded(needed=self.peak_rss, cap=self.cap,
                                    detail="the process went over its RAM cap during training")


@contextmanager
def guard_training(model: Model, ex: Executor) -> Iterator[None]:
    """Run a block of training steps of ``model`` on ``ex`` under ``model.ram_cap`` (no
    guard without a cap). Records ``peak_rss``, ``guard_overhead`` and ``cap_exceeded``
    on the model; a crossing the sampler saw only at the end still raises."""
    guard = RamGuard(model.ram_cap) if model.ram_cap is not None else None
    if guard is not None:
        guard.__enter__()
        ex.guard = guard
    try:
        with _test_leak():
            yield
    except MemoryCapExceeded:
        model.cap_exceeded = True
        raise
    finally:
        if guard is not None:
            guard.__exit__(None, None, None)
            ex.guard = None
            model.peak_rss = guard.peak_rss
            model.guard_overhead = guard.sample_seconds
            if guard.exceeded and not model.cap_exceeded:
                model.cap_exceeded = True
                raise MemoryCapExceeded(needed=guard.peak_rss, cap=guard.cap,
                                        detail="the process went over its RAM cap")


_LEAKED: list[Any] = []  # what NNFLEET_TEST_ALLOC allocated: kept, as a real leak would be


@contextmanager
def _test_leak() -> Iterator[None]:
    """``NNFLEET_TEST_ALLOC=BYTES@STEP``: allocate memory the plan does not know about at
    that step of the run (a debug switch that lets tests show the RAM guard stopping a
    run)."""
    raw = switches.text("NNFLEET_TEST_ALLOC")
    if not raw:
        yield
        return
    size, _, at = raw.partition("@")
    nbytes, when, step = parse_size(size), int(at or 0), [0]

    def leak() -> None:
        if step[0] == when:
            _LEAKED[:] = [np.ones(nbytes, np.uint8)]
        step[0] += 1

    with hooks.before_each_step(leak):
        yield
