"""Check what a user hands a model before it reaches a step: compile settings, data.

Features become one C-contiguous float32 row per sample (any shape with the input's
element count is accepted); labels become int64 class ids or float32 targets.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError, DataError
from .layers.base import Shape
from .planner import STRATEGIES
from .units import MAX_BATCH_SIZE


def prepare_x(x: np.ndarray, input_shape: Shape, what: str = "x") -> np.ndarray:
    """(N, ...) with the input's element count per sample -> C-contiguous (N, F) float32
    (generated samples, made a batch at a time, are passed on as they are)."""
    per = int(math.prod(input_shape))
    if not isinstance(x, np.ndarray):
        from .data import GeneratedSamples

        if isinstance(x, GeneratedSamples) and x.shape[1] == per:
            return x  # (N, F) float32 rows, for np.take
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise DataError(f"data {what} is empty (shape {x.shape})")
    if x.dtype.kind not in "fiu":
        raise DataError(f"data {what} has dtype {x.dtype}, expected float32")
    if x.size // x.shape[0] != per or x.size % x.shape[0]:
        raise DataError(f"data {what} has shape {x.shape}: {x.size // max(x.shape[0], 1)} values "
                        f"per sample, the model's input {input_shape} needs {per}")
    return np.ascontiguousarray(x.reshape(x.shape[0], per), dtype=np.float32)


def prepare_y(y: np.ndarray, n: int, output_shape: Shape,
              loss_name: str) -> tuple[np.ndarray, str]:
    """Labels for ``n`` samples -> (int64 class ids, "index") or (float32 (N, K), "dense")."""
    y = np.asarray(y)
    k = int(math.prod(output_shape))
    if y.shape[0] != n:
        raise DataError(f"data has {n} samples in x but {y.shape[0]} labels in y")
    if y.ndim == 1 and y.dtype.kind in "iu":
        if loss_name != "cross_softmax":
            raise DataError(f"loss {loss_name} needs float targets (N, {k}), got class ids")
        classes = output_shape[-1]
        if y.size and (y.min() < 0 or y.max() >= classes):
            raise DataError(f"labels must be class ids in [0, {classes}), found "
                            f"{int(y.min())}..{int(y.max())}")
        return np.ascontiguousarray(y, dtype=np.int64), "index"
    if y.dtype.kind not in "fiu":
        raise DataError(f"labels y have dtype {y.dtype}, expected int64 ids or float32 targets")
    if y.size // max(n, 1) != k:
        raise DataError(f"targets y have shape {y.shape}, the model's output {output_shape} "
                        f"needs {k} values per sample")
    return np.ascontiguousarray(y.reshape(n, k), dtype=np.float32), "dense"


def check_compile(batch_size: int, planner: str, clip_grad_norm: float | None, swap: str,
                   lookahead: int, ram_cap: int | None, label_kind: str | None) -> None:
    """Refuse bad compile settings with the value and what is allowed."""
    if not 1 <= int(batch_size) <= MAX_BATCH_SIZE:
        raise ConfigError(f"batch size must be in [1, {MAX_BATCH_SIZE}], got {batch_size}")
    if planner not in STRATEGIES:
        raise ConfigError(f"unknown planner '{planner}' (known: {', '.join(STRATEGIES)})")
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ConfigError(f"clip_grad_norm must be > 0, got {clip_grad_norm}")
    if swap not in ("off", "auto", "on"):
        raise ConfigError(f"swap must be off, auto or on, got {swap!r}")
    if lookahead < 0:
        raise ConfigError(f"lookahead must be >= 0, got {lookahead}")
    if ram_cap is not None and ram_cap <= 0:
        raise ConfigError(f"RAM cap must be positive, got {ram_cap}")
    if label_kind is not None and label_kind not in ("index", "dense"):
        raise ConfigError(f"label_kind must be index or dense, got {label_kind!r}")
