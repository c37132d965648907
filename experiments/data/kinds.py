"""The data kinds of a fleet, one entry each in :data:`KINDS`, and :func:`make_fleet_data`.

An entry names the kind's own parameters (each with its default and the check the config
loader applies to it), the partitions it allows and the function that builds its
:class:`FleetData`. The config loader (experiments/config.py) derives its ``[data]`` checks
from these entries, so a new data set is one build function and one entry here.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from device_runtime.errors import ConfigError, NNFleetError
from experiments.config_checks import Check, boolean, fail, integer, list_of, number, one_of, text

from .build import Request, device_ids, partition_indices, split
from .dataset import FleetData
from .disk import leaf_users, npz_users, on_disk
from .generators import synthetic_fedprox, synthetic_images
from .loaders import load_leaf
from .real import TABULAR, build_digits, build_tabular, check_digits, check_tabular


@dataclass(frozen=True)
class Param:
    """A data parameter: the check of its config value, and its default."""

    check: Check
    default: Any = None


@dataclass(frozen=True)
class DataKind:
    """One kind of fleet data."""

    build: Callable[[Request], FleetData]
    params: dict[str, Param]  # its own parameters (besides the common and the partition's)
    partitions: tuple[str, ...]  # the partitions it allows; the first is the default
    on_disk: bool = False  # read from path= (else generated, for num_devices devices)
    # float32 elements per generated device, from the parameters (the config's memory check)
    elements: Callable[[dict[str, Any]], int] | None = None
    # checks of a [data] table across its values: (the kind's parameters, devices or None)
    check: Callable[[dict[str, Any], int | None], None] | None = None
    # the fleet's size when [data] devices is not given; None = every device the data has
    # (each file or user of a folder, partition natural)
    default_devices: int | None = 100

    def resolve(self, given: dict[str, Any]) -> dict[str, Any]:
        """The kind's parameters in ``given`` (config keys, kebab-case), with the defaults of
        those not given, by their Python names (``samples-per-device`` ->
        ``samples_per_device``)."""
        return {py(k): given.get(k, p.default) for k, p in self.params.items()}


def py(key: str) -> str:
    """A config key's Python name: ``min-size`` -> ``min_size``."""
    return key.replace("-", "_")


def kebab(key: str) -> str:
    """A Python name's config key: ``min_size`` -> ``min-size``."""
    return key.replace("_", "-")


def _from_signature(fn: Callable[..., Any], checks: dict[str, Check],
                    *skip: str) -> dict[str, Param]:
    """Parameters of a generator or loader ``fn``, with its defaults; ``checks`` must name
    every one of them (besides num_devices, seed and ``skip``)."""
    sig = inspect.signature(fn).parameters
    names = set(sig) - {"num_devices", "seed", *skip}
    assert names == set(checks), f"{fn.__name__}: checks of {sorted(checks)} for {sorted(names)}"
    return {kebab(k): Param(c, None if sig[k].default is inspect.Parameter.empty
                            else sig[k].default) for k, c in checks.items()}


# ---------------------------------------------------------------- partitions
# each partition's own parameters ("skew" = the generator's label_skew; "natural" = as the
# data comes: one device per generated device, LEAF user or file)
PARTITIONS: dict[str, dict[str, Param]] = {
    "natural": {}, "skew": {}, "iid": {},
    "dirichlet": {"alpha": Param(number(0, lo_open=True), 0.3),
                  "min-size": Param(integer(0), 10)},
    "k_classes": {"k": Param(integer(1), 2)},
}


# ---------------------------------------------------------------- generated kinds
def _fedprox(r: Request) -> FleetData:
    assert r.num_devices is not None
    p = r.params
    shards = synthetic_fedprox(r.num_devices, seed=r.seed, **p)
    devices = split(device_ids(r.num_devices), shards, r.test_fraction, r.stratify, r.seed + 2)
    return FleetData(devices, (int(p["dim"]),), int(p["classes"]),
                     f"synthetic_fedprox({p['alpha']},{p['beta']})", r.meta)


