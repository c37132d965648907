"""The data kinds read from files (``leaf``, ``npz_dir``): per-user or per-file samples,
kept as they come (partition ``natural``) or pooled and re-partitioned."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from device_runtime.errors import ConfigError

from .build import Request, device_ids, partition_indices, split
from .dataset import DeviceShard, FleetData
from .loaders import load_leaf, load_npz_dir

# user -> (x, y, x_test or None, y_test or None)
Users = dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]]


def _pick(r: Request) -> int | None:
    """How many users to keep (a seeded subset), None = all; only partition natural picks."""
    return r.num_devices if r.partition == "natural" else None


def leaf_users(r: Request) -> tuple[Users, tuple[int, ...], int, str]:
    """LEAF JSON at ``path``: its users, input shape, class count and name."""
    p, pick = r.params, _pick(r)
    leaf = load_leaf(str(p["path"]), p["dataset"], int(p["vocab_size"]), max_users=pick,
                     seed=r.seed, num_classes=p["num_classes"])
    if pick is not None and pick > len(leaf.train):
        raise ConfigError(f"asked for {pick} devices but {p['path']} has "
                          f"{len(leaf.train)} users")
    users = {u: (x, y, *leaf.test.get(u, (None, None))) for u, (x, y) in leaf.train.items()}
    if leaf.vocab:
        r.meta["vocab"] = leaf.vocab
    return users, leaf.input_shape, leaf.num_classes, f"leaf/{leaf.name}"


def npz_users(r: Request) -> tuple[Users, tuple[int, ...], int, str]:
    """A folder of ``.npz`` files at ``path``: one user per file, input shape, class count
    (``num_classes``, default: the largest label + 1) and name."""
    p, pick = r.params, _pick(r)
    files = load_npz_dir(str(p["path"]))
    names = sorted(files)
    if pick is not None:
        if pick > len(names):
            raise ConfigError(f"asked for {pick} devices but {p['path']} has "
                              f"{len(names)} .npz files")
        chosen = np.random.default_rng(r.seed).choice(len(names), pick, replace=False)
        names = [names[i] for i in sorted(chosen)]
    users: Users = {u: (files[u]["x"], files[u]["y"], files[u].get("x_test"),
                        files[u].get("y_test")) for u in names}
    shape = tuple(files[names[0]]["x"].shape[1:])
    top = max(int(max(v[1].max(initial=0), v[3].max(initial=0) if v[3] is not None else 0))
              for v in users.values())
    classes = int(p["num_classes"] if p["num_classes"] is not None else top + 1)
    if classes <= top:
        raise ConfigError(f"num_classes={classes} but {p['path']} has label {top}")
    return users, shape, classes, f"npz_dir/{os.path.basename(os.path.normpath(str(p['path'])))}"


def on_disk(r: Request, users: Users, shape: tuple[int, ...], classes: int,
            name: str) -> FleetData:
    """The fleet of ``users``: one device each (natural), or their pooled samples
    re-partitioned over ``num_devices`` devices."""
    if r.partition == "natural":
        devices: list[DeviceShard] = []
        for i, (u, (x, y, xt, yt)) in enumerate(users.items()):
            if xt is None or yt is None:
                devices += split([u], [(x, y)], r.test_fraction, r.stratify, r.seed + 2 + i)
            else:
                devices.append(DeviceShard(u, x, y, xt, yt))
    else:
        assert r.num_devices is not None
        parts: list[tuple[Any, Any]] = [(x, y) for x, y, _, _ in users.values()]
        parts += [(xt, yt) for _, _, xt, yt in users.values() if xt is not None]
        x_all = np.concatenate([x for x, _ in parts])
        y_all = np.concatenate([y for _, y in parts])
        idx = partition_indices(y_all, r.partition, r.num_devices, r.seed + 1,
                                r.partition_params)
        devices = split(device_ids(r.num_devices), [(x_all[i], y_all[i]) for i in idx],
                        r.test_fraction, r.stratify, r.seed + 2)
    return FleetData(devices, tuple(int(s) for s in shape), classes, name, r.meta)
