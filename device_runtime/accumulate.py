"""Gradient accumulation without a resident buffer (issue 13).

:class:`~device_runtime.optimizers.Accumulator` keeps one float32 buffer as large as all
trainable weights (58 MiB for vgg16), so micro-batches alone could not lower a step's
floor. :class:`SwappedAccumulator` keeps only part of the sum in RAM (``resident_bytes``,
whatever the cap leaves over) and the rest in a private swap file (the same kind of file
as the step's swap, :func:`~device_runtime.swap.open_private_file`), moved through one
small page-aligned buffer: a micro-batch's gradient block is scaled, read-added-written
chunk by chunk, and on the last micro-batch the summed block goes straight to the real
optimizer (right after it is computed, as an unaccumulated step applies it), so there is
no flush pass and no block is ever whole in RAM.

The arithmetic is exactly :class:`Accumulator`'s (``g * (1/k)`` added to a sum that
starts at 0.0, in micro-batch order, then the real optimizer on the sum), element by
element, so the weights are bit-identical to the resident accumulation; both equal the
full batch within float32 summation order.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

import numpy as np

from .optimizers import Accumulator, Optimizer
from .swap import PAGE, check_swap_dir, default_swap_dir, open_private_file

# The one RAM buffer disk-accumulated blocks move through (page-aligned, O_DIRECT-safe).
BUFFER_BYTES = 256 * 1024


def _page_up(n: int) -> int:
    return -(-n // PAGE) * PAGE


def accumulator_bytes(params: list[tuple[str, int]], resident_bytes: int) -> int:
    """RAM a :class:`SwappedAccumulator` over ``params`` holds with that resident budget:
    the whole parameters that fit in it plus the I/O buffer."""
    return sum(4 * n for _, n in _resident(params, resident_bytes)) + BUFFER_BYTES


def _resident(params: list[tuple[str, int]], budget: int) -> list[tuple[str, int]]:
    """Parameters kept in RAM: whole ones, in model order, while they fit the budget."""
    out, used = [], 0
    for key, n in params:
        if used + 4 * n <= budget:
            out.append((key, n))
            used += 4 * n
    return out


class SwappedAccumulator(Optimizer):
    """Accumulates micro-batch gradients partly in RAM, the rest in a swap file.

    The training loop sets :attr:`micro` (0 .. k-1) before each micro-batch.
    """

    name = "accumulate-swapped"

    def __init__(self, inner: Optimizer, params: list[tuple[str, int]], k: int,
                 resident_bytes: int = 0, swap_dir: str | None = None) -> None:
        super().__init__(lr=1.0)
        assert k >= 2, f"accumulation needs at least 2 micro-batches, got {k}"
        self.inner, self.k, self.scale, self.micro = inner, int(k), 1.0 / int(k), 0
        self.count = self.k  # micro-batches in this step (fewer in an epoch's partial batch)
        keep = dict(_resident(params, resident_bytes))
        self.ram: dict[str, np.ndarray] = {}
        self.file_offset: dict[str, int] = {}
        total = sum(n for n in keep.values())
        self.resident_buffer = np.zeros(total, np.float32)
        pos = off = 0
        for key, n in params:
            if key in keep:
                self.ram[key] = self.resident_buffer[pos:pos + n]
                pos += n
            else:
                self.file_offset[key] = off
                off += _page_up(4 * n)
        self.file_bytes = off
        self.bytes_read = self.bytes_written = 0
        self.fd = -1
        self.direct = False
        if off:
            base = swap_dir or default_swap_dir()
            check_swap_dir(base)
            os.makedirs(base, mode=0o700, exist_ok=True)
            self.fd, self.direct = open_private_file(base)
            os.ftruncate(self.fd, off)
            self._map = mmap.mmap(-1, BUFFER_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self.buf = np.frombuffer(self._map, dtype=np.uint8)

    @property
    def state_bytes(self) -> int:
        return int(self.resident_buffer.nbytes) + (BUFFER_BYTES if self.fd >= 0 else 0)

    @property
    def last(self) -> bool:
        return self.micro == self.count - 1

    def update(self, key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        # g lives in the step pool and is dead after this call: scale it in place.
        np.multiply(g, self.scale, out=g)
        if key in self.ram:
            a = self.ram[key][start:start + g.size]
            if self.micro == 0:
                a.fill(0.0)
            np.add(a, g, out=a)
            if self.last:
                self.inner.apply(key, w, a, start)
            return
        base, pos, n = self.file_offset[key] + 4 * start, 0, g.size
        while pos < n:
            b0 = base + 4 * pos
            p0 = b0 - b0 % PAGE
            m = min(n - pos, (BUFFER_BYTES - (b0 - p0)) // 4)
            b1 = b0 + 4 * m
            p1 = _page_up(b1)
            if self.micro > 0:
                self._io(False, 0, p1 - p0, p0)
            else:  # only partial edge pages hold other blocks' sums (this step's or stale)
                if b0 > p0:
                    self._io(False, 0, PAGE, p0)
                if b1 < p1 and (p1 - PAGE > p0 or b0 == p0):
                    self._io(False, p1 - p0 - PAGE, PAGE, p1 - PAGE)
            acc = self.buf[b0 - p0:b1 - p0].view(np.float32)
            if self.micro == 0:
                acc.fill(0.0)
            np.add(acc, g[pos:pos + m], out=acc)
            if self.last:
                self.inner.apply(key, w[pos:pos + m], acc, start + pos)
            else:
                self._io(True, 0, p1 - p0, p0)
            pos += m

    def _io(self, write: bool, at: int, length: int, file_off: int) -> None:
        mv = self.buf[at:at + length].data
        done = 0
        while done < length:
            if write:
                done += os.pwrite(self.fd, mv[done:], file_off + done)
            else:
                got = os.preadv(self.fd, [mv[done:]], file_off + done)
                if got <= 0:
                    raise OSError(f"accumulation file ended early at byte {file_off + done}")
                done += got
        if write:
            self.bytes_written += length
            if not self.direct:  # keep the sum out of the page cache, as swap does
                os.fdatasync(self.fd)
                os.posix_fadvise(self.fd, file_off, length, os.POSIX_FADV_DONTNEED)
        else:
            self.bytes_read += length

    def flush(self, weights: dict[str, np.ndarray]) -> None:
        """Nothing left to apply: the last micro-batch applied every block already."""
        del weights
        self.micro, self.count = 0, self.k

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def make_accumulator(inner: Optimizer, params: list[tuple[str, int]], k: int,
                     decision: Any = None, swap_dir: str | None = None) -> Optimizer:
    """The accumulator the cap fit chose (``decision.accumulate``: "ram" or "swapped"),
    resident when there is no decision."""
    if decision is not None and getattr(decision, "accumulate", "ram") == "swapped":
        return SwappedAccumulator(inner, params, k, decision.resident_accum_bytes, swap_dir)
    return Accumulator(inner, params, k)
