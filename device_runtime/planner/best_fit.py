"""Best-fit strategy: greedy by size, smallest fitting gap (the default).

After "Efficient Memory Management for Deep Neural Net Inference" (Pisarchyk & Lee,
2020, greedy-by-size): visit tensors in some order; for each, look only at the
already-placed tensors whose intervals overlap it, and put it in the smallest gap
between them that fits, else right above them. Several visiting orders are tried and
the smallest pool is kept, since no single order wins on every interval set.

Cost: O(n) numpy work per tensor (overlap mask, sort of the overlapping ones), so
O(n^2 log n) worst case per order; about 0.1 s per order for n = 5,000.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

# Visiting orders, tried in turn. Big tensors first leaves small ones to fill the
# holes; long-lived first keeps the stable "floor" compact; start order mimics a
# time sweep and is best when sizes are all alike; see also "size-end".
_Key = Callable[[int, list[int], list[tuple[int, int]]], tuple[int, ...]]
ORDERINGS: dict[str, _Key] = {
    "size": lambda i, s, iv: (-s[i], iv[i][0], i),
    "length": lambda i, s, iv: (-(iv[i][1] - iv[i][0]), -s[i], iv[i][0], i),
    "start": lambda i, s, iv: (iv[i][0], -s[i], i),
    "area": lambda i, s, iv: (-s[i] * (iv[i][1] - iv[i][0]), iv[i][0], i),
    # big first, latest-ending first among equals: chains of equal blocks (a residual
    # block's main path beside its shortcut) then stack without holes
    "size-end": lambda i, s, iv: (-s[i], -iv[i][1], i),
}
# Orders that look at every stretch of a tensor (swapped and rebuilt blocks live in
# several): longest total time in memory first, or most stretches first. They reach the
# live-bytes bound where the hull orders leave holes, e.g. at small micro-batches with every
# candidate swapped: vgg16 at 2 samples 3.88 MiB instead of 4.05, resnet18 at 4 samples
# 8.83 instead of 9.02.
_SKey = Callable[[int, list[int], list[list[tuple[int, int]]]], tuple[int, ...]]
STRETCH_ORDERINGS: dict[str, _SKey] = {
    "live-length": lambda i, s, ps: (-sum(e - a for a, e in ps[i]), -s[i], i),
    "stretches-size": lambda i, s, ps: (-len(ps[i]), -s[i], ps[i][0][0], i),
}


def place_in_order(
    order: list[int], aligned_sizes: list[int], intervals: list[list[tuple[int, int]]]
) -> list[int]:
    """Place tensors one by one in ``order``, each in the best-fitting free gap.

    A tensor may live in several stretches (same offset in all); it clashes with every
    placed stretch that overlaps any of its own.
    """
    n = sum(len(p) for p in intervals)
    # placed stretches, in placement order (prefix [:k] is valid)
    p_start = np.empty(n, dtype=np.int64)
    p_end = np.empty(n, dtype=np.int64)
    p_lo = np.empty(n, dtype=np.int64)
    p_hi = np.empty(n, dtype=np.int64)
    offsets = [0] * len(aligned_sizes)
    k = 0
    for i in order:
        size = aligned_sizes[i]
        live = np.zeros(k, dtype=bool)
        for start, end in intervals[i]:
            live |= (p_start[:k] < end) & (p_end[:k] > start)
        lo, hi = p_lo[:k][live], p_hi[:k][live]
        offset = 0
        if lo.size:
            by_lo = np.argsort(lo, kind="stable")
            lo, hi = lo[by_lo], hi[by_lo]
            # the gap before each live block starts where everything below it ends
            reach = np.maximum.accumulate(hi)
            gap_lo = np.concatenate(([0], reach[:-1]))
            gap = lo - gap_lo
            fits = np.flatnonzero(gap >= size)
            if fits.size:
                # smallest fitting gap; argmin takes the lowest one on ties
                offset = int(gap_lo[fits[np.argmin(gap[fits])]])
            else:
                offset = int(reach[-1])
        offsets[i] = offset
        for start, end in intervals[i]:
            p_start[k], p_end[k], p_lo[k], p_hi[k] = start, end, offset, offset + size
            k += 1
    return offsets


def plan_best_fit(aligned_sizes: list[int], stretches: list[list[tuple[int, int]]]) -> list[int]:
    """Greedy best-fit placement; the best of several visiting orders."""
    n = len(aligned_sizes)
    if n == 0:
        return []
    # orderings look at the hull (first start, last end) and the total live length
    intervals = [(p[0][0], p[-1][1]) for p in stretches]
    floor = _live_peak(aligned_sizes, stretches)
    best: list[int] = []
    best_pool = -1
    tried: set[tuple[int, ...]] = set()
    orders = [sorted(range(n), key=lambda i: key(i, aligned_sizes, intervals))
              for key in ORDERINGS.values()]
    if any(len(p) > 1 for p in stretches):
        orders += [sorted(range(n), key=lambda i: skey(i, aligned_sizes, stretches))
                   for skey in STRETCH_ORDERINGS.values()]
    for order in orders:
        if tuple(order) in tried:  # orders often coincide on simple inputs
            continue
        tried.add(tuple(order))
        offsets = place_in_order(order, aligned_sizes, stretches)
        pool = max(o + s for o, s in zip(offsets, aligned_sizes))
        if best_pool < 0 or pool < best_pool:
            best, best_pool = offsets, pool
        if best_pool <= floor:  # cannot do better than the live-bytes peak
            break
    return best


def _live_peak(aligned_sizes: list[int], stretches: list[list[tuple[int, int]]]) -> int:
    """Max over orders of live bytes (same as ``lower_bound``, sizes already aligned)."""
    # at equal orders the ends (-size) sort before the starts, as intervals are half-open
    events = sorted([(s, sz) for sz, ps in zip(aligned_sizes, stretches) for s, _ in ps]
                    + [(e, -sz) for sz, ps in zip(aligned_sizes, stretches) for _, e in ps])
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak
