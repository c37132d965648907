"""Gradients of a device's loss at any weights, from its compiled trainer, for the rules
whose update is not one optimizer step on one model (APFL, pFedMe, Per-FedAvg, FedRoD).

:class:`Gradients` runs the trainer's own forward/backward step with the optimizer's
update replaced by a copy of the gradient: the weights it was given stay as they are, and
the rule does its paper's update in numpy. Batches come in the order ``Model.fit`` would
take them (a reshuffle per epoch; the last partial batch kept unless ``drop-last``), and
the loop runs under the device's RAM guard like any training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from ..cap import guard_training
from ..errors import ConfigError, TrainingDiverged
from ..optimizers import Optimizer
from .config import DeviceConfig
from .prox import ProxOptimizer
from .registry import resolve
from .state import Arrays, DeviceState
from .trainers import phase_seed, with_fallbacks


class _Capture(Optimizer):
    """Stands in for the optimizer during one step: keeps each gradient block (plus the
    config's L2 weight decay, as SGD would add it) and leaves the weight alone."""

    name = "capture"

    def __init__(self, sizes: dict[str, int], weight_decay: float) -> None:
        super().__init__(lr=1.0)
        self.grads = {k: np.zeros(n, np.float32) for k, n in sizes.items()}
        self.decay = np.float32(weight_decay)

    def update(self, key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        out = self.grads[key][start:start + g.size]
        np.copyto(out, g.reshape(-1))
        if self.decay:
            out += self.decay * w.reshape(-1)


def plain_sgd(cfg: DeviceConfig) -> None:
    """Refuse optimizers the papers' updates do not use (they are plain SGD steps)."""
    if cfg.optimizer != "sgd" or cfg.momentum:
        raise ConfigError(f"local-update {resolve(cfg)} takes the paper's plain gradient "
                          f"steps: set optimizer = sgd and momentum = 0 (got {cfg.optimizer}, "
                          f"momentum {cfg.momentum})")


class Gradients:
    """``grads(weights, idx) -> (loss, {key: gradient})`` on rows ``idx`` of the device's
    train split, for every parameter the device trains (frozen ones are left out)."""

    def __init__(self, cfg: DeviceConfig, state: DeviceState, batch: int,
                 frozen: tuple[str, ...]) -> None:
        plain_sgd(cfg)
        self.cfg, self.state, self.batch = cfg, state, batch
        self.model = m = with_fallbacks(cfg, state.settings, batch, frozen)
        data = state.data
        m.cap_exceeded = False
        m.fit(data.x_train, data.y_train, steps=0)  # the executor's source, no step
        views = m.trainable_views()
        self.keys = list(views)
        self.shapes = {k: m.weights.get(k).shape for k in self.keys}
        self._cap = _Capture({k: v.size for k, v in views.items()}, cfg.weight_decay)
        self.n = int(data.y_train.shape[0])

    def __call__(self, weights: Arrays, idx: np.ndarray) -> tuple[float, Arrays]:
        m = self.model
        m.set_weights(weights, strict=False)
        opt = m.optimizer
        assert isinstance(opt, ProxOptimizer)
        inner, opt.inner, opt.mu = opt.inner, self._cap, 0.0
        try:
            loss = m.train_step(idx)
        finally:
            opt.inner = inner
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss is {loss}: training diverged (lower the learning "
                                   f"rate); nothing saved")
        return loss, {k: self._cap.grads[k].reshape(self.shapes[k]).copy() for k in self.keys}

    def steps(self) -> int:
        """Steps of one round: local-steps, else local-epochs passes over the batches."""
        cfg = self.cfg
        return cfg.local_steps or cfg.local_epochs * self.per_epoch()

    def per_epoch(self) -> int:
        """Batches per epoch: the last, partial one counted unless ``drop-last``."""
        return self.n // self.batch if self.cfg.drop_last else -(-self.n // self.batch)

    def batches(self, phase: str) -> Iterator[np.ndarray]:
        """Batch rows without end, as ``Model.fit`` orders them for this phase's seed (a
        reshuffle per epoch; its last batch smaller unless ``drop-last``)."""
        rng = np.random.default_rng(phase_seed(self.cfg, self.state.device_id, phase))
        perm = np.arange(self.n, dtype=np.int64)
        b, n = self.batch, self.n
        while True:
            rng.shuffle(perm)
            for j in range(self.per_epoch()):
                yield perm[j * b:min((j + 1) * b, n)].copy()

    @contextmanager
    def guarded(self) -> Iterator[None]:
        """The device's RAM guard over a block of steps (as ``Model.fit`` has)."""
        with guard_training(self.model, self.model.train_executor):
            yield


def axpy(a: float, x: Arrays, y: Arrays) -> Arrays:
    """``y + a * x`` over the keys of ``x`` (others of ``y`` kept), in float32."""
    out = dict(y)
    for k, g in x.items():
        out[k] = (y[k] + np.float32(a) * g).astype(np.float32, copy=False)
    return out
