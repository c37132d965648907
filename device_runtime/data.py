"""Generated data (no downloads) and ``.npz`` data files."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import DataError
from .weights import load_npz

_CHUNK_BYTES = 1 << 20  # float64 noise generated at a time when a whole set is made


def _draw(input_shape: tuple[int, ...], classes: int, n: int,
          seed: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """The generator, the class prototypes as (classes, F) float64 and the labels; the
    generator is left where the samples' noise starts."""
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
    return rng, np.ascontiguousarray(protos).reshape(classes, -1), y


def synthetic_classification(input_shape: tuple[int, ...], classes: int = 10, n: int = 1024,
                             seed: int = 0, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A learnable task: each class has a prototype; samples are prototype + noise.

    Image-shaped inputs (C, H, W) get smooth prototypes (a coarse random grid upsampled),
    so convolutions have spatial structure to find. Returns ``x`` float32 and ``y`` int64.
    The noise is drawn and added a chunk of samples at a time (float64, then rounded to
    float32 once), so no float64 copy of the whole set is ever made.
    """
    rng, protos, y = _draw(input_shape, classes, n, seed)
    per = protos.shape[1]
    x = np.empty((n, per), np.float32)
    rows = max(1, _CHUNK_BYTES // (8 * max(per, 1)))
    for a in range(0, n, rows):
        b = min(n, a + rows)  # the same stream as one (n, ...) draw: normals are drawn in order
        x[a:b] = protos[y[a:b]] + noise * rng.normal(0.0, 1.0, (b - a, per))
    return x.reshape((n, *(int(d) for d in input_shape))), y.astype(np.int64)


class GeneratedSamples:
    """The ``x`` of :func:`synthetic_classification`, bit for bit, made a batch at a time.

    Only each sample's random-generator position is kept (16 bytes; the float32 set of
    1024 CIFAR-sized samples is 12 MiB): ``np.take(source, idx, axis=0, out=...)``, which
    is how the training loop feeds a batch, regenerates just those rows. Shaped (N, F)
    float32, like a prepared data set; ``np.asarray`` makes the whole set.
    """

    def __init__(self, input_shape: tuple[int, ...], classes: int = 10, n: int = 1024,
                 seed: int = 0, noise: float = 1.0) -> None:
        self.input_shape = tuple(int(d) for d in input_shape)
        self._rng, self._protos, y = _draw(self.input_shape, classes, n, seed)
        self.y = y.astype(np.int64)
        self.noise = noise
        self.shape = (int(n), int(self._protos.shape[1]))
        self.dtype = np.dtype(np.float32)
        bg = self._rng.bit_generator
        self._state: dict[str, Any] = dict(bg.state)
        if self._state.get("bit_generator") != "PCG64":
            raise DataError(f"generated data needs PCG64, got {self._state['bit_generator']}")
        self._marks = np.empty((n, 2), np.uint64)  # each sample's 128-bit PCG64 state
        for i in range(n):  # one pass over the stream (~30 ms per 3M values), nothing kept
            s = bg.state["state"]["state"]
            self._marks[i] = (s >> 64, s & 0xFFFF_FFFF_FFFF_FFFF)
            self._rng.normal(0.0, 1.0, self.shape[1])
        extra = {k: v for k, v in bg.state.items() if k != "state"}
        if extra != {k: v for k, v in self._state.items() if k != "state"}:
            raise DataError("generated data: the generator's 32-bit buffer moved")

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        """Bytes actually held (not the N x F x 4 of the set it stands for)."""
        return int(self._marks.nbytes + self._protos.nbytes + self.y.nbytes)

    def __len__(self) -> int:
        return self.shape[0]

    def _row(self, i: int, out: np.ndarray) -> None:
        hi, lo = (int(v) for v in self._marks[i])
        self._state["state"]["state"] = (hi << 64) | lo
        self._rng.bit_generator.state = self._state
        z = self._rng.normal(0.0, 1.0, self.shape[1])
        out[...] = self._protos[self.y[i]] + self.noise * z

    def take(self, indices: Any, axis: int | None = 0, out: np.ndarray | None = None,
             mode: str = "raise") -> np.ndarray:
        """Rows ``indices`` as float32 (N, F), into ``out`` if given (``np.take``'s method)."""
        if axis != 0:
            raise ValueError("GeneratedSamples.take: only axis=0")
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = self.shape[0]
        if mode == "clip":
            idx = np.clip(idx, 0, n - 1)
        elif mode == "wrap":
            idx = idx % n
        elif idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} samples")
        if out is None:
            out = np.empty((idx.size, self.shape[1]), self.dtype)
        if out.shape != (idx.size, self.shape[1]):
            raise ValueError(f"GeneratedSamples.take: out has shape {out.shape}, "
                             f"{idx.size} rows need {(idx.size, self.shape[1])}")
        for k, i in enumerate(idx):
            self._row(int(i) % n, out[k])
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        x = self.take(np.arange(self.shape[0]))
        return x if dtype is None else x.astype(dtype)


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
