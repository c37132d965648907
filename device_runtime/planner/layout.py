"""``plan_layout``: validate, align, drop empty tensors, run one strategy, build a Plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from .best_fit import plan_best_fit
from .naive import plan_naive
from .v1 import plan_v1

Strategy = Callable[[list[int], list[tuple[int, int]]], list[int]]

STRATEGIES: dict[str, Strategy] = {
    "naive": plan_naive,
    "v1": plan_v1,
    "best_fit": plan_best_fit,
}
DEFAULT_STRATEGY = "best_fit"


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


def plan_layout(
    sizes: Sequence[int],
    intervals: Sequence[tuple[int, int]],
    strategy: str = DEFAULT_STRATEGY,
    alignment: int = 64,
) -> Plan:
    """Give every tensor a byte offset so that tensors alive together never overlap.

    Parameters
    ----------
    sizes : sequence of int
        Tensor sizes in bytes; 0 means the tensor needs no memory (offset 0).
    intervals : sequence of (start, end)
        Half-open validity ``[start, end)`` in execution orders, one per tensor.
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
    spans: list[tuple[int, int]] = []
    for i, (size, interval) in enumerate(zip(sizes, intervals)):
        size = int(size)
        if size < 0:
            raise ValueError(f"size of tensor {i} is negative: {size}")
        if size == 0:
            continue
        start, end = int(interval[0]), int(interval[1])
        if end <= start:
            raise ValueError(
                f"interval of tensor {i} is empty: [{start}, {end}); need end > start (half-open)"
            )
        keep.append(i)
        aligned.append(align(size, alignment))
        spans.append((start, end))

    placed = STRATEGIES[strategy](aligned, spans)
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
