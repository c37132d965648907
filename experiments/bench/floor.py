"""The smallest RAM cap a model's training step fits (the memory benchmark's ``-floor`` rows).

The floor of each micro-batch is its plan with every swap candidate swapped and no
prefetch, plus the optimizer state and, below the full batch, the swapped accumulation's
buffer (device_runtime/accumulate.py); the smallest over micro-batches, over the measured
baseline, plus the fit's margin, is the cap tried. The fit's margin is measured at compile
time (never below ``MARGIN_BYTES``): when it is larger, compile refuses naming the bytes it
needs, and that figure is the cap tried next; so does the check right before training,
once the executor exists (its objects move the baseline).
"""

from __future__ import annotations

from typing import Any

SLACK = 64 * 1024  # page rounding of the chosen plan, and the re-measured baseline


def floor_bytes(model: Any, full_batch: bool = False, conv_tile: int = 1) -> tuple[int, int]:
    """``(bytes over the baseline, micro-batch)`` of the smallest plan at any micro-batch
    (``full_batch``: at the compiled batch only), conv backward in its smallest tiles (1;
    0 = whole layers, as before tiling)."""
    from device_runtime.accumulate import BUFFER_BYTES
    from device_runtime.stepplan import StepPlan

    batch, state = model.batch_size, model.optimizer.state_bytes
    best = None
    for b in [d for d in range(batch, 0, -1) if batch % d == 0][:1 if full_batch else None]:
        g = model._graph(b, backward=True, with_loss=True, conv_tile=conv_tile)
        pool = StepPlan(g, model.planner, swap="on", lookahead=0).plan.pool_bytes
        need = pool + state + (BUFFER_BYTES if b < batch else 0)
        if best is None or need < best[0]:
            best = (need, b)
    assert best is not None
    return best


def compile_at_floor(model: Any, compile_kw: dict[str, Any], baseline: int) -> int:
    """Compile ``model`` under the smallest cap it fits over ``baseline``; the cap."""
    from device_runtime import MemoryCapExceeded
    from device_runtime.cap.fit import MARGIN_BYTES, refit_before_training

    model.compile(**compile_kw)  # the optimizer state's size, for the floor
    need, _ = floor_bytes(model)
    cap = baseline + need + MARGIN_BYTES + SLACK
    for attempt in range(4):
        try:
            model.compile(**compile_kw, ram_cap=cap, swap="auto")
            # the executor's own objects move the baseline (0.7 MB for resnet18): the fit
            # measures it again before training, and may refuse there
            model.plan()
            if refit_before_training(model):
                model.close()
                model._train = None
                model.plan()
            return cap
        except MemoryCapExceeded as e:  # a larger measured margin, or a moved baseline
            if attempt == 3:
                raise
            cap = max(cap, e.needed) + (attempt + 1) * 4 * SLACK  # it moves as it is chased
    return cap


def batch_floors(name: str, batch: int) -> dict[str, int]:
    """The smallest full-batch plan of a built-in model, whole layers and tiled, with the
    live-bytes lower bounds (every candidate swapped, no prefetch): bytes."""
    from device_runtime import build
    from device_runtime.stepplan import StepPlan

    m = build(name)
    m.compile(batch_size=batch, optimizer="sgd")
    out = {}
    for label, tile in (("whole", 0), ("tiled", 1)):
        st = StepPlan(m._graph(batch, backward=True, with_loss=True, conv_tile=tile), m.planner,
                      swap="on", lookahead=0)
        out[f"{label}_pool"], out[f"{label}_lower_bound"] = st.plan.pool_bytes, st.lower_bound
    out["state"] = m.optimizer.state_bytes
    return out
