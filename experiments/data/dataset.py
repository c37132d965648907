"""The unified fleet data type: one train and one local test set per device."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_runtime.errors import ConfigError, NNFleetError

from .generators import synthetic_fedprox, synthetic_images
from .loaders import load_leaf, load_npz_dir
from . import partition as part
from .partition import train_test_split_per_device


@dataclass
class DeviceData:
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

    devices: list[DeviceData]
    input_shape: tuple[int, ...]
    num_classes: int
    name: str
    meta: dict[str, Any] = field(default_factory=dict)  # how it was made (kind, params, vocab...)

    def __len__(self) -> int:
        return len(self.devices)

    def __getitem__(self, i: int) -> DeviceData:
        return self.devices[i]

    def device(self, device_id: str) -> DeviceData:
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
            f"{s['name']}: {s['num_devices']} devices, input {tuple(s['input_shape'])}, "
            f"{s['num_classes']} classes, {s['train_samples']} train / {s['test_samples']} test",
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


# ---------------------------------------------------------------- building from a config

# parameters each kind accepts (besides partition, test_fraction, stratify and the
# partition's own: alpha and min_size for dirichlet, k for k_classes)
def _kwargs(fn: Any, *skip: str) -> set[str]:
    return set(inspect.signature(fn).parameters) - {"num_devices", "seed", *skip}


KIND_PARAMS: dict[str, set[str]] = {
    "synthetic_fedprox": _kwargs(synthetic_fedprox),
    "synthetic_images": _kwargs(synthetic_images, "device_labels"),
    "leaf": {"path", "dataset", "vocab_size"},
    "npz_dir": {"path", "num_classes"},
}
# partitions each kind allows; the first is the default ("skew" = the generator's label_skew)
KIND_PARTITIONS: dict[str, tuple[str, ...]] = {
    "synthetic_fedprox": ("natural",),
    "synthetic_images": ("skew", "iid", "dirichlet", "k_classes"),
    "leaf": ("natural", "iid", "dirichlet", "k_classes"),
    "npz_dir": ("natural", "iid", "dirichlet", "k_classes"),
}
PARTITION_PARAMS = {"dirichlet": {"alpha", "min_size"}, "k_classes": {"k"}}


def _ids(n: int) -> list[str]:
    width = len(str(max(n - 1, 0)))
    return [f"d{i:0{width}d}" for i in range(n)]


def _partition(labels: np.ndarray, partition: str, num_devices: int, seed: int,
               p: dict[str, Any]) -> list[np.ndarray]:
    if partition == "iid":
        return part.iid(labels.size, num_devices, seed)
    if partition == "dirichlet":
        return part.dirichlet(labels, num_devices, float(p.get("alpha", 0.3)),
                              int(p.get("min_size", 10)), seed)
    return part.k_classes(labels, num_devices, int(p.get("k", 2)), seed)


def _split(ids: list[str], shards: list[tuple[np.ndarray, np.ndarray]], test_fraction: float,
           stratify: bool, seed: int) -> list[DeviceData]:
    out = []
    for i, (dev, (x, y)) in enumerate(zip(ids, shards)):
        [(tr, te)] = train_test_split_per_device([np.arange(y.size)], test_fraction, seed + i,
                                                 labels=y if stratify else None)
        out.append(DeviceData(dev, x[tr], y[tr], x[te], y[te]))
    return out


def make_fleet_data(kind: str, num_devices: int | None = None, seed: int = 0,
                    **params: Any) -> FleetData:
    """Build :class:`FleetData` from a config (e.g. a TOML table).

    ``kind``: ``synthetic_images``, ``synthetic_fedprox``, ``leaf`` (``path=``) or
    ``npz_dir`` (``path=``); the kind's own parameters are those of
    :func:`synthetic_images`, :func:`synthetic_fedprox`, :func:`load_leaf` and
    :func:`load_npz_dir` (see ``KIND_PARAMS``). ``partition``: ``natural`` (one device per
    generated device, LEAF user or file; ``num_devices`` picks a seeded subset, None = all),
    ``iid``, ``dirichlet`` (``alpha=0.3``, ``min_size=10``) or ``k_classes`` (``k=2``);
    for synthetic images these set each device's labels (default: the generator's
    ``label_skew``), for files they re-partition the pooled samples. Devices without their
    own test set get a ``test_fraction`` (0.2) split of their data, stratified by label
    unless ``stratify=False``.
    """
    if kind not in KIND_PARAMS:
        raise ConfigError(f"unknown data kind '{kind}' (known: {', '.join(KIND_PARAMS)})")
    p = dict(params)
    partition = str(p.pop("partition", None) or KIND_PARTITIONS[kind][0])
    if partition not in KIND_PARTITIONS[kind]:
        raise ConfigError(f"partition '{partition}' does not apply to {kind} (use one of: "
                          f"{', '.join(KIND_PARTITIONS[kind])})")
    test_fraction = float(p.pop("test_fraction", 0.2))
    stratify = bool(p.pop("stratify", True))
    allowed = KIND_PARAMS[kind] | PARTITION_PARAMS.get(partition, set())
    unknown = sorted(set(p) - allowed)
    if unknown:
        raise ConfigError(f"unknown {kind} data parameter(s) {', '.join(unknown)} with partition "
                          f"{partition} (known: {', '.join(sorted(allowed))})")
    if num_devices is None and (kind.startswith("synthetic") or partition != "natural"):
        raise ConfigError(f"{kind} data with partition {partition} needs num_devices")
    meta = {"kind": kind, "partition": partition, "seed": seed, "test_fraction": test_fraction,
            "params": dict(params)}
    gen = {k: v for k, v in p.items() if k in KIND_PARAMS[kind]}
    try:
        if kind == "synthetic_fedprox":
            assert num_devices is not None
            shards = synthetic_fedprox(num_devices, seed=seed, **gen)
            devices = _split(_ids(num_devices), shards, test_fraction, stratify, seed + 2)
            return FleetData(devices, (int(gen.get("dim", 60)),), int(gen.get("classes", 10)),
                             f"synthetic_fedprox({gen.get('alpha', 1.0)},{gen.get('beta', 1.0)})",
                             meta)
        if kind == "synthetic_images":
            assert num_devices is not None
            classes = int(gen.get("classes", 10))
            shape = tuple(int(s) for s in gen.pop("shape", (3, 32, 32)))
            labels = None
            if partition != "skew":
                n = num_devices * int(gen.get("samples_per_device", 200))
                pool = np.random.default_rng(seed + 1).permutation(np.arange(n) % classes)
                labels = [pool[i] for i in _partition(pool, partition, num_devices, seed + 1, p)]
            shards = synthetic_images(num_devices, shape=shape, device_labels=labels, seed=seed,
                                      **gen)
            devices = _split(_ids(num_devices), shards, test_fraction, stratify, seed + 2)
            return FleetData(devices, shape, classes, "synthetic_images", meta)

        # data on disk: per-user / per-file (x, y) and, where the files have it, a test set
        if "path" not in gen:
            raise ConfigError(f"{kind} data needs path= (a folder or file on this machine)")
        pick = num_devices if partition == "natural" else None
        if kind == "leaf":
            leaf = load_leaf(str(gen["path"]), gen.get("dataset"), int(gen.get("vocab_size", 1000)),
                             max_users=pick, seed=seed)
            if pick is not None and pick > len(leaf.train):
                raise ConfigError(f"asked for {pick} devices but {gen['path']} has "
                                  f"{len(leaf.train)} users")
            users = {u: (x, y, *leaf.test.get(u, (None, None))) for u, (x, y) in leaf.train.items()}
            shape, classes, name = leaf.input_shape, leaf.num_classes, f"leaf/{leaf.name}"
            if leaf.vocab:
                meta["vocab"] = leaf.vocab
        else:
            files = load_npz_dir(str(gen["path"]))
            names = sorted(files)
            if pick is not None:
                if pick > len(names):
                    raise ConfigError(f"asked for {pick} devices but {gen['path']} has "
                                      f"{len(names)} .npz files")
                chosen = np.random.default_rng(seed).choice(len(names), pick, replace=False)
                names = [names[i] for i in sorted(chosen)]
            users = {u: (files[u]["x"], files[u]["y"], files[u].get("x_test"),
                         files[u].get("y_test")) for u in names}
            shape = tuple(files[names[0]]["x"].shape[1:])
            top = max(int(max(v[1].max(initial=0), v[3].max(initial=0) if v[3] is not None else 0))
                      for v in users.values())
            classes = int(gen.get("num_classes", top + 1))
            if classes <= top:
                raise ConfigError(f"num_classes={classes} but {gen['path']} has label {top}")
            name = f"npz_dir/{os.path.basename(os.path.normpath(str(gen['path'])))}"
        if partition == "natural":
            devices = []
            for i, (u, (x, y, xt, yt)) in enumerate(users.items()):
                if xt is None:
                    devices += _split([u], [(x, y)], test_fraction, stratify, seed + 2 + i)
                else:
                    devices.append(DeviceData(u, x, y, xt, yt))
        else:
            assert num_devices is not None
            parts = [(x, y) for x, y, _, _ in users.values()]
            parts += [(xt, yt) for _, _, xt, yt in users.values() if xt is not None]
            x_all = np.concatenate([x for x, _ in parts])
            y_all = np.concatenate([y for _, y in parts])
            idx = _partition(y_all, partition, num_devices, seed + 1, p)
            devices = _split(_ids(num_devices), [(x_all[i], y_all[i]) for i in idx],
                             test_fraction, stratify, seed + 2)
        return FleetData(devices, tuple(int(s) for s in shape), classes, name, meta)
    except (ValueError, TypeError) as e:
        if isinstance(e, NNFleetError):
            raise
        raise ConfigError(f"{kind} data: {e}") from None
