"""Generated data (no downloads) and ``.npz`` data files."""

from __future__ import annotations

import math

import numpy as np

from .errors import DataError
from .weights import load_npz


def synthetic_classification(input_shape: tuple[int, ...], classes: int = 10, n: int = 1024,
                             seed: int = 0, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A learnable task: each class has a prototype; samples are prototype + noise.

    Image-shaped inputs (C, H, W) get smooth prototypes (a coarse random grid upsampled),
    so convolutions have spatial structure to find. Returns ``x`` float32 and ``y`` int64.
    """
    rng = np.random.default_rng(seed)
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 3 and shape[1] >= 4 and shape[2] >= 4:
        c, h, w = shape
        coarse = rng.normal(0.0, 1.0, (classes, c, 4, 4))
        ry, rx = math.ceil(h / 4), math.ceil(w / 4)
        protos = np.repeat(np.repeat(coarse, ry, axis=2), rx, axis=3)[:, :, :h, :w]
    else:
        protos = rng.normal(0.0, 1.0, (classes, *shape))
    y = rng.integers(0, classes, n)
    x = protos[y] + noise * rng.normal(0.0, 1.0, (n, *shape))
    return x.astype(np.float32), y.astype(np.int64)


def load_dataset(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``x`` and ``y`` from an ``.npz`` file (see DESIGN.md for shapes and dtypes)."""
    arrays = load_npz(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path} has no array '{key}' (found: {', '.join(arrays) or 'none'})")
    x, y = arrays["x"], arrays["y"]
    if x.ndim < 2:
        raise DataError(f"{path}: x must be (N, features...) , got shape {x.shape}")
    if x.dtype.kind not in "fiu":
        raise DataError(f"{path}: x has dtype {x.dtype}, expected float32")
    if y.ndim not in (1, 2):
        raise DataError(f"{path}: y must be (N,) class ids or (N, K) targets, got shape {y.shape}")
    if len(y) != len(x):
        raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        raise DataError(f"{path}: x contains NaN or Inf")
    return x, y
