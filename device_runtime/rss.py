"""Process memory as the OS sees it: current RSS (psutil) and the high-water mark.

The high-water mark is the kernel's own (``VmHWM``), so no sampling interval can miss a
short peak; on Linux it can be reset by writing ``5`` to ``/proc/self/clear_refs``.
Where that is not available it falls back to ``ru_maxrss`` (never reset).
"""

from __future__ import annotations

import os
import resource
import sys

import psutil

_PROC = psutil.Process()


def _renew() -> None:
    """After fork, measure the child, not the parent."""
    global _PROC
    _PROC = psutil.Process()


os.register_at_fork(after_in_child=_renew)


def process() -> psutil.Process:
    """This process (a fresh handle after a fork)."""
    return _PROC


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    return int(_PROC.memory_info().rss)


def _vm_field(field: str) -> int | None:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(field.encode()):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def peak_rss() -> int:
    """High-water mark of RSS since start or since the last :func:`reset_peak`, in bytes."""
    hwm = _vm_field("VmHWM:")
    if hwm is not None:
        return hwm
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(ru if sys.platform == "darwin" else ru * 1024)


def reset_peak() -> bool:
    """Reset the high-water mark to the current RSS; False where the OS cannot."""
    try:
        with open(f"/proc/{os.getpid()}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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
