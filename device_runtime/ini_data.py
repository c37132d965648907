"""Data sets named by INI files: ``[train_set]``/``[valid_set]``/``[test_set]`` and the
legacy ``[DataSet]`` (``TrainData``/``ValidData``/``TestData``).

``type = file`` sets are NNTrainer's raw format: consecutive float32 records, each the
input features followed by the label (one-hot for classification), native byte order.
Paths are resolved against the INI file's folder when the file is read; a missing file
is reported only when the data is used.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from .errors import DataError, ModelError

SPLITS = ("train", "valid", "test")
_LEGACY_KEYS = {"traindata": "train", "validdata": "valid", "testdata": "test"}


@dataclass(frozen=True)
class DataSetSpec:
    """Where one split's records are, and where the INI file said so (for errors)."""

    split: str  # train | valid | test
    path: str  # resolved
    where: str  # "model.ini: [train_set] path = data.dat", for messages
    kind: str = "file"
    buffer_size: int | None = None


def resolve(ini_path: str, value: str) -> str:
    """A path relative to the INI file's folder (absolute paths stay)."""
    base = os.path.dirname(os.path.abspath(ini_path))
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def parse_set_section(ini_path: str, sec: str, items: dict[str, str]) -> DataSetSpec:
    """``[train_set]`` etc.: ``type = file``, ``path = ...``, ``buffer_size``."""
    split = sec.strip().lower().split("_")[0]
    kind = items.get("type", "file").strip().lower()
    if kind != "file":
        raise ModelError(f"{ini_path}: [{sec}] type = {kind} is not supported (only file)")
    unknown = sorted(set(items) - {"type", "path", "buffer_size"})
    if unknown:
        raise ModelError(f"{ini_path}: [{sec}] unknown key '{unknown[0]}' "
                         "(known: type, path, buffer_size)")
    if not items.get("path"):
        raise ModelError(f"{ini_path}: [{sec}] needs path = FILE")
    return DataSetSpec(split, resolve(ini_path, items["path"]),
                       f"{ini_path}: [{sec}] path = {items['path']}", kind,
                       _int(ini_path, sec, "buffer_size", items.get("buffer_size")))


def parse_legacy_section(ini_path: str, sec: str, items: dict[str, str]) -> list[DataSetSpec]:
    """``[DataSet]``: ``TrainData``, ``ValidData``, ``TestData`` (``LabelData`` names the
    class list and ``BufferSize`` the prefetch size: both recorded, not needed)."""
    unknown = sorted(set(items) - set(_LEGACY_KEYS) - {"labeldata", "buffersize"})
    if unknown:
        raise ModelError(f"{ini_path}: [{sec}] unknown key '{unknown[0]}' "
                         "(known: TrainData, ValidData, TestData, LabelData, BufferSize)")
    buf = _int(ini_path, sec, "BufferSize", items.get("buffersize"))
    return [DataSetSpec(split, resolve(ini_path, items[k]), f"{ini_path}: [{sec}] {k} = {items[k]}",
                        "file", buf)
            for k, split in _LEGACY_KEYS.items() if items.get(k)]


def _int(ini_path: str, sec: str, key: str, value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except ValueError:
        raise ModelError(f"{ini_path}: [{sec}] {key} = {value!r} is not a number") from None
    if not (v >= 1 and math.isfinite(v) and v == int(v)):
        raise ModelError(f"{ini_path}: [{sec}] {key} = {value!r} must be a positive integer")
    return int(v)


def load_records(spec: DataSetSpec, in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Read a raw float32 file into ``x (N, *in_shape)`` and ``y (N, *out_shape)``."""
    if not os.path.isfile(spec.path):
        raise DataError(f"{spec.where}: data file not found ({spec.path})")
    fin, fout = math.prod(in_shape), math.prod(out_shape)
    size = os.path.getsize(spec.path)
    rec = 4 * (fin + fout)
    if size == 0 or size % rec:
        raise DataError(f"{spec.where}: {size} bytes is not a whole number of records of "
                        f"{fin} inputs + {fout} labels ({rec} bytes each)")
    data = np.fromfile(spec.path, dtype=np.float32).reshape(-1, fin + fout)
    if not np.all(np.isfinite(data)):
        raise DataError(f"{spec.where}: the file contains NaN or Inf")
    x = np.ascontiguousarray(data[:, :fin]).reshape(-1, *in_shape)
    y = np.ascontiguousarray(data[:, fin:]).reshape(-1, *out_shape)
    return x, y


def one_hot_to_ids(y: np.ndarray) -> np.ndarray | None:
    """Class ids if every row of ``y`` (N, K) is exactly one-hot, else None."""
    y2 = y.reshape(y.shape[0], -1)
    if np.all((y2 == 0) | (y2 == 1)) and np.all(y2.sum(axis=1) == 1):
        return np.argmax(y2, axis=1).astype(np.int64)
    return None
