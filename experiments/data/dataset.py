"""The unified fleet data type: one train and one local test set per device.

(:class:`DeviceShard` is a device's share of the experiment's data; the device program's
own ``device_runtime.device.DeviceData`` is what a device trains on, without an id.)
Fleets are made by :func:`experiments.data.make_fleet_data` (experiments/data/kinds.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class DeviceShard:
    """One device's data: x float32 (n, *input_shape), y int64 (n,) class ids.

    The test set comes from the device's own distribution: personalized accuracy is
    measured on it.
    """

    device_id: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.y_test.shape[0])

    def label_histogram(self, num_classes: int, split: str = "train") -> np.ndarray:
        """Counts per class (int64, length ``num_classes``) of the train or test labels."""
        y = self.y_train if split == "train" else self.y_test
        return np.bincount(y, minlength=num_classes)[:num_classes]

    def save(self, path: str) -> None:
        """Write ``x, y, x_test, y_test`` to one ``.npz`` (readable by ``load_npz_dir``)."""
        np.savez(path, x=self.x_train, y=self.y_train, x_test=self.x_test, y_test=self.y_test)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance between two histograms (normalized first): 0 same, 1 disjoint."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def _five(values: np.ndarray) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"min": 0.0, "median": 0.0, "mean": 0.0, "max": 0.0}
    return {"min": float(v.min()), "median": float(np.median(v)), "mean": float(v.mean()),
            "max": float(v.max())}


@dataclass
class FleetData:
    """Every device's data plus what a model needs to know: input shape and class count."""

    devices: list[DeviceShard]
    input_shape: tuple[int, ...]
    num_classes: int
    name: str
    meta: dict[str, Any] = field(default_factory=dict)  # how it was made (kind, params, vocab...)

    def __len__(self) -> int:
        return len(self.devices)

    def __getitem__(self, i: int) -> DeviceShard:
        return self.devices[i]

    def device(self, device_id: str) -> DeviceShard:
        for d in self.devices:
            if d.device_id == device_id:
                return d
        raise KeyError(f"no device '{device_id}' in fleet data '{self.name}'")

    def label_histograms(self, split: str = "train") -> np.ndarray:
        """(num_devices, num_classes) label counts."""
        return np.stack([d.label_histogram(self.num_classes, split) for d in self.devices]) \
            if self.devices else np.zeros((0, self.num_classes), dtype=np.int64)

    def stats(self) -> dict[str, Any]:
        """Numbers behind :meth:`describe` (JSON-friendly): sizes and label skew."""
        hist = self.label_histograms("train")
        glob = hist.sum(axis=0)
        tv = np.array([total_variation(h, glob) for h in hist])
        return {
            "name": self.name,
            "num_devices": len(self.devices),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "train_samples": int(sum(d.num_train for d in self.devices)),
            "test_samples": int(sum(d.num_test for d in self.devices)),
            "train_per_device": _five(np.array([d.num_train for d in self.devices])),
            "test_per_device": _five(np.array([d.num_test for d in self.devices])),
            "classes_per_device": _five((hist > 0).sum(axis=1)),
            # 0 = every device has the fleet's label mix; 1 = disjoint label sets
            "label_tv_to_global": _five(tv),
        }

    def describe(self) -> str:
        """A short human-readable summary: samples per device and label histogram stats."""
        s = self.stats()

        def row(key: str, fmt: str = ".0f") -> str:
            v = s[key]
            return (f"min {v['min']:{fmt}}  median {v['median']:{fmt}}  mean {v['mean']:{fmt}}  "
                    f"max {v['max']:{fmt}}")

        return "\n".join([
            (f"{s['name']}: {s['num_devices']} devices, input {tuple(s['input_shape'])}, "
             f"{s['num_classes']} classes, {s['train_samples']} train / {s['test_samples']} test"),
            f"  train samples per device: {row('train_per_device')}",
            f"  test samples per device:  {row('test_per_device')}",
            f"  classes per device:       {row('classes_per_device', '.1f')}",
            f"  label TV to global:       {row('label_tv_to_global', '.2f')}",
        ])

    def save_npz_dir(self, path: str) -> None:
        """One ``<device id>.npz`` per device in ``path`` (see ``load_npz_dir``)."""
        os.makedirs(path, exist_ok=True)
        for d in self.devices:
            d.save(os.path.join(path, f"{d.device_id}.npz"))
