"""``plan_layout``: validate, align, drop empty tensors, run one strategy, build a Plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, cast

from .best_fit import plan_best_fit
from .naive import plan_naive
from .v1 import plan_v1

Strategy = Callable[[list[int], list], list[int]]
Interval = tuple[int, int]

STRATEGIES: dict[str, Strategy] = {
    "naive": plan_naive,
    "v1": plan_v1,
    "best_fit": plan_best_fit,
}
DEFAULT_STRATEGY = "best_fit"
# Strategies given each tensor's stretches (they can reuse the gaps); the others see the hull.
MULTI_INTERVAL = frozenset({"best_fit"})


@dataclass(frozen=True)
class Plan:
    """Where each tensor lives in one pool.

    Attributes
    ----------
    offsets : tuple[int, ...]
        Byte offset of each tensor, in input order.
    pool_bytes : int
        Pool size: max of offset + aligned size (0 if there is nothing to place).
    strategy : str
        Name of the strategy that produced the plan.
    """

    offsets: tuple[int, ...]
    pool_bytes: int
    strategy: str


def align(n: int, alignment: int = 64) -> int:
    """Round ``n`` up to a multiple of ``alignment``."""
    return -(-n // alignment) * alignment


def pieces(interval: Interval | Sequence[Interval]) -> list[Interval]:
    """One interval ``(s, e)`` or several (a tensor swapped out or recomputed in between
    lives in two or more stretches, always at the same offset) -> sorted list of pairs."""
    if len(interval) == 2 and not isinstance(interval[0], (tuple, list)):
        start, end = cast(Interval, interval)
        return [(int(start), int(end))]
    return sorted((int(a), int(b)) for a, b in cast(Sequence[Interval], interval))


def plan_layout(
    sizes: Sequence[int],
    intervals: Sequence[Interval | Sequence[Interval]],
    strategy: str = DEFAULT_STRATEGY,
    alignment: int = 64,
) -> Plan:
    """Give every tensor a byte offset so that tensors alive together never overlap.

    Parameters
    ----------
    sizes : sequence of int
        Tensor sizes in bytes; 0 means the tensor needs no memory (offset 0).
    intervals : sequence of (start, end), or of lists of them
        Half-open validity ``[start, end)`` in execution orders, one per tensor; a list
        of disjoint pairs for a tensor that is not needed in between (same offset in
        every stretch; strategies that cannot use the gaps see the hull).
    strategy : str
        A key of ``STRATEGIES``.
    alignment : int
        Every offset is a multiple of it; each tensor occupies ``align(size)`` bytes.

    Raises
    ------
    ValueError
        On length mismatch, negative size, empty interval of a non-empty tensor,
        unknown strategy, or non-positive alignment.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown planner strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if alignment <= 0:
        raise ValueError(f"alignment must be positive, got {alignment}")
    if len(sizes) != len(intervals):
        raise ValueError(
            f"got {len(sizes)} sizes but {len(intervals)} intervals; need one interval per tensor"
        )
    # strategies only see tensors that take memory; `keep` maps back to input indices
    keep: list[int] = []
    aligned: list[int] = []
    spans: list[list[Interval]] = []
    for i, (size, interval) in enumerate(zip(sizes, intervals)):
        size = int(size)
        if size < 0:
            raise ValueError(f"size of tensor {i} is negative: {size}")
        if size == 0:
            continue
        ps = pieces(interval)
        for start, end in ps:
            if end <= start:
                raise ValueError(f"interval of tensor {i} is empty: [{start}, {end}); "
                                 "need end > start (half-open)")
        if any(a[1] > b[0] for a, b in zip(ps, ps[1:])):
            raise ValueError(f"intervals of tensor {i} overlap: {ps}")
        keep.append(i)
        aligned.append(align(size, alignment))
        spans.append(ps)

    fn = STRATEGIES[strategy]
    if strategy in MULTI_INTERVAL:
        placed = fn(aligned, spans)
    else:
        placed = fn(aligned, [(p[0][0], p[-1][1]) for p in spans])
    assert len(placed) == len(keep), (
        f"strategy {strategy} returned {len(placed)} offsets for {len(keep)} tensors"
    )
    offsets = [0] * len(sizes)
    pool = 0
    for i, off, size in zip(keep, placed, aligned):
        assert off >= 0 and off % alignment == 0, (
            f"strategy {strategy} gave tensor {i} offset {off} (alignment {alignment})"
        )
        offsets[i] = int(off)
        pool = max(pool, off + size)
    return Plan(offsets=tuple(offsets), pool_bytes=int(pool), strategy=strategy)
