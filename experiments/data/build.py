"""What the data kinds' build functions share (experiments/data/kinds.py): the request
they get, device ids, partitioning by name and each device's train/test split."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import partition as part
from .dataset import DeviceShard
from .partition import train_test_split_per_device


@dataclass
class Request:
    """What :func:`make_fleet_data` hands a kind's build function."""

    num_devices: int | None  # None: every device the data has (partition natural)
    seed: int
    partition: str
    test_fraction: float  # of a device's data, for devices without their own test set
    stratify: bool  # the test split keeps each device's label mix
    params: dict[str, Any]  # the kind's own parameters, defaults filled in
    partition_params: dict[str, Any]  # the partition's, defaults filled in
    meta: dict[str, Any]  # FleetData.meta: how the data was made


def partition_indices(labels: np.ndarray, partition: str, num_devices: int, seed: int,
                      p: dict[str, Any]) -> list[np.ndarray]:
    """Indices of ``labels`` per device for ``partition`` (iid, dirichlet or k_classes)."""
    if partition == "iid":
        return part.iid(labels.size, num_devices, seed)
    if partition == "dirichlet":
        return part.dirichlet(labels, num_devices, float(p["alpha"]), int(p["min_size"]), seed)
    return part.k_classes(labels, num_devices, int(p["k"]), seed)


def device_ids(n: int) -> list[str]:
    """``d0 .. d<n-1>``, zero-padded so that they sort in order."""
    width = len(str(max(n - 1, 0)))
    return [f"d{i:0{width}d}" for i in range(n)]


def split(ids: list[str], shards: list[tuple[np.ndarray, np.ndarray]], test_fraction: float,
          stratify: bool, seed: int) -> list[DeviceShard]:
    """Each device's (x, y) cut into its train and local test sets."""
    out = []
    for i, (dev, (x, y)) in enumerate(zip(ids, shards)):
        [(tr, te)] = train_test_split_per_device([np.arange(y.size)], test_fraction, seed + i,
                                                 labels=y if stratify else None)
        out.append(DeviceShard(dev, x[tr], y[tr], x[te], y[te]))
    return out
