"""RAM caps: a psutil sampler thread plus the kernel's high-water mark.

The sampler reads this process's RSS every ``interval`` seconds; the training loop
checks the flag between operations and stops with :class:`MemoryCapExceeded`. The
high-water mark (``VmHWM``) is read at the end, so even a spike shorter than the
sampling interval is reported.
"""

from __future__ import annotations

import os
import threading
import time

from . import rss
from .errors import MemoryCapExceeded

DEFAULT_INTERVAL = 0.005  # seconds between samples


class _Sampler:
    """One sampler thread per process, armed for each guarded run and idle otherwise
    (starting a thread per run cost 0.4-1 ms, more than training a tiny model)."""

    def __init__(self) -> None:
        self.guard: "RamGuard | None" = None
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = -1

    def arm(self, guard: "RamGuard") -> None:
        with self.lock:
            if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
                self.pid = os.getpid()  # after a fork the parent's thread does not exist
                self.thread = threading.Thread(target=self._run, name="nnfleet-ramguard",
                                               daemon=True)
                self.thread.start()
            self.guard = guard
            self.wake.set()

    def disarm(self, guard: "RamGuard") -> None:
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
        if r > self.max_sampled:
            self.max_sampled = r
        if r > self.cap:
            self.exceeded = True

    def __enter__(self) -> "RamGuard":
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
