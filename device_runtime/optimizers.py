"""Optimizers (SGD, Adam, AdamW) and learning-rate schedules, PyTorch semantics.

State lives in one persistent float32 buffer allocated at compile time. Updates run at
each node's apply-gradient order, right after its gradients are computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError
from .kernels import optim as K
from .kernels.regularize import l2_add


@dataclass
class Schedule:
    """Learning rate as a function of the iteration (0-based)."""

    kind: str = "constant"  # constant | exponential | step | cosine
    decay_rate: float = 0.96  # exponential: lr * decay_rate ** (it / decay_steps)
    decay_steps: int = 1000  # exponential and cosine period
    step_size: int = 1000  # step: lr * gamma ** (it // step_size)
    gamma: float = 0.1
    min_lr: float = 0.0  # cosine: floor

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "exponential", "step", "cosine"):
            raise ConfigError(f"unknown learning-rate schedule '{self.kind}' "
                              "(known: constant, exponential, step, cosine)")
        if self.decay_steps <= 0 or self.step_size <= 0:
            raise ConfigError("decay_steps and step_size must be positive")

    def __call__(self, base_lr: float, it: int) -> float:
        if self.kind == "exponential":
            return base_lr * self.decay_rate ** (it / self.decay_steps)
        if self.kind == "step":
            return base_lr * self.gamma ** (it // self.step_size)
        if self.kind == "cosine":  # torch CosineAnnealingLR closed form, clamped at the end
            t = min(it, self.decay_steps)
            cos = math.cos(math.pi * t / self.decay_steps)
            return self.min_lr + 0.5 * (base_lr - self.min_lr) * (1 + cos)
        return base_lr


class Optimizer:
    """Base: owns per-parameter state slots in one buffer."""

    name = ""
    slots = 0  # state arrays per parameter

    def __init__(self, lr: float = 0.01, weight_decay: float = 0.0,
                 schedule: Schedule | None = None) -> None:
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"learning rate must be a positive number, got {lr}")
        if weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {weight_decay}")
        self.base_lr = float(lr)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.schedule = schedule or Schedule()
        self.iteration = 0
        self.state_buffer = np.zeros(0, np.float32)
        self._state: dict[str, list[np.ndarray]] = {}
        # per-parameter L2 terms from layer properties (device_runtime/regularizers.py)
        self.param_decay: dict[str, float] = {}

    def init_state(self, params: list[tuple[str, int]]) -> None:
        """Allocate state for (key, size) parameters; keeps existing values for known keys."""
        total = sum(n for _, n in params) * self.slots
        old = {k: [a.copy() for a in v] for k, v in self._state.items()}
        self.state_buffer = np.zeros(total, np.float32)
        self._state, off = {}, 0
        for key, n in params:
            arrs = []
            for _ in range(self.slots):
                arrs.append(self.state_buffer[off:off + n])
                off += n
            self._state[key] = arrs
            if key in old and all(a.shape == b.shape for a, b in zip(old[key], arrs)):
                for a, b in zip(arrs, old[key]):
                    a[...] = b

    @property
    def state_bytes(self) -> int:
        return int(self.state_buffer.nbytes)

    def begin_step(self) -> None:
        self.lr = self.schedule(self.base_lr, self.iteration)

    def end_step(self) -> None:
        self.iteration += 1

    def apply(self, key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        """What the executor calls: the parameter's own L2 term, then :meth:`update`."""
        c = self.param_decay.get(key)
        if c:  # g is this step's gradient (block): nothing reads it afterwards
            l2_add(g, w, c)
        self.update(key, w, g, start)

    def update(self, key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        """Update ``w`` (flat) with gradient ``g``; ``start`` is the element offset of this
        slice within the parameter (gradients applied block by block)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"iteration": self.iteration}
        for k, arrs in self._state.items():
            for i, a in enumerate(arrs):
                out[f"{k}#{i}"] = a.copy()
        return out

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.iteration = int(d.get("iteration", 0))
        for k, arrs in self._state.items():
            for i, a in enumerate(arrs):
                if f"{k}#{i}" in d:
                    a[...] = d[f"{k}#{i}"]


class SGD(Optimizer):
    """SGD with momentum, Nesterov and L2 weight decay (Sutskever et al., 2013)."""

    name = "sgd"

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, schedule: Schedule | None = None) -> None:
        super().__init__(lr, weight_decay, schedule)
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.slots = 1 if momentum > 0 else 0
        self._empty = np.zeros(1, np.float32)

    def update(self, key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        buf = self._state[key][0][start:start + g.size] if self.slots else self._empty
        K.sgd_step(w, g, buf, self.lr, self.momentum, self.weight_decay, self.nesterov,
                   self.iteration == 0)


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015); epsilon is added after the square root, as in PyTorch."""

    name = "adam"
    slots = 2
    decoupled = False

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8, weight_decay: float = 0.0,
                 schedule: Schedule | None = None) -> None:
        super().__init__(lr, weight_decay, schedule)
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1 and epsilon > 0):
            raise ConfigError(f"adam needs 0<=beta<1 and epsilon>0, got {beta1}, {beta2}, "
                              f"{epsilon}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(epsilon)

    def update(self, key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        m, v = self._state[key]
        n = g.size
        K.adam_step(w, g, m[start:start + n], v[start:start + n], self.lr, self.beta1,
                    self.beta2, self.eps, self.weight_decay, self.iteration + 1, self.decoupled)


class AdamW(Adam):
    """AdamW: decoupled weight decay (Loshchilov & Hutter, 2019)."""

    name = "adamw"
    decoupled = True

    def __init__(self, lr: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8, weight_decay: float = 0.01,
                 schedule: Schedule | None = None) -> None:
        super().__init__(lr, beta1, beta2, epsilon, weight_decay, schedule)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


def create_optimizer(name: str, **kwargs: Any) -> Optimizer:
    """An optimizer by name (sgd, adam, adamw) with keyword hyper-parameters."""
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer '{name}' (known: {', '.join(OPTIMIZERS)})")
    try:
        return OPTIMIZERS[key](**kwargs)
    except TypeError as e:
        raise ConfigError(f"optimizer '{name}': {e}") from None


class Accumulator(Optimizer):
    """Collects gradient blocks of micro-batches; the real optimizer applies the mean.

    Micro-batching (gradient accumulation) lets a step that does not fit the RAM cap run
    as ``k`` smaller forward/backward passes: each pass "updates" through this object,
    which adds ``g / k`` into one persistent buffer; :meth:`flush` then hands the summed
    gradient to the real optimizer.
    """

    name = "accumulate"

    def __init__(self, inner: Optimizer, params: list[tuple[str, int]], k: int) -> None:
        super().__init__(lr=1.0)
        self.inner = inner
        self.k = int(k)
        self.scale = 1.0 / self.k
        total = sum(n for _, n in params)
        self.buffer = np.zeros(total, np.float32)
        self.acc: dict[str, np.ndarray] = {}
        off = 0
        for key, n in params:
            self.acc[key] = self.buffer[off:off + n]
            off += n

    @property
    def state_bytes(self) -> int:
        return int(self.buffer.nbytes)

    def update(self, key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        # g lives in the step pool and is dead after this call: scale it in place.
        np.multiply(g, self.scale, out=g)
        a = self.acc[key][start:start + g.size]
        np.add(a, g, out=a)

    def flush(self, weights: dict[str, np.ndarray]) -> None:
        """Apply the accumulated mean gradient with the real optimizer, then clear it."""
        for key, g in self.acc.items():
            self.inner.apply(key, weights[key], g, 0)
        self.buffer.fill(0.0)


class NullOptimizer(Optimizer):
    """Leaves weights alone: used to warm a model's kernels up without training it."""

    name = "null"

    def __init__(self) -> None:
        super().__init__(lr=1.0)

    def update(self, key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        pass
