"""Fit a training step into a RAM cap: planner alone, then swap, then micro-batches.

The budget for the step pool is ``cap - baseline RSS - optimizer state - margin``, where
the baseline is measured after imports, model build and kernel warm-up, and the margin
covers what no plan describes (Python objects, BLAS buffers, allocator slack).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import MemoryCapExceeded
from .stepplan import StepPlan
from .swap import SwapSlot
from . import switches

# What no plan describes once the model is warmed up (Python objects, allocator slack):
# measured +0.0 to +0.7 MiB over the plan on every row of the memory benchmark.
MARGIN_BYTES = switches.integer("NNFLEET_CAP_MARGIN")


@dataclass
class Decision:
    batch: int  # micro-batch size (== batch size without accumulation)
    slots: list[SwapSlot] = field(default_factory=list)
    lookahead: int = 3  # swap prefetch distance that fits (less prefetch when tight)
    pool_bytes: int = 0
    extra_bytes: int = 0  # optimizer state + accumulation buffer
    tried: list[dict[str, Any]] = field(default_factory=list)


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def fit_to_cap(make_graph: Callable[[int], Any], weights: Any, planner: str, batch: int,
               cap: int, baseline: int, state_bytes: int, accum_bytes: int, swap: str,
               lookahead: int = 3, margin: int = MARGIN_BYTES) -> Decision:
    """Choose micro-batch and swap set so the planned step fits; raise if nothing does."""
    tried: list[dict[str, Any]] = []
    best_need = None
    for b in _divisors_desc(batch):
        extra = state_bytes + (accum_bytes if b < batch else 0)
        budget = cap - baseline - extra - margin
        # with swap, a shorter prefetch (fewer blocks read back early) is tried before
        # smaller micro-batches: it costs some stall time, not different numbers
        ahead = [lookahead] if swap == "off" else sorted({lookahead, min(lookahead, 1), 0},
                                                          reverse=True)
        for la in ahead:
            ex = StepPlan(make_graph(b), planner, lookahead=la)
            if swap == "on":
                choices = [ex.candidates]
            elif swap == "auto":
                choices = [[], ex.candidates] if la == lookahead else [ex.candidates]
            else:
                choices = [[]]
            for slots in choices:
                pool = ex.layout(slots)[0].pool_bytes
                tried.append({"micro_batch": b, "lookahead": la, "swapped_blocks": len(slots),
                              "pool_bytes": pool, "budget_bytes": budget})
                need = baseline + extra + margin + pool
                best_need = need if best_need is None else min(best_need, need)
                if pool > budget:
                    continue
                if slots and swap == "auto":
                    slots = _fewest_slots(ex, slots, budget)
                    pool = ex.layout(slots)[0].pool_bytes
                return Decision(b, slots, la, pool, extra, tried)
    raise MemoryCapExceeded(
        needed=best_need or 0, cap=cap,
        detail=f"no plan fits (baseline {baseline:,} bytes, tried batch {batch} down to 1, "
               f"swap={swap}); raise the cap or use a smaller model or a frozen backbone")


def _fewest_slots(ex: StepPlan, cands: list[SwapSlot], budget: int) -> list[SwapSlot]:
    """Smallest prefix of the candidates (most bytes x idle orders first) that fits."""
    lo, hi = 1, len(cands)
    while lo < hi:
        mid = (lo + hi) // 2
        if ex.layout(cands[:mid])[0].pool_bytes <= budget:
            hi = mid
        else:
            lo = mid + 1
    return cands[:lo]