def _images(r: Request) -> FleetData:
    assert r.num_devices is not None
    p = dict(r.params)
    classes = int(p["classes"])
    shape = tuple(int(s) for s in p.pop("shape"))
    labels = None
    if r.partition != "skew":  # the partition sets each device's labels
        n = r.num_devices * int(p["samples_per_device"])
        pool = np.random.default_rng(r.seed + 1).permutation(np.arange(n) % classes)
        labels = [pool[i] for i in partition_indices(pool, r.partition, r.num_devices,
                                                     r.seed + 1, r.partition_params)]
    shards = synthetic_images(r.num_devices, shape=shape, device_labels=labels, seed=r.seed, **p)
    devices = split(device_ids(r.num_devices), shards, r.test_fraction, r.stratify, r.seed + 2)
    return FleetData(devices, shape, classes, "synthetic_images", r.meta)


def _check_images(p: dict[str, Any], devices: int | None) -> None:
    if len(p["shape"]) not in (1, 3):
        raise fail("[data] shape", p["shape"], "[C, H, W] or [F]")


def _check_fedprox(p: dict[str, Any], devices: int | None) -> None:
    if isinstance(p["samples"], list) and len(p["samples"]) != devices:
        raise ConfigError(f"[data] samples has {len(p['samples'])} counts for {devices} devices")


def _fedprox_elements(p: dict[str, Any]) -> int:
    samples = p["samples"] or 0
    most = p["max_samples"] if p["max_samples"] is not None else \
        (max(samples) if isinstance(samples, list) else samples)
    return int(most) * int(p["dim"])


def _samples(where: str, v: Any) -> None:
    (list_of(integer(1), 1) if isinstance(v, list) else integer(1))(where, v)


# ---------------------------------------------------------------- the registry
DISK_PARTITIONS = ("natural", "iid", "dirichlet", "k_classes")
KINDS: dict[str, DataKind] = {
    "synthetic_fedprox": DataKind(
        _fedprox, _from_signature(synthetic_fedprox, {
            "alpha": number(0), "beta": number(0), "dim": integer(1), "classes": integer(2),
            "samples": _samples, "max_samples": integer(1), "iid": boolean}),
        ("natural",), elements=_fedprox_elements, check=_check_fedprox),
    "synthetic_images": DataKind(
        _images, _from_signature(synthetic_images, {
            "classes": integer(2), "shape": list_of(integer(1), 1), "label_skew": number(0, 1),
            "feature_shift": number(0), "samples_per_device": integer(1), "noise": number(0),
            "pixel_noise": number(0), "grid": integer(1)}, "device_labels"),
        ("skew", "iid", "dirichlet", "k_classes"),
        elements=lambda p: int(p["samples_per_device"]) * math.prod(p["shape"]),
        check=_check_images),
    "leaf": DataKind(
        lambda r: on_disk(r, *leaf_users(r)), _from_signature(load_leaf, {
            "path": text, "dataset": one_of("femnist", "shakespeare", "sent140", "features"),
            "vocab_size": integer(1), "num_classes": integer(2)}, "max_users"),
        DISK_PARTITIONS, on_disk=True, default_devices=None),
    "npz_dir": DataKind(
        lambda r: on_disk(r, *npz_users(r)),
        {"path": Param(text), "num-classes": Param(integer(2))}, DISK_PARTITIONS, on_disk=True,
        default_devices=None),
    # scikit-learn's shipped data (experiments/data/real.py; the "data" extra)
    "digits": DataKind(build_digits, {}, DISK_PARTITIONS, check=check_digits,
                       default_devices=13),
    "sklearn": DataKind(build_tabular, {"dataset": Param(one_of(*TABULAR), "wine")},
                        DISK_PARTITIONS, check=check_tabular, default_devices=10),
}
DEFAULT_KIND = "synthetic_images"
# the parameter names alone (what make_fleet_data accepts)
KIND_PARAMS: dict[str, set[str]] = {name: set(k.params) for name, k in KINDS.items()}
PARTITION_PARAMS: dict[str, set[str]] = {name: set(p) for name, p in PARTITIONS.items() if p}


