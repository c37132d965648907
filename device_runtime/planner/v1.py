"""NNTrainer ``OptimizedV1Planner``-like strategy, kept for comparison.

What it does (our own reading of ``nntrainer/tensor/optimized_v1_planner.cpp``):

- Requests are visited by ascending start order, ties by ascending end order.
- Live requests are kept on a *stack* ordered by offset; the stack tiles the memory
  contiguously from 0 (each push goes right above the current top).
- Before placing a request, expired entries (end <= start) are popped off the *top*
  only; expired entries buried under live ones stay on the stack.
- A buried expired entry of exactly the same size is reused in place (its slot is
  handed to the new request); otherwise the request is pushed on top.

Because only the top of the stack is freed and only exact-size holes are refilled,
a long-lived tensor placed early can pin everything above it; that is the waste the
best-fit strategy avoids.
"""

from __future__ import annotations


def plan_v1(aligned_sizes: list[int], intervals: list[tuple[int, int]]) -> list[int]:
    """Stack allocation in start order with exact-size reuse of buried holes."""
    order = sorted(range(len(aligned_sizes)), key=lambda i: (intervals[i][0], intervals[i][1]))
    offsets = [0] * len(aligned_sizes)
    # stack of tensor indices, bottom (offset 0) first; slots are contiguous
    stack: list[int] = []
    for i in order:
        start = intervals[i][0]
        while stack and intervals[stack[-1]][1] <= start:
            stack.pop()
        # reuse the topmost buried slot of the same size whose occupant has expired;
        # every later request starts at or after `start`, so the slot stays free for it
        for pos in range(len(stack) - 1, -1, -1):
            j = stack[pos]
            if intervals[j][1] <= start and aligned_sizes[j] == aligned_sizes[i]:
                offsets[i] = offsets[j]
                stack[pos] = i
                break
        else:
            if stack:
                top = stack[-1]
                offsets[i] = offsets[top] + aligned_sizes[top]
            stack.append(i)
    return offsets
