"""The weight store: every parameter is a view into one contiguous float32 buffer.

One buffer makes the shared part of a model cheap to send (a slice, no copies) and makes
weight bytes exact to report. Files are ``.npz`` with keys ``<layer>:<param>``, written
to a temporary file and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from typing import BinaryIO, Callable

import numpy as np

from .errors import DataError
from .init import initialize


@dataclass(frozen=True)
class ParamInfo:
    key: str
    shape: tuple[int, ...]
    offset: int  # in elements
    trainable: bool
    init: str
    fan_in: int
    fan_out: int

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))


class WeightStore:
    """Parameters of a model, in declaration order."""

    def __init__(self, params: list[ParamInfo]) -> None:
        self.params = {p.key: p for p in params}
        total = sum(p.size for p in params)
        self.buffer = np.zeros(total, dtype=np.float32)
        self._views = {p.key: self.buffer[p.offset:p.offset + p.size].reshape(p.shape)
                       for p in params}

    @classmethod
    def from_specs(cls, specs: list[tuple[str, tuple[int, ...], bool, str, int, int]]) -> "WeightStore":
        params, off = [], 0
        for key, shape, trainable, init, fi, fo in specs:
            params.append(ParamInfo(key, tuple(shape), off, trainable, init, fi, fo))
            off += int(math.prod(shape))
        return cls(params)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    def keys(self) -> list[str]:
        return list(self._views)

    def get(self, key: str) -> np.ndarray:
        return self._views[key]

    def initialize(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for p in self.params.values():
            initialize(self._views[p.key], p.init, p.fan_in, p.fan_out, rng, p.key)

    def state(self) -> dict[str, np.ndarray]:
        """Copies of every parameter, keyed ``layer:param``."""
        return {k: v.copy() for k, v in self._views.items()}

    def load_state(self, arrays: dict[str, np.ndarray], strict: bool = True, source: str = "") -> None:
        """Copy arrays in; shapes must match exactly; with ``strict`` every key is required."""
        where = f" in {source}" if source else ""
        unknown = sorted(set(arrays) - set(self._views))
        if unknown:
            raise DataError(f"weight '{unknown[0]}'{where} is not a parameter of this model "
                            f"(it has: {', '.join(list(self._views)[:6])}...)")
        for k, a in arrays.items():
            a = np.asarray(a)
            if a.dtype.kind not in "fiu":
                raise DataError(f"weight '{k}'{where} has dtype {a.dtype}, expected float32")
            if a.shape != self._views[k].shape:
                raise DataError(f"weight '{k}'{where} has shape {a.shape}, "
                                f"expected {self._views[k].shape}")
            if not np.all(np.isfinite(a)):
                raise DataError(f"weight '{k}'{where} contains NaN or Inf")
        if strict:
            missing = [k for k in self._views if k not in arrays]
            if missing:
                raise DataError(f"weight '{missing[0]}' is missing{where}")
        for k, a in arrays.items():
            self._views[k][...] = a

    def save(self, path: str) -> None:
        save_npz_atomic(path, self.state())

    def load(self, path: str, strict: bool = True) -> None:
        self.load_state(load_npz(path), strict=strict, source=path)


def atomic_write(path: str, write: Callable[[BinaryIO], None], suffix: str = ".tmp") -> None:
    """Write a file through ``write(f)`` into a temporary file in the same folder, fsync,
    then rename over ``path``: a crash leaves the old file or the new one, never half."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise DataError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz_atomic(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as ``.npz``, atomically."""
    atomic_write(path, lambda f: np.savez(f, **arrays), ".npz")


def load_npz(path: str) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file; errors name the file and the problem."""
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read {path} as .npz: {msg}") from None
