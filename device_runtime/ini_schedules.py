"""``[LearningRateScheduler]`` sections -> (base learning rate, Schedule).

NNTrainer's schedulers and their keys: ``constant`` (learning_rate), ``exponential``
(learning_rate, decay_rate, decay_steps: lr * rate^(it / steps)), ``step``
(learning_rate = lr0, lr1, ...; iteration = it0, it1, ...: lr_k while it <= it_k) and
``cosine`` (max_learning_rate, min_learning_rate, decay_steps; periodic, restarting
every decay_steps). ``step`` and ``cosine`` differ from :class:`Schedule`'s own forms,
so they are small subclasses here.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from .errors import ModelError
from .optimizers import Schedule

_KEYS = {
    "constant": {"learning_rate"},
    "exponential": {"learning_rate", "decay_rate", "decay_steps"},
    "step": {"learning_rate", "iteration"},
    "cosine": {"max_learning_rate", "min_learning_rate", "decay_steps"},
}


@dataclass
class PiecewiseSchedule(Schedule):
    """NNTrainer's step scheduler: ``lrs[k]`` up to iteration ``iterations[k]``."""

    lrs: tuple[float, ...] = (0.01,)
    iterations: tuple[int, ...] = ()

    def __call__(self, base_lr: float, it: int) -> float:
        k = bisect.bisect_left(self.iterations, it)
        return self.lrs[k] if k < len(self.iterations) else self.lrs[-1]


@dataclass
class PeriodicCosineSchedule(Schedule):
    """NNTrainer's cosine annealing: restarts every ``decay_steps`` iterations."""

    def __call__(self, base_lr: float, it: int) -> float:
        t = it % self.decay_steps
        cos = math.cos(math.pi * t / self.decay_steps)
        return self.min_lr + 0.5 * (base_lr - self.min_lr) * (1 + cos)


def _floats(path: str, sec: str, key: str, value: str, low: float = 0.0) -> list[float]:
    """Finite numbers ``>= low`` (``> 0`` for learning rates)."""
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise ModelError(f"{path}: [{sec}] {key} = {value!r} is not a number list") from None
    if not out:
        raise ModelError(f"{path}: [{sec}] {key} is empty")
    positive = "learning_rate" in key and not key.startswith("min")
    if not all(math.isfinite(v) and v >= low and (v > 0 or not positive) for v in out):
        raise ModelError(f"{path}: [{sec}] {key} = {value!r} must be finite and "
                         f"{'> 0' if positive else f'>= {low:g}'}")
    return out


def parse_scheduler(path: str, sec: str, items: dict[str, str]) -> tuple[float | None, Schedule]:
    """The section's base learning rate (None when it does not set one) and schedule."""
    kind = items.get("type", "constant").strip().lower()
    if kind not in _KEYS:
        raise ModelError(f"{path}: [{sec}] type = {kind} is not supported "
                         f"(known: {', '.join(_KEYS)})")
    unknown = sorted(set(items) - _KEYS[kind] - {"type"})
    if unknown:
        raise ModelError(f"{path}: [{sec}] key '{unknown[0]}' does not apply to a {kind} "
                         f"scheduler (known: {', '.join(sorted(_KEYS[kind]))})")
    missing = sorted(k for k in _KEYS[kind] if k not in items and kind != "constant")
    if missing:
        raise ModelError(f"{path}: [{sec}] a {kind} scheduler needs {missing[0]}")

    def num(key: str) -> float:
        return _floats(path, sec, key, items[key])[0]

    if kind == "constant":
        return (num("learning_rate") if "learning_rate" in items else None), Schedule()
    if kind == "exponential":
        return num("learning_rate"), Schedule("exponential", decay_rate=num("decay_rate"),
                                              decay_steps=_positive(path, sec, num("decay_steps")))
    if kind == "cosine":
        return num("max_learning_rate"), PeriodicCosineSchedule(
            "cosine", decay_steps=_positive(path, sec, num("decay_steps")),
            min_lr=num("min_learning_rate"))
    lrs = _floats(path, sec, "learning_rate", items["learning_rate"])
    its = [_positive(path, sec, v, "iteration", 0)
           for v in _floats(path, sec, "iteration", items["iteration"])]
    if len(lrs) != len(its) + 1 or its != sorted(set(its)):
        raise ModelError(f"{path}: [{sec}] a step scheduler needs one more learning_rate than "
                         f"iterations, iterations increasing: got {lrs} and {its}")
    return lrs[0], PiecewiseSchedule("step", lrs=tuple(lrs), iterations=tuple(its))


def _positive(path: str, sec: str, v: float, key: str = "decay_steps", low: int = 1) -> int:
    """``v`` (already finite) as an integer ``>= low``."""
    if v < low or v != int(v):
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ModelError(f"{path}: [{sec}] {key} = {v:g} must be {what}")
    return int(v)
