"""Fit a training step into a RAM cap: planner alone, then swap, then micro-batches.

The budget for the step pool is ``cap - baseline RSS - optimizer state - margin``, where
the baseline is measured after imports, model build and kernel warm-up, and the margin
covers what no plan describes (Python objects, BLAS buffers, allocator slack). The plan
that fits is kept in the :class:`Decision`: the training executor runs exactly it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import rss, switches
from ..accumulate import BUFFER_BYTES, accumulator_bytes
from ..errors import MemoryCapExceeded
from ..graph import Graph
from ..stepplan import StepPlan
from ..swap import SwapSlot
from .warmup import warm_up_model

if TYPE_CHECKING:
    from ..model import Model

__all__ = ["MARGIN_BYTES", "Decision", "adopt", "fit_model", "fit_step", "fit_to_cap",
           "refit_before_training", "take_plan"]

# What no plan describes once the model is warmed up (Python objects, allocator slack):
# measured +0.0 to +0.7 MiB over the plan on every row of the memory benchmark.
MARGIN_BYTES = switches.integer("NNFLEET_CAP_MARGIN")
# Conv backward tiles tried, largest first (bytes of im2col scratch per tile; 0 = whole
# layers, 1 = one product block, the smallest): smaller tiles cost more calls, never
# other numbers (layers/conv.py).
CONV_TILES = (0, 4 << 20, 2 << 20, 1 << 20, 1)
# The margin of a single-sample step, at least. What no plan describes grows with the
# batch (data and loss transients: a resnet18 step at batch 32 once went 1.5 MiB over its
# plan, hence MARGIN_BYTES), while a single-sample step's is what the warm-up measures,
# since it runs one at batch 1 (0.1-0.2 MiB seen for vgg16 and resnet18).
MIN_MARGIN_BYTES = 1 << 20


def batch_margin(margin: int, unplanned: int | None, b: int, batch: int) -> int:
    """The margin kept at micro-batch ``b`` of ``batch``: ``margin`` at the full batch,
    down to ``max(MIN_MARGIN_BYTES, 2 x unplanned)`` (the warm-up's measured RSS beyond
    a batch-1 step's pool) at one sample, in proportion between. Without a measurement
    (``unplanned`` None) the margin is ``margin`` at every micro-batch."""
    if unplanned is None:
        return margin
    small = max(MIN_MARGIN_BYTES, 2 * unplanned)
    if small >= margin or batch <= 1:
        return margin
    return small + (margin - small) * (b - 1) // (batch - 1)


@dataclass
class Decision:
    """What the cap fit chose: micro-batch, swapped blocks, and the plan itself."""

    batch: int  # micro-batch size (== batch size without accumulation)
    step: StepPlan | None  # the chosen plan, laid out with ``slots`` (None once taken)
    slots: list[SwapSlot] = field(default_factory=list)
    lookahead: int = 3  # swap prefetch distance that fits (less prefetch when tight)
    pool_bytes: int = 0
    extra_bytes: int = 0  # optimizer state + accumulation buffer (its resident part)
    tried: list[dict[str, Any]] = field(default_factory=list)
    accumulate: str = "none"  # none | ram (one resident sum) | swapped (accumulate.py)
    resident_accum_bytes: int = 0  # swapped: the part of the sum kept in RAM
    margin_bytes: int = MARGIN_BYTES  # kept free under the cap beyond plan and baseline
    batch_margin_bytes: int = MARGIN_BYTES  # the margin at the full batch (batch_margin)
    conv_tile: int = 0  # conv backward's im2col bytes per tile (0 = whole layers)
    unplanned_bytes: int = 0  # measured: what a warm-up step added beyond its pool
    baseline_drift_bytes: int = 0  # measured: RSS right before training - the baseline
    refitted: bool = False  # fitted again before training because the baseline moved
    remat: list[str] = field(default_factory=list)  # convs replayed before backward
    drift_before: int = 0  # the drift earlier refits took in (baseline_drift_bytes is all)


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def fit_to_cap(make_graph: Callable[[int, int], Graph], planner: str, batch: int,
               cap: int, baseline: int, state_bytes: int, accum_bytes: int, swap: str,
               lookahead: int = 3, margin: int = MARGIN_BYTES,
               params: list[tuple[str, int]] | None = None,
               tiles: tuple[int, ...] = CONV_TILES, unplanned: int | None = None,
               remat: bool = True) -> Decision:
    """Choose micro-batch, swap set, conv tile, rebuilt convs and accumulation so the
    planned step fits; raise if nothing does. ``make_graph(micro_batch, conv_tile)``. With
    ``params`` (trainable (key, size) pairs) and swap allowed, micro-batches may accumulate
    into a mostly swapped sum (:mod:`device_runtime.accumulate`) when the resident one
    (``accum_bytes``) does not fit. Smaller conv tiles are tried after swap and before a
    shorter prefetch; a tile that changes no layer's scratch is not planned again. Where
    nothing fits at a micro-batch, convolution outputs replayed before backward instead
    of kept (``remat``) are tried before a smaller one: the fewest that fit, best bytes
    per FLOP first (StepPlan.remat_ranking). The margin shrinks with the micro-batch when
    ``unplanned`` is measured (batch_margin)."""
    tried: list[dict[str, Any]] = []
    short: list[int] = []  # bytes each try's pool went over its budget
    full_margin = margin
    for b in _divisors_desc(batch):
        margin = batch_margin(full_margin, unplanned, b, batch)
        modes = [("none", state_bytes)] if b == batch else [("ram", state_bytes + accum_bytes)]
        if b < batch and params and swap != "off":
            modes.append(("swapped", state_bytes + BUFFER_BYTES))
        # with swap, a shorter prefetch (fewer blocks read back early) is tried before
        # smaller micro-batches: it costs some stall time, not different numbers
        ahead = [lookahead] if swap == "off" else sorted({lookahead, min(lookahead, 1), 0},
                                                          reverse=True)
        seen: set[tuple[Any, ...]] = set()
        # rebuilt convs last at this micro-batch, with the asked prefetch: the fewest of
        # the ranking (a prefix: more is not always smaller, a rebuild's scratch and the
        # rebuilds it pulls earlier live at its replay)
        combos = [(False, la, t) for la in ahead for t in tiles]
        combos += [(True, lookahead, t) for t in tiles] if remat else []
        for rebuild, la, tile in combos:
            g = make_graph(b, tile)
            heads = frozenset(n.name for n in g.nodes if n.layer.rematerializable)
            ranking = StepPlan(g, planner, lookahead=la, remat=heads).remat_ranking() \
                if rebuild and heads else []
            if rebuild and not ranking:
                continue  # no conv can be rebuilt
            fit = ex = None
            for k in range(1, len(ranking) + 1) if rebuild else [0]:
                ex = StepPlan(g, planner, lookahead=la, remat=ranking[:k])
                if (la, tuple(ex.sizes), k) in seen:
                    break  # this tile changes no layer's scratch
                seen.add((la, tuple(ex.sizes), k))
                fit = _try(ex, swap, la == lookahead and tile == tiles[0] and not rebuild,
                           modes, cap - baseline - margin, tried, short,
                           {"micro_batch": b, "lookahead": la, "conv_tile": tile,
                            "rebuilt_convs": k, "margin_bytes": margin})
                if fit is not None:
                    break
            if fit is None or ex is None:
                continue
            mode, extra = modes[fit]
            budget = cap - baseline - extra - margin
            resident = 0
            if mode == "swapped":  # what the cap leaves over keeps part of the sum
                assert params is not None  # (less a second margin: never all of it)
                resident = max(0, budget - ex.plan.pool_bytes - margin)
                extra += accumulator_bytes(params, resident) - BUFFER_BYTES
            return Decision(b, ex, ex.slots, la, ex.plan.pool_bytes, extra, tried,
                            mode, resident, margin, full_margin, conv_tile=tile,
                            remat=sorted(ex.remat_ranking()))
    raise MemoryCapExceeded(
        needed=cap + min(short, default=0), cap=cap,
        detail=f"no plan fits (baseline {baseline:,} bytes, tried batch {batch} down to 1, "
               f"swap={swap}); raise the cap or use a smaller model or a frozen backbone")


def _try(ex: StepPlan, swap: str, unswapped_first: bool, modes: list[tuple[str, int]],
         room: int, tried: list[dict[str, Any]] | None = None, short: list[int] | None = None,
         row: dict[str, Any] | None = None) -> int | None:
    """Lay ``ex`` out unswapped or with swap (``swap`` on: every candidate; auto: none
    first when ``unswapped_first``, else the fewest that fit) for the first accumulation
    mode (name, extra bytes) whose budget ``room - extra`` holds the pool: ``ex`` is then
    in use with its slots and the mode's index is returned; None if none fits. Each try
    is a row of ``tried`` (``row`` plus its figures), its shortfall one of ``short``."""
    if swap == "on":
        choices = [ex.candidates]
    elif swap == "auto":
        choices = [[], ex.candidates] if unswapped_first else [ex.candidates]
    else:
        choices = [[]]
    for slots in choices:
        laid_out = ex.layout(slots)
        pool = laid_out[0].pool_bytes
        for k, (mode, extra) in enumerate(modes):
            budget = room - extra
            if tried is not None and short is not None:
                tried.append({**(row or {}), "accumulate": mode, "swapped_blocks": len(slots),
                              "pool_bytes": pool, "budget_bytes": budget})
                short.append(pool - budget)
            if pool > budget:
                continue
            if slots and swap == "auto":
                slots = _fewest_slots(ex, slots, budget)
                laid_out = ex.layout(slots)
            ex.use(slots, laid_out)
            return k
    return None


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


def fit_model(model: Model, cap: int, baseline_rss: int | None = None) -> tuple[int, Decision]:
    """Warm ``model`` up, measure the baseline RSS (unless given) and fit its compiled
    training step into ``cap``: ``(baseline, decision)``; raise if nothing fits."""
    # JIT code is part of the baseline, and must be loaded before it; a second warm-up step
    # measures the RSS a step adds beyond its pool (the margin is never below that)
    unplanned = warm_up_model(model, measure=True)
    margin = max(MARGIN_BYTES, 2 * unplanned)
    rss.release_heap()
    baseline = baseline_rss if baseline_rss is not None else rss.current_rss()
    # Planning itself leaves heap behind (about 1 MiB for resnet18, less once freed pages
    # are given back), and the kept plan is part of the process from now on: the baseline
    # is measured again with the plan made, and the step fitted again only when the plan
    # no longer fits over it (one planning pass in the common case).
    decision = fit_step(model, cap, baseline, margin, unplanned)
    rss.release_heap()
    after = rss.current_rss()
    if after > baseline:
        baseline = after
        if baseline + decision.extra_bytes + decision.margin_bytes + decision.pool_bytes > cap:
            decision = fit_step(model, cap, baseline, margin, unplanned)
    decision.unplanned_bytes = unplanned
    return baseline, decision


def refit_before_training(model: Model) -> bool:
    """Measure the baseline again right before the first step (the executor built, its
    pool mapped but untouched) and fit the step again over it when the chosen plan no
    longer fits: the baseline moves between compile and training (data, executor objects,
    heap), and a plan that fitted by kilobytes would then go over the cap. True when it
    refitted: the caller builds a new executor and calls this again, since building it
    moves the baseline too. Raises when nothing fits any more."""
    d, cap = model.decision, model.ram_cap
    if d is None or cap is None or model.baseline_rss is None:
        return False
    rss.release_heap()
    now = rss.current_rss()
    d.baseline_drift_bytes = d.drift_before + now - model.baseline_rss
    if now + d.pool_bytes + d.extra_bytes + d.margin_bytes <= cap:
        return False
    new = fit_step(model, cap, now, d.batch_margin_bytes, d.unplanned_bytes)
    new.unplanned_bytes, new.baseline_drift_bytes = d.unplanned_bytes, d.baseline_drift_bytes
    new.drift_before = d.baseline_drift_bytes  # a refit's baseline already holds this drift
    new.refitted = True
    adopt(model, new)
    model.baseline_rss = now
    return True


def adopt(model: Model, d: Decision) -> None:
    """Make ``d`` the model's decision, and its graph settings (micro-batch, conv tile,
    rebuilt convs) the model's."""
    model.decision, model.micro_batch, model.conv_tile = d, d.batch, d.conv_tile
    model.remat = frozenset(d.remat)


