"""Naive strategy: no reuse at all (NNTrainer's ``BasicPlanner``).

Useful as the worst case every other strategy is compared against.
"""

from __future__ import annotations


def plan_naive(aligned_sizes: list[int], intervals: list[tuple[int, int]]) -> list[int]:
    """Lay tensors one after another in input order; the pool is the sum of sizes."""
    del intervals  # lifetimes are deliberately ignored
    offsets: list[int] = []
    end = 0
    for size in aligned_sizes:
        offsets.append(end)
        end += size
    return offsets
