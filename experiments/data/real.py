"""Real data sets that a package ships inside itself (no download, ever): scikit-learn's
digits (kind ``digits``) and its small tabular sets (kind ``sklearn``: iris, wine,
breast_cancer). They need the ``data`` extra (``pip install 'nnfleet[data]'``); without it
a config that names them is a one-line error naming the extra.

Partition ``natural`` is the files' own order cut into contiguous blocks, one per device.
It is *not* a split by writer: scikit-learn's digits are the 1,797 test images of UCI's
"Optical Recognition of Handwritten Digits" (written by 13 people), but the package keeps
no writer ids, so a block of file order is only a stand-in for one writer's forms (its
labels are near-uniform: the forms cycle through the digits). The tabular files are
sorted by class, so their natural blocks are strongly label-skewed. ``iid``,
``dirichlet`` and ``k_classes`` re-partition the pooled samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from device_runtime.errors import ConfigError

from .build import Request, device_ids, partition_indices, split
from .dataset import FleetData

EXTRA = "data"  # pyproject.toml [project.optional-dependencies]
TABULAR = ("iris", "wine", "breast_cancer")
DIGITS_WRITERS = 13  # writers of the UCI test set that load_digits ships: the default fleet


def require_sklearn(kind: str) -> Any:
    """``sklearn.datasets``, or a one-line ConfigError naming the extra."""
    try:
        import sklearn.datasets as ds
    except ImportError:
        raise ConfigError(f"[data] kind = {kind!r} needs scikit-learn, which ships the data: "
                          f"pip install 'nnfleet[{EXTRA}]'") from None
    return ds


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits in file order: x float32 (1797, 1, 8, 8) in [0, 1] (the 0..16
    pixel counts / 16), y int64 (1797,)."""
    ds = require_sklearn("digits")
    d = ds.load_digits()
    x = (np.asarray(d.data, np.float32) / np.float32(16.0)).reshape(-1, 1, 8, 8)
    return np.ascontiguousarray(x), np.asarray(d.target, np.int64)


def load_tabular_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """One of scikit-learn's shipped tables, in file order: x float32 (N, F) standardized
    per feature (mean 0, std 1 over the whole table), y int64 class ids."""
    ds = require_sklearn("sklearn")
    d = getattr(ds, f"load_{name}")()
    x = np.asarray(d.data, np.float64)
    sd = x.std(axis=0)
    x = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    return np.ascontiguousarray(x, np.float32), np.asarray(d.target, np.int64)


def blocks(n: int, num_devices: int) -> list[np.ndarray]:
    """``range(n)`` in order, cut into ``num_devices`` contiguous near-equal blocks."""
    if not 1 <= num_devices <= n:
        raise ConfigError(f"cannot cut {n} samples into {num_devices} devices")
    return [np.asarray(b, np.int64) for b in np.array_split(np.arange(n), num_devices)]


def _fleet(r: Request, x: np.ndarray, y: np.ndarray, name: str) -> FleetData:
    assert r.num_devices is not None  # the kind's default_devices when not given
    n_dev = int(r.num_devices)
    if r.partition == "natural":
        idx = blocks(y.size, n_dev)
    else:
        idx = partition_indices(y, r.partition, n_dev, r.seed + 1, r.partition_params)
    devices = split(device_ids(n_dev), [(x[i], y[i]) for i in idx], r.test_fraction,
                    r.stratify, r.seed + 2)
    r.meta["natural"] = "file order in contiguous blocks (no writer ids are shipped)"
    return FleetData(devices, tuple(int(s) for s in x.shape[1:]), int(y.max()) + 1, name, r.meta)


def build_digits(r: Request) -> FleetData:
    x, y = load_digits_arrays()
    return _fleet(r, x, y, "digits")


def build_tabular(r: Request) -> FleetData:
    name = str(r.params["dataset"])
    x, y = load_tabular_arrays(name)
    return _fleet(r, x, y, f"sklearn/{name}")


def check_digits(p: dict[str, Any], devices: int | None) -> None:
    require_sklearn("digits")
    if devices is not None and devices > 1797:
        raise ConfigError(f"[data] devices = {devices}: digits has 1797 samples")


def check_tabular(p: dict[str, Any], devices: int | None) -> None:
    require_sklearn("sklearn")