def fit_step(model: Model, cap: int, baseline: int, margin: int | None = None,
             unplanned: int | None = None) -> Decision:
    """Fit ``model``'s training step at its compiled batch size, swap setting and
    lookahead into ``cap`` bytes over ``baseline``, keeping ``margin`` bytes free at the
    full batch (the model's last decision's, else :data:`MARGIN_BYTES`), less at
    micro-batches when ``unplanned`` is measured (the last decision's: batch_margin)."""
    d = model.decision
    if margin is None:
        margin = d.batch_margin_bytes if d is not None else MARGIN_BYTES
    if unplanned is None and d is not None and d.tried:
        unplanned = d.unplanned_bytes
    opt = model.optimizer
    assert opt is not None, "compile() the model before fitting it to a cap"
    trainable = sum(p.size for p in model.weights.params.values() if p.trainable)
    return fit_to_cap(lambda b, t: model._graph(b, backward=True, with_loss=True, conv_tile=t),
                      model.planner,
                      model.batch_size, cap, baseline, opt.state_bytes, 4 * trainable,
                      model.swap, model.lookahead, margin, params=model._trainable_sizes(),
                      unplanned=unplanned)


def take_plan(model: Model) -> StepPlan:
    """The plan the cap fit chose, for ``model``'s training executor to run (it takes it
    over: one plan, one executor). Fitted again, over the measured baseline, when it was
    made for other settings (labels switched by the data, micro-batch or fusion set by
    hand)."""
    d, cap, base = model.decision, model.ram_cap, model.baseline_rss
    assert cap is not None and base is not None, "compile() the model with a RAM cap first"
    g = d.step.graph if d is not None and d.step is not None else None
    if d is None or g is None or g.context != model._context(model.micro_batch, True, True) \
            or g.fuse_apply != bool(model.fuse_apply and not model.clip_grad_norm):
        d = fit_step(model, cap, base)
        adopt(model, d)
    step, d.step = d.step, None
    assert step is not None
    return step
