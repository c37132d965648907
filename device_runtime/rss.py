"""Process memory as the OS sees it: current RSS, the high-water mark, free memory.

On Linux every figure is read from ``/proc`` (``/proc/self/statm``, ``VmHWM`` of
``/proc/self/status``, ``MemAvailable`` of ``/proc/meminfo``): the same numbers psutil
reads there, without importing psutil (2 MiB of resident memory). Elsewhere psutil is
used where installed. The high-water mark is the kernel's own, so no sampling interval
can miss a short peak; on Linux it can be reset by writing ``5`` to
``/proc/self/clear_refs``, and :func:`reset_peak` remembers the peak it erases
(:func:`process_peak`), since a reset also erases it from what ``/usr/bin/time`` and
``ru_maxrss`` report. Where ``/proc`` is missing it falls back to ``ru_maxrss``.
"""

from __future__ import annotations

import os
import resource
import sys
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PROC: Any = None  # a psutil.Process, made on first use where /proc is missing
_ERASED = [0]  # the largest high-water mark a reset_peak erased
_HAVE_PSUTIL: list[bool] = []


def _renew() -> None:
    """After fork, measure the child, not the parent."""
    global _PROC
    _PROC = None
    _ERASED[0] = 0


os.register_at_fork(after_in_child=_renew)


def have_psutil() -> bool:
    """Whether psutil imports (asked only where /proc is missing: it costs 2 MiB)."""
    if not _HAVE_PSUTIL:
        try:
            import psutil  # noqa: F401
        except ImportError:
            _HAVE_PSUTIL.append(False)
        else:
            _HAVE_PSUTIL.append(True)
    return _HAVE_PSUTIL[0]


def can_measure() -> bool:
    """Whether this process can read its own RSS (``/proc`` or psutil): a RAM cap needs it."""
    return _statm_rss() is not None or have_psutil()


def process() -> Any:
    """This process as a ``psutil.Process`` (imports psutil; a fresh handle after a fork)."""
    global _PROC
    if _PROC is None:
        import psutil

        _PROC = psutil.Process()
    return _PROC


def _statm_rss() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    r = _statm_rss()
    if r is not None:
        return r
    if have_psutil():
        return int(process().memory_info().rss)
    return _ru_maxrss()  # neither /proc nor psutil: the peak is the best bound known


def _proc_field(path: str, field: str) -> int | None:
    """A ``kB`` field of a /proc status-like file, in bytes."""
    try:
        with open(path, "rb") as f:
            for line in f:
                if line.startswith(field.encode()):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return None


def _ru_maxrss() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru if sys.platform == "darwin" else ru * 1024)


def peak_rss() -> int:
    """High-water mark of RSS since start or since the last :func:`reset_peak`, in bytes."""
    hwm = _proc_field("/proc/self/status", "VmHWM:")
    return hwm if hwm is not None else _ru_maxrss()


def process_peak() -> int:
    """The peak RSS of the whole life of this process, resets or not: what a user measures
    (``/usr/bin/time -v`` would show less after a reset, which erases the kernel's mark)."""
    return max(_ERASED[0], peak_rss())


def reset_peak() -> bool:
    """Reset the high-water mark to the current RSS; False where the OS cannot. The
    erased peak is kept for :func:`process_peak` and every open :func:`open_window`."""
    before = peak_rss()
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    _ERASED[0] = max(_ERASED[0], before)
    for w in _WINDOWS:
        w[0] = max(w[0], before)
    return True


_WINDOWS: list[list[int]] = []


def open_window() -> list[int]:
    """Start measuring a peak from now (the high-water mark is reset); resets made while the
    window is open (a training step's own) keep what they erase in it. Close it with
    :func:`close_window`; read it with :func:`window_peak`."""
    w = [0]
    reset_peak()
    _WINDOWS.append(w)
    return w


def window_peak(w: list[int]) -> int:
    """The peak RSS since ``w`` was opened."""
    return max(w[0], peak_rss())


def close_window(w: list[int]) -> None:
    if w in _WINDOWS:
        _WINDOWS.remove(w)


def memory_available() -> int:
    """Bytes this machine can still give (``MemAvailable``, as psutil's ``available``).
    Models and files that would need more are refused before anything is allocated: with
    overcommit, a huge allocation succeeds and the process is killed only when it touches
    the pages."""
    avail = _proc_field("/proc/meminfo", "MemAvailable:")
    if avail is not None:
        return avail
    if have_psutil():
        import psutil

        return int(psutil.virtual_memory().available)
    try:  # POSIX without /proc or psutil: free physical pages
        return int(os.sysconf("SC_AVPHYS_PAGES")) * _PAGE
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: refuse nothing


_TRIM: list = []


def release_heap(collect: bool = True) -> None:
    """Collect garbage (a few ms; ``collect=False`` skips it) and give free heap pages back
    to the OS (glibc's ``malloc_trim``: microseconds), so that RSS measured next shows live
    memory, not what malloc keeps for later."""
    if collect:
        import gc

        gc.collect()
    if not _TRIM:
        import ctypes

        try:
            _TRIM.append(ctypes.CDLL("libc.so.6").malloc_trim)
        except (OSError, AttributeError):  # not glibc: nothing to trim
            _TRIM.append(None)
    if _TRIM[0] is not None:
        _TRIM[0](0)
