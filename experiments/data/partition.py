"""Partitioners: pure functions of labels (or a sample count, or user ids) and a seed.

Each returns one int64 index array per device. Index arrays are disjoint; together they
cover every sample (``iid``, ``dirichlet``, ``natural``) or every sample of the classes
that some device holds (``k_classes``). Device order is part of the result, so the same
inputs and seed always give the same fleet.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _check_devices(num_devices: int) -> int:
    if int(num_devices) < 1:
        raise ValueError(f"num_devices must be >= 1, got {num_devices}")
    return int(num_devices)


def _labels(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 1-D integer array of class ids, got dtype {y.dtype} "
                         f"shape {y.shape}")
    if y.size and y.min() < 0:
        raise ValueError(f"labels must be >= 0, found {int(y.min())}")
    return y.astype(np.int64, copy=False)


def iid(n: int, num_devices: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and cut it into ``num_devices`` near-equal parts."""
    d = _check_devices(num_devices)
    if int(n) < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    perm = np.random.default_rng(seed).permutation(int(n)).astype(np.int64)
    return [np.sort(p) for p in np.array_split(perm, d)]


def dirichlet(labels: np.ndarray, num_devices: int, alpha: float, min_size: int = 10,
              seed: int = 0, max_tries: int = 1000) -> list[np.ndarray]:
    """Per-class Dirichlet(alpha) split (Hsu et al., 2019; Yurochkin et al., 2019).

    For each class, device shares are drawn from Dirichlet(alpha); a device that already
    holds ``n / num_devices`` samples gets no more (the usual balancing step, so that a
    small alpha skews labels rather than sizes). The whole draw is repeated until every
    device has at least ``min_size`` samples. Small alpha (0.1) gives each device a few
    classes; large alpha (100) gives near-IID devices.
    """
    y = _labels(labels)
    d = _check_devices(num_devices)
    if not alpha > 0:
        raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
    n = y.size
    if min_size * d > n:
        raise ValueError(f"cannot give {d} devices >= {min_size} samples each from {n} samples "
                         "(lower min_size or num_devices)")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y == c) for c in range(int(y.max()) + 1 if n else 0)]
    for _ in range(max_tries):
        parts: list[list[int]] = [[] for _ in range(d)]
        for idx in by_class:
            if idx.size == 0:
                continue
            idx = rng.permutation(idx)
            share = rng.dirichlet(np.full(d, float(alpha)))
            sizes = np.array([len(p) for p in parts])
            share = share * (sizes < n / d)  # full devices take no more of this class
            if share.sum() <= 0:  # every device is full: spread the rest evenly
                share = np.ones(d)
            cuts = (np.cumsum(share / share.sum()) * idx.size).astype(np.int64)[:-1]
            for p, chunk in zip(parts, np.split(idx, cuts)):
                p.extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"no Dirichlet(alpha={alpha}) split gave every one of {d} devices "
                     f">= {min_size} samples in {max_tries} draws (raise alpha, lower min_size "
                     "or num_devices)")


def k_classes(labels: np.ndarray, num_devices: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """Each device holds exactly ``k`` distinct classes (McMahan et al., 2017, shards).

    Classes are dealt round-robin over a shuffled class list, so device ``i`` gets ``k``
    consecutive entries and every class is held by about ``num_devices * k / C`` devices;
    each class's samples are then cut into equal shards among its holders. Classes no
    device holds (only when ``num_devices * k < C``) are left out. A device has exactly
    ``k`` classes whenever each class has at least as many samples as holders.
    """
    y = _labels(labels)
    d = _check_devices(num_devices)
    present = np.unique(y)
    if not 1 <= int(k) <= present.size:
        raise ValueError(f"k must be in [1, {present.size}] (the number of classes present), "
                         f"got {k}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(present)
    holders: dict[int, list[int]] = {int(c): [] for c in present}
    for dev in range(d):
        for j in range(int(k)):
            holders[int(order[(dev * int(k) + j) % present.size])].append(dev)
    parts: list[list[int]] = [[] for _ in range(d)]
    for c, devs in holders.items():
        if not devs:
            continue
        idx = rng.permutation(np.flatnonzero(y == c))
        for dev, shard in zip(devs, np.array_split(idx, len(devs))):
            parts[dev].extend(shard.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def natural(user_ids: Sequence[object] | np.ndarray) -> list[np.ndarray]:
    """One device per distinct user id, in ``np.unique`` (sorted) order of the ids."""
    ids = np.asarray(user_ids)
    if ids.ndim != 1:
        raise ValueError(f"user_ids must be 1-D, got shape {ids.shape}")
    _, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))[:-1]
    return [part.astype(np.int64) for part in np.split(order, bounds)] if ids.size else []


def train_test_split_per_device(indices: Sequence[np.ndarray], test_fraction: float = 0.2,
                                seed: int = 0, labels: np.ndarray | None = None
                                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Split each device's indices into (train, test) from that device's own distribution.

    ``round(n * test_fraction)`` samples go to test, but at least one when
    ``test_fraction > 0`` and the device has two or more samples, and never all of them.
    With ``labels``, the split is stratified per class (each class keeps its share), so
    the local test set has the device's own label mix.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    y = None if labels is None else _labels(labels)
    rng = np.random.default_rng(seed)
    out = []
    for idx in indices:
        idx = np.asarray(idx, dtype=np.int64)
        n = idx.size
        n_test = int(round(n * test_fraction))
        if test_fraction > 0 and n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        else:
            n_test = 0
        perm = rng.permutation(idx)
        if y is not None and n_test:
            # stratify: order samples so that taking the first n_test takes each class in
            # proportion (interleave classes by their within-class rank / class size)
            cls = y[perm]
            rank = np.empty(n)
            for c in np.unique(cls):
                where = np.flatnonzero(cls == c)
                rank[where] = (np.arange(where.size) + rng.random()) / where.size
            perm = perm[np.argsort(rank, kind="stable")]
        out.append((np.sort(perm[n_test:]), np.sort(perm[:n_test])))
    return out
