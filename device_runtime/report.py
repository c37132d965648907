"""What a model reports about memory: its training step's plan and its RAM cap outcome."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Model


def plan(model: Model) -> dict[str, Any]:
    """The training step's memory plan: pool, lower bound, naive bytes, tensor table."""
    ex = model.train_executor
    step = ex.step
    opt_bytes = model.optimizer.state_bytes if model.optimizer else 0
    return {
        "model": model.name,
        "batch_size": model.batch_size,
        "planner": model.planner,
        "pool_bytes": step.plan.pool_bytes,
        "lower_bound_bytes": step.lower_bound,
        "naive_bytes": step.naive_bytes,
        "weight_bytes": model.weights.nbytes,
        "optimizer_state_bytes": opt_bytes,
        "planned_working_set_bytes": step.plan.pool_bytes + opt_bytes,
        "num_tensors": len(step.records),
        "num_blocks": len(step.sizes),
        "num_orders": ex.graph.num_orders,
        "tensors": ex.table(),
    }


def memory(model: Model) -> dict[str, Any]:
    """RAM cap outcome and swap traffic of the training executor (if built)."""
    ex = model._train
    dev = ex.swap_device if ex is not None else None
    opt = ex.optimizer if ex is not None else None
    d = model.decision
    return {
        "ram_cap_bytes": model.ram_cap,
        "baseline_rss_bytes": model.baseline_rss,
        "peak_rss_bytes": model.peak_rss or None,
        "cap_exceeded": model.cap_exceeded,
        "micro_batch": model.micro_batch,
        "conv_tile": model.conv_tile,  # conv backward's im2col bytes per tile (0 = whole)
        "remat": sorted(model.remat),  # convs whose outputs are replayed, not kept
        "swap_blocks": len(ex.slots) if ex is not None else 0,
        "swap_bytes_written": dev.bytes_written if dev else 0,
        "swap_bytes_read": dev.bytes_read if dev else 0,
        "swap_wait_seconds": dev.wait_seconds if dev else 0.0,
        "swap_direct_io": bool(dev.direct) if dev else None,
        "guard_seconds": model.guard_overhead,
        # micro-batches: "ram" (one resident sum), "swapped" (accumulate.py) or "none"
        "accumulate": d.accumulate if d is not None else (
            "ram" if model.micro_batch < model.batch_size else "none"),
        "accum_swap_bytes_written": getattr(opt, "bytes_written", 0),
        "accum_swap_bytes_read": getattr(opt, "bytes_read", 0),
        # the fit's margin, and what it measured: a warm-up step's RSS beyond its pool, and
        # how far the baseline moved between compile and the first step (refit if needed)
        **({"cap_margin_bytes": d.margin_bytes, "unplanned_step_bytes": d.unplanned_bytes,
            "baseline_drift_bytes": d.baseline_drift_bytes, "refitted": d.refitted}
           if d is not None else {}),
    }
