"""Proactive swap, after NNTrainer's swap device and cache pool.

From the execution orders, a tensor idle for a long stretch (typically a forward
activation waiting for its backward use) is written to a swap file right after its last
use before the gap and read back ``lookahead`` orders before it is needed, by a
background thread, into the same pool bytes; in between, the planner lends those bytes
to other tensors (the tensor lives in two stretches at one offset).

A swap file never has a name anyone can see, and nothing of it outlives the process,
even one killed with SIGKILL: see :func:`open_private_file`. I/O uses O_DIRECT
where the file system allows it, so swapped bytes are not kept in the page cache (which
would hide memory from RSS); otherwise each write is followed by fdatasync and
POSIX_FADV_DONTNEED.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np

from . import switches
from .errors import ConfigError

PAGE = 4096
WRITE_SLACK = 2  # a write started after order u must be done before order u + WRITE_SLACK


@dataclass
class SwapSlot:
    """When one block leaves and comes back, and where it lives in the file."""

    group: int
    out_after: int  # the write starts after this order's op
    write_done: int  # ... and must be done before this order's op (end of stretch 1)
    read_at: int  # the read starts before this order's op (start of stretch 2)
    need_at: int  # ... and must be done before this order's op
    file_offset: int = 0
    nbytes: int = 0


def find_slots(group: int, uses: list[int], lookahead: int) -> list[SwapSlot]:
    """Every gap between consecutive uses that swapping across frees at least one order
    (a block read back for one use can go out again before a much later one)."""
    out = []
    for a, b in zip(uses, uses[1:]):
        done, start = a + WRITE_SLACK, b - lookahead  # lookahead 0: read right before use
        if start > done:
            out.append(SwapSlot(group, a, done, start, b))
    return out


def stretches(uses: list[int], slots: list[SwapSlot]) -> list[tuple[int, int]]:
    """The orders a block is in memory: from its first use to its last, minus its gaps."""
    out, begin = [], uses[0]
    for slot in sorted(slots, key=lambda s: s.out_after):
        out.append((begin, slot.write_done))
        begin = slot.read_at
    out.append((begin, uses[-1] + 1))
    return out


def default_swap_dir() -> str:
    """Not /tmp, which may be RAM (tmpfs): swap must reach storage."""
    return switches.text("NNFLEET_SWAP_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "nnfleet", "swap")


def _open(path: str, flags: int) -> tuple[int, bool]:
    """``(fd, direct)``: with O_DIRECT where the file system allows it."""
    if hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o600), True
        except OSError:
            pass
    return os.open(path, flags, 0o600), False


def open_private_file(base: str) -> tuple[int, bool]:
    """A 0600 file under ``base`` that has no name: ``(fd, direct)``.

    On Linux an O_TMPFILE inode, which never has a name, so a kill at any instant leaves
    nothing behind. Elsewhere (or on a file system without O_TMPFILE) the file is created
    in a fresh 0700 directory and both are removed as soon as it is open: a kill within
    those few microseconds is the only way to leave an empty ``swap-*`` folder.
    """
    if hasattr(os, "O_TMPFILE"):
        try:
            return _open(base, os.O_RDWR | os.O_TMPFILE)
        except OSError:  # EOPNOTSUPP, or EISDIR on kernels older than 3.11
            pass
    folder = tempfile.mkdtemp(prefix="swap-", dir=base)  # mode 0700
    path = os.path.join(folder, "pool.swap")
    try:
        return _open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL)
    finally:  # the open file lives on until its fd closes
        if os.path.lexists(path):
            os.unlink(path)
        os.rmdir(folder)


RAM_FILE_SYSTEMS = ("tmpfs", "ramfs", "devtmpfs", "hugetlbfs")


def file_system_type(path: str) -> str | None:
    """The type of the file system that holds ``path`` (Linux: from /proc/self/mounts, the
    mount point that is the longest prefix of its real path); None where that is unknown."""
    real = os.path.realpath(path)
    best, kind = "", None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, parts[2]
    except OSError:
        return None
    return kind


def check_swap_dir(path: str) -> None:
    """Refuse a swap folder whose file system keeps its files in RAM: bytes swapped there
    would not leave memory (they count as shared memory, not as the process's RSS), so the
    cap would only seem to hold."""
    kind = file_system_type(path)
    if kind in RAM_FILE_SYSTEMS:
        raise ConfigError(f"swap folder {path} is on {kind}, which keeps files in RAM: "
                          f"swapping there frees no memory (set NNFLEET_SWAP_DIR to a folder "
                          f"on storage)")


class SwapDevice:
    """A private swap file and one background I/O thread."""

    def __init__(self, nbytes: int, directory: str | None = None) -> None:
        base = directory or default_swap_dir()
        check_swap_dir(base)
        os.makedirs(base, mode=0o700, exist_ok=True)
        self.fd, self.direct = open_private_file(base)
        os.ftruncate(self.fd, max(nbytes, PAGE))
        self.bytes_written = 0
        self.bytes_read = 0
        self.wait_seconds = 0.0  # training thread blocked on I/O: what prefetch should hide
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="nnfleet-swap", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            kind, view, off, event = job
            try:
                if kind == "w":
                    self._write(view, off)
                else:
                    self._read(view, off)
            except BaseException as e:  # surfaced to the training thread at wait()
                self._error = e
            event.set()

    def _write(self, view: np.ndarray, off: int) -> None:
        mv = view.data  # the array's buffer as a memoryview
        done = 0
        while done < len(mv):
            done += os.pwrite(self.fd, mv[done:], off + done)
        self.bytes_written += len(mv)
        if not self.direct:
            os.fdatasync(self.fd)
            os.posix_fadvise(self.fd, off, len(mv), os.POSIX_FADV_DONTNEED)

    def _read(self, view: np.ndarray, off: int) -> None:
        mv = view.data  # the array's buffer as a memoryview
        done = 0
        while done < len(mv):
            n = os.preadv(self.fd, [mv[done:]], off + done)
            if n <= 0:
                raise OSError(f"swap file ended early at byte {off + done}")
            done += n
        self.bytes_read += len(mv)
        if not self.direct:
            os.posix_fadvise(self.fd, off, len(mv), os.POSIX_FADV_DONTNEED)

    def submit(self, kind: str, view: np.ndarray, off: int, event: threading.Event) -> None:
        event.clear()
        self._jobs.put((kind, view, off, event))

    def wait(self, event: threading.Event) -> None:
        if not event.is_set():
            t0 = time.perf_counter()
            event.wait()
            self.wait_seconds += time.perf_counter() - t0
        if self._error is not None:
            err, self._error = self._error, None
            raise OSError(f"swap I/O failed: {err}") from err

    def close(self) -> None:
        if self.fd < 0:
            return
        self._jobs.put(None)
        self._thread.join(timeout=10)
        os.close(self.fd)
        self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
