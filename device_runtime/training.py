"""The training loop: batches from a (reshuffled) order of the samples, one step each,
micro-batches with gradient accumulation when the cap fit chose them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from . import hooks
from .cap import guard_training
from .cap.fit import refit_before_training
from .errors import ConfigError, DataError, TrainingDiverged

if TYPE_CHECKING:
    from .model import Model


@dataclass
class History:
    """What a ``fit`` saw, step by step."""

    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)  # per step, with class-id labels
    sizes: list[int] = field(default_factory=list)  # samples per step (the last may be fewer)
    examples: int = 0


def fit(model: Model, xs: np.ndarray, ys: np.ndarray, epochs: int, steps: int | None,
        shuffle: bool, seed: int, callback: Callable[[int, float], None] | None,
        start_epoch: int, drop_last: bool = True) -> History:
    """Train ``model`` on prepared ``xs``/``ys`` (see :meth:`Model.fit`)."""
    b = model.batch_size or 0
    if b == 0:
        raise ConfigError("compile() the model before training")
    n = xs.shape[0]
    if n < b and (drop_last or n == 0):
        raise DataError(f"data has {n} samples, fewer than one batch of {b}")
    per_epoch = n // b if drop_last else -(-n // b)  # with the last, partial batch
    total = steps if steps is not None else epochs * per_epoch
    if total < 0:
        raise ConfigError(f"steps/epochs must be >= 0, got {total}")
    ex = model.train_executor
    # the baseline moved: the step is fitted again over the new one, and measured again
    # with the new executor built (building it moves the baseline too: ~1 MiB for resnet18)
    for _ in range(3):
        if model.ram_cap is None or ex.runs or not refit_before_training(model):
            break
        ex.close()
        model._train = None
        ex = model.train_executor
    ex.set_source(xs, ys)
    rng = np.random.default_rng(seed)
    perm = np.arange(n, dtype=np.int64)
    if shuffle:
        for _ in range(start_epoch):
            rng.shuffle(perm)
    hist = History()
    with guard_training(model, ex):  # under a cap: stopped when it is crossed
        for step in range(total):
            j = step % per_epoch
            if j == 0 and shuffle:
                rng.shuffle(perm)
            idx = perm[j * b:min((j + 1) * b, n)]
            t0 = time.perf_counter()
            loss = model.train_step(idx)
            hist.step_seconds.append(time.perf_counter() - t0)
            hist.losses.append(loss)
            if not math.isfinite(loss):
                raise TrainingDiverged(f"the loss is {loss} at step {step + 1}: training "
                                       f"diverged (lower the learning rate); nothing saved")
            if ex.loss is not None and ex.loss.correct >= 0:
                hist.correct.append(ex.loss.correct)
            hist.examples += idx.size
            hist.sizes.append(int(idx.size))
            if callback is not None:
                callback(step, loss)
    if total:
        check_finite_weights(model)
    return hist


def check_finite_weights(model: Model, block: int = 1 << 16) -> None:
    """Raise :class:`TrainingDiverged` when a weight is NaN or infinite (checked block by
    block: no temporary the size of the model)."""
    buf = model.weights.buffer
    for a in range(0, buf.size, block):
        if not np.isfinite(buf[a:a + block]).all():
            bad = next(p.key for p in model.weights.params.values()
                       if p.offset + p.size > a and not np.isfinite(
                           buf[p.offset:p.offset + p.size]).all())
            raise TrainingDiverged(f"weight {bad} has NaN or infinite values: training "
                                   f"diverged (lower the learning rate); nothing saved")


def train_step(model: Model, idx: np.ndarray) -> float:
    """One optimizer step of ``model`` on rows ``idx`` of its executor's source."""
    hooks.run_before_step()
    opt = model.optimizer
    assert opt is not None
    ex = model.train_executor
    opt.begin_step()
    mb = model.micro_batch
    if idx.size < model.batch_size:  # the last, partial batch of an epoch
        from .tail import partial_step
        loss = partial_step(model, idx)
    elif mb == model.batch_size:
        loss = ex.run(idx)
    else:  # gradient accumulation over micro-batches, then one update
        k = model.batch_size // mb
        loss = 0.0
        acc = ex.optimizer
        for i in range(k):
            acc.micro = i  # a swapped accumulator applies the sums on the last one
            loss += ex.run(idx[i * mb:(i + 1) * mb]) / k
        ex.optimizer.flush(model.trainable_views())
    opt.end_step()
    return loss
