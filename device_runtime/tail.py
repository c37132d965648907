"""The last, partial batch of an epoch (``drop_last=False``, as PyTorch's DataLoader keeps
it): a step on ``r`` samples, fewer than the planned batch, inside the full batch's plan.

When the graph built for batch ``r`` has the same tensors, alias groups and uses
(execution orders) as the one the step plan was made for, each at most as large, every one
of its tensors is put at the offset of its full-batch counterpart, in the same pool: no
tensor overlaps one it did not overlap in the full plan, the pool is not grown and no byte
more is touched (swapped blocks go to the same swap file, in the same slots). Where a
layer decides otherwise at the smaller batch (a fully connected layer fuses its gradient
when its input is small), the step gets a layout of its own inside the same pool (no
swap, else every swap candidate swapped); where neither fits, it gets a pool of its own
if the RAM cap still holds it, and is refused (a one-line MemoryCapExceeded naming
drop-last) where it does not. Its kernels see
``r``-row views, so its numbers are those of a model compiled with batch ``r`` (mean loss
over the ``r`` samples). Under micro-batching (a RAM cap's gradient accumulation) the
partial batch is micro-batches of the planned size plus one smaller, weighted by their
share of the ``r`` samples.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from . import rss
from .accumulate import SwappedAccumulator
from .errors import MemoryCapExceeded
from .executor import Executor
from .optimizers import Accumulator
from .stepplan import StepPlan

if TYPE_CHECKING:
    from .model import Model


def _same_structure(tail: StepPlan, full: StepPlan) -> bool:
    """Tensors, groups, uses and rebuilt blocks alike, none larger than in ``full``."""
    n = len(full.records)
    return (len(tail.records) == n
            and all(a.name == b.name for a, b in zip(tail.records, full.records))
            and all(tail.group(i) == full.group(i) for i in range(n))
            and tail.group_uses == full.group_uses
            and all(a <= b for a, b in zip(tail.sizes, full.sizes))
            and {g: (v[0], v[2]) for g, v in tail.recomputed.items()}
            == {g: (v[0], v[2]) for g, v in full.recomputed.items()})


def tail_executor(model: Model, r: int) -> Executor:
    """An executor for a training step on ``r`` samples (fewer than the planned batch),
    sharing the training executor's pool and plan; kept with that executor."""
    main = model.train_executor
    tails = main.tails
    if r in tails:
        return tails[r]
    assert 0 < r < main.graph.batch
    step = StepPlan(model._graph(r, backward=True, with_loss=True), model.planner, "off",
                    model.lookahead, remat=main.step.remat)
    full = main.step
    ex = None
    if _same_structure(step, full):  # every tensor at its full-batch offset
        slots = [dataclasses.replace(s, file_offset=0, nbytes=0) for s in full.slots]
        step.use(slots, laid_out=(full.plan, full.intervals))
        ex = Executor(step, model.weights, main.optimizer, swap_dir=model.swap_dir,
                      pool=main.pool, swap_device=main.swap_device)
    else:  # a layer decided otherwise at this batch (e.g. fused its gradient): a layout
        # of its own, unswapped or with every candidate swapped, inside the same pool
        for slots in ([], step.candidates):
            if step.use(slots).plan.pool_bytes <= full.plan.pool_bytes:
                ex = Executor(step, model.weights, main.optimizer, swap_dir=model.swap_dir,
                              pool=main.pool)
                break
    if ex is None:  # a pool of its own (a conv layer chunks a prime batch whole), only
        # where the cap still holds it; the RAM guard watches the step as any other
        need = step.use([]).plan.pool_bytes
        if model.ram_cap is not None and rss.current_rss() + need > model.ram_cap:
            raise MemoryCapExceeded(rss.current_rss() + need, model.ram_cap,
                                    f"the last partial batch of {r} samples needs a pool of "
                                    f"its own of {need:,} bytes (set drop-last)")
        ex = Executor(step, model.weights, main.optimizer, swap_dir=model.swap_dir)
    tails[r] = ex
    return ex


def partial_step(model: Model, idx: np.ndarray) -> float:
    """The loss of one step on rows ``idx`` (fewer than the batch size); the caller begins
    and ends the optimizer step."""
    main = model.train_executor
    n, mb = int(idx.size), model.micro_batch
    pieces = [(a, min(a + mb, n)) for a in range(0, n, mb)]
    acc = main.optimizer if isinstance(main.optimizer, (Accumulator, SwappedAccumulator)) \
        else None
    if isinstance(acc, SwappedAccumulator):
        acc.count = len(pieces)  # it applies the sums on the last piece
    loss = 0.0
    for i, (a, b) in enumerate(pieces):
        ex = main if b - a == mb else tail_executor(model, b - a)
        if ex is not main:
            ex.guard = main.guard
            ex.set_source(main._x, main._y)
        if acc is not None:
            acc.scale = (b - a) / n
            if isinstance(acc, SwappedAccumulator):
                acc.micro = i
        loss += ex.run(idx[a:b]) * ((b - a) / n)
    if acc is not None:
        acc.flush(model.trainable_views())
        acc.scale = 1.0 / acc.k
    return loss