def fleet_size(d: dict[str, Any]) -> int | None:
    """The device count of a ``[data]`` table: ``devices`` if given, else the kind's default;
    for a folder of ``.npz`` files (partition natural) the number of files; None where only
    reading the data tells (LEAF users)."""
    if "devices" in d:
        return int(d["devices"])
    kind = KINDS[str(d.get("kind", DEFAULT_KIND))]
    if kind.default_devices is not None or not kind.on_disk:
        return kind.default_devices
    if d.get("partition", "natural") != "natural":
        return None
    path = str(d.get("path", ""))
    if d.get("kind") == "npz_dir" and os.path.isdir(path):  # none: the loader's error says so
        return sum(1 for f in os.listdir(path) if f.endswith(".npz")) or None
    return None


def make_fleet_data(kind: str, num_devices: int | None = None, seed: int = 0,
                    **params: Any) -> FleetData:
    """Build :class:`FleetData` from a config (e.g. a TOML table).

    ``kind``: a name of :data:`KINDS` (``synthetic_images``, ``synthetic_fedprox``, ``leaf``
    or ``npz_dir``, these two with ``path=``; ``digits`` and ``sklearn``, scikit-learn's
    shipped data), with its own parameters (those of :func:`synthetic_images`,
    :func:`synthetic_fedprox`, :func:`load_leaf`, ``num_classes`` of ``npz_dir``,
    ``dataset`` of ``sklearn``). ``num_devices`` None: the kind's default (every file or
    user on disk; 13 for digits). ``partition``: ``natural`` (one device per generated
    device, LEAF user or file; ``num_devices`` picks a seeded subset; for scikit-learn's
    data, contiguous blocks of file order), ``iid``,
    ``dirichlet`` (``alpha=0.3``, ``min_size=10``) or ``k_classes`` (``k=2``); for synthetic
    images these set each device's labels (default: the generator's ``label_skew``), for
    files they re-partition the pooled samples. Devices without their own test set get a
    ``test_fraction`` (0.2) split of their data, stratified by label unless
    ``stratify=False``. Parameters are taken in their config spelling (``min-size``, as
    ``[data]`` has them) or as Python names (``min_size``).
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown data kind '{kind}' (known: {', '.join(KINDS)})")
    entry = KINDS[kind]
    p = {kebab(k): v for k, v in params.items()}  # config keys; Python names are taken too
    partition = str(p.pop("partition", None) or entry.partitions[0])
    if partition not in entry.partitions:
        raise ConfigError(f"partition '{partition}' does not apply to {kind} (use one of: "
                          f"{', '.join(entry.partitions)})")
    test_fraction = float(p.pop("test-fraction", 0.2))
    stratify = bool(p.pop("stratify", True))
    allowed = set(entry.params) | set(PARTITIONS[partition])
    unknown = sorted(set(p) - allowed)
    if unknown:
        raise ConfigError(f"unknown {kind} data parameter(s) {', '.join(unknown)} with partition "
                          f"{partition} (known: {', '.join(sorted(allowed))})")
    if num_devices is None:
        num_devices = entry.default_devices
    if num_devices is None and (not entry.on_disk or partition != "natural"):
        raise ConfigError(f"{kind} data with partition {partition} needs num_devices")
    meta = {"kind": kind, "partition": partition, "seed": seed, "test_fraction": test_fraction,
            "params": {kebab(k): v for k, v in params.items()}}
    req = Request(num_devices, seed, partition, test_fraction, stratify, entry.resolve(p),
                  {py(k): p.get(k, q.default) for k, q in PARTITIONS[partition].items()}, meta)
    try:
        if entry.on_disk and "path" not in p:
            raise ConfigError(f"{kind} data needs path= (a folder or file on this machine)")
        return entry.build(req)
    except (ValueError, TypeError) as e:
        if isinstance(e, NNFleetError):
            raise
        raise ConfigError(f"{kind} data: {e}") from None
