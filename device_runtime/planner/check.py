"""The yardsticks for any plan: the live-bytes lower bound and a validity check."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .layout import Plan, align, pieces


def lower_bound(
    sizes: Sequence[int], intervals: Sequence[tuple[int, int]], alignment: int = 64
) -> int:
    """Max over execution orders of the aligned bytes live at that order.

    ``[s, e)`` is live at orders ``s .. e-1``; no plan can use a smaller pool.
    Empty tensors and empty intervals count for nothing.
    """
    events: list[tuple[int, int]] = []
    for size, iv in zip(sizes, intervals):
        for start, end in pieces(iv):
            if size > 0 and end > start:
                nbytes = align(int(size), alignment)
                events += [(int(start), nbytes), (int(end), -nbytes)]
    # ends (negative) sort before starts at the same order: half-open intervals
    events.sort()
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak


def check_plan(
    sizes: Sequence[int],
    intervals: Sequence[tuple[int, int]],
    plan: Plan,
    alignment: int = 64,
) -> None:
    """Assert that ``plan`` is valid for these tensors.

    Raises ``AssertionError`` naming the misaligned tensor, the one that does not fit
    in the pool, or the first two tensors alive together whose bytes overlap.
    """
    n = len(sizes)
    assert len(plan.offsets) == n, f"plan has {len(plan.offsets)} offsets for {n} tensors"
    used = [i for i in range(n) if sizes[i] > 0]
    for i in used:
        off = plan.offsets[i]
        assert off >= 0 and off % alignment == 0, (
            f"tensor {i} offset {off} is not a non-negative multiple of {alignment}"
        )
        top = off + align(int(sizes[i]), alignment)
        assert top <= plan.pool_bytes, (
            f"tensor {i} [{off}, {top}) overflows the pool of {plan.pool_bytes} bytes"
        )
    if not used:
        return
    # vectorised pairwise test over stretches: O(n^2) but numpy-fast
    rows = [(i, s, e) for i in used for s, e in pieces(intervals[i])]
    idx = np.array([r[0] for r in rows])
    start = np.array([r[1] for r in rows], dtype=np.int64)
    end = np.array([r[2] for r in rows], dtype=np.int64)
    lo = np.array([plan.offsets[i] for i, _, _ in rows], dtype=np.int64)
    hi = lo + np.array([align(int(sizes[i]), alignment) for i, _, _ in rows], dtype=np.int64)
    for a in range(len(rows) - 1):
        rest = slice(a + 1, None)
        alive_together = (start[rest] < end[a]) & (end[rest] > start[a]) & (idx[rest] != idx[a])
        clash = alive_together & (lo[rest] < hi[a]) & (hi[rest] > lo[a])
        if clash.any():
            b = a + 1 + int(np.argmax(clash))
            i, j = int(idx[a]), int(idx[b])
            raise AssertionError(
                f"tensors {i} and {j} are alive together ([{start[a]}, {end[a]}) and "
                f"[{start[b]}, {end[b]})) but overlap in memory "
                f"([{lo[a]}, {hi[a]}) and [{lo[b]}, {hi[b]}))"
            )
