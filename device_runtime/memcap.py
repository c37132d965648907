"""RAM caps: a psutil sampler thread plus the kernel's high-water mark.

The sampler reads this process's RSS every ``interval`` seconds; the training loop
checks the flag between operations and stops with :class:`MemoryCapExceeded`. The
high-water mark (``VmHWM``) is read at the end, so even a spike shorter than the
sampling interval is reported.
"""

from __future__ import annotations

import threading
import time

import psutil

from . import rss
from .errors import MemoryCapExceeded

DEFAULT_INTERVAL = 0.005  # seconds between samples


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
        self._stop = threading.Event()
        self._proc = psutil.Process()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        proc, cap = self._proc, self.cap
        while not self._stop.wait(self.interval):
            t0 = time.perf_counter()
            r = proc.memory_info().rss
            self.sample_seconds += time.perf_counter() - t0
            self.samples += 1
            if r > self.max_sampled:
                self.max_sampled = r
            if r > cap:
                self.exceeded = True

    def __enter__(self) -> "RamGuard":
        rss.reset_peak()
        self._thread = threading.Thread(target=self._run, name="nnfleet-ramguard", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self.peak_rss > self.cap:
            self.exceeded = True

    @property
    def peak_rss(self) -> int:
        """Largest RSS seen: the OS high-water mark, or the sampler's maximum."""
        return max(rss.peak_rss(), self.max_sampled)

    def check(self) -> None:
        """Raise if the cap was crossed (called by the training loop between steps/ops)."""
        if self.exceeded:
            raise MemoryCapExceeded(needed=self.peak_rss, cap=self.cap,
                                    detail="the process went over its RAM cap during training")
