"""Data generated in code (never downloaded): FedProx's Synthetic(alpha, beta) and a
synthetic image task with per-device label skew and feature shift."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

Shard = tuple[np.ndarray, np.ndarray]  # x float32 (n, ...), y int64 (n,)


def _sample_counts(num_devices: int, samples: int | Sequence[int] | None,
                   max_samples: int | None, rng: np.random.Generator) -> np.ndarray:
    if samples is None:
        # FedProx's reference generator: lognormal(4, 2) + 50, a power law of sizes
        counts = rng.lognormal(4.0, 2.0, num_devices).astype(np.int64) + 50
    elif np.isscalar(samples):
        counts = np.full(num_devices, int(samples), dtype=np.int64)  # type: ignore[arg-type]
    else:
        counts = np.asarray(samples, dtype=np.int64)
        if counts.shape != (num_devices,):
            raise ValueError(f"samples has {counts.size} entries, expected one per device "
                             f"({num_devices})")
    if max_samples is not None:
        counts = np.minimum(counts, int(max_samples))
    if counts.size and counts.min() < 1:
        raise ValueError(f"every device needs >= 1 sample, got a count of {int(counts.min())}")
    return counts


def synthetic_fedprox(num_devices: int = 30, alpha: float = 1.0, beta: float = 1.0, dim: int = 60,
                      classes: int = 10, samples: int | Sequence[int] | None = None,
                      max_samples: int | None = None, iid: bool = False,
                      seed: int = 0) -> list[Shard]:
    """FedProx's Synthetic(alpha, beta) (Li et al., 2020, section 5.1 and appendix).

    Device k: ``u_k ~ N(0, alpha)``, ``W_k ~ N(u_k, 1)`` (dim, classes), ``b_k ~ N(u_k, 1)``;
    ``B_k ~ N(0, beta)``, ``v_k ~ N(B_k, 1)`` (dim,); ``x ~ N(v_k, Sigma)`` with
    ``Sigma = diag(j^-1.2)``; ``y = argmax softmax(x W_k + b_k)``. alpha controls how much
    the devices' models differ, beta how much their inputs differ. As in the authors'
    generator, alpha and beta are used as standard deviations (the paper writes N(0, alpha)).

    ``samples``: None draws FedProx's power-law sizes ``lognormal(4, 2) + 50``; an int gives
    every device that many; a sequence gives one count per device. ``max_samples`` caps the
    lognormal tail (it reaches tens of thousands). ``iid=True`` is Synthetic-IID: one shared
    ``W, b`` and ``v_k = B_k`` for every coordinate.

    Returns one ``(x float32 (n_k, dim), y int64 (n_k,))`` per device.
    """
    if int(num_devices) < 1 or int(dim) < 1 or int(classes) < 2:
        raise ValueError(f"need num_devices >= 1, dim >= 1, classes >= 2; got {num_devices}, "
                         f"{dim}, {classes}")
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha} beta={beta}")
    rng = np.random.default_rng(seed)
    counts = _sample_counts(int(num_devices), samples, max_samples, rng)
    u = rng.normal(0.0, alpha, num_devices)
    big_b = rng.normal(0.0, beta, num_devices)
    sigma = np.arange(1, dim + 1, dtype=np.float64) ** -1.2  # diagonal covariance
    w_global = rng.normal(0.0, 1.0, (dim, classes))
    b_global = rng.normal(0.0, 1.0, classes)
    out: list[Shard] = []
    for k in range(int(num_devices)):
        if iid:
            v, w, b = np.full(dim, big_b[k]), w_global, b_global
        else:
            v = rng.normal(big_b[k], 1.0, dim)
            w = rng.normal(u[k], 1.0, (dim, classes))
            b = rng.normal(u[k], 1.0, classes)
        x = v + rng.normal(0.0, 1.0, (counts[k], dim)) * np.sqrt(sigma)  # (n_k, dim)
        y = np.argmax(x @ w + b, axis=1)  # argmax of softmax == argmax of logits
        out.append((x.astype(np.float32), y.astype(np.int64)))
    return out


def smooth_patterns(rng: np.random.Generator, count: int, shape: tuple[int, int, int],
                    grid: int = 4) -> np.ndarray:
    """``count`` smooth random images (C, H, W): a coarse N(0, 1) grid, bilinearly upsampled.

    Each image is rescaled to unit standard deviation, so all patterns are equally strong.
    """
    c, h, w = shape
    gh, gw = max(1, min(grid, h)), max(1, min(grid, w))

    def weights(size: int, g: int) -> np.ndarray:  # (size, g) interpolation matrix
        pos = np.clip((np.arange(size) + 0.5) * g / size - 0.5, 0, g - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, g - 1)
        m = np.zeros((size, g))
        m[np.arange(size), lo] += 1 - (pos - lo)
        m[np.arange(size), hi] += pos - lo
        return m

    coarse = rng.normal(0.0, 1.0, (count, c, gh, gw))
    out = np.einsum("hi,ncij,wj->nchw", weights(h, gh), coarse, weights(w, gw))
    out /= out.reshape(count, -1).std(axis=1).reshape(count, 1, 1, 1) + 1e-12
    return out


def skew_to_alpha(label_skew: float) -> float:
    """The Dirichlet concentration used for a ``label_skew`` in (0, 1): 1/skew - 1."""
    return 1.0 / label_skew - 1.0


def synthetic_images(num_devices: int = 20, classes: int = 10,
                     shape: tuple[int, ...] = (3, 32, 32), label_skew: float = 0.5,
                     feature_shift: float = 0.5, samples_per_device: int = 200,
                     noise: float = 4.0, pixel_noise: float = 0.5, grid: int = 8,
                     device_labels: Sequence[np.ndarray] | None = None,
                     seed: int = 0) -> list[Shard]:
    """A learnable image task: class prototypes, per-device label skew and feature shift.

    Every class has a smooth prototype (a ``grid`` x ``grid`` random grid bilinearly
    upsampled, unit variance). Device k's sample of class y is::

        contrast_k * (proto[y] + shift * delta_k[y] + noise * smooth + pixel_noise * N(0, 1))
            + offset_k

    ``contrast_k = exp(N(0, 0.3 * shift))``; ``offset_k`` is a brightness plus per-channel
    colour offset plus a device-specific smooth fixed pattern; ``delta_k[y]`` is a
    device-specific smooth distortion of each class (all scaled by ``feature_shift``); so
    a device's inputs, and what each of its classes looks like, differ from the fleet's
    and a personal model has something to learn. ``smooth`` is per-sample smooth noise:
    unlike pixel noise it does not average out, so ``noise`` sets how much classes
    overlap (with mlp on 160 samples per device: noise 4 gives about 0.75 local-only and
    0.86 pooled accuracy under uniform labels; noise 2 is nearly separable).

    ``label_skew`` in [0, 1]: 0 gives every device uniform labels, 1 one class each; in
    between each device's class proportions are ``Dirichlet(1 / label_skew - 1)`` (0.5 ->
    alpha 1, 0.77 -> alpha 0.3, 0.91 -> alpha 0.1). ``device_labels`` (one int array per
    device, e.g. from a partitioner) replaces both ``label_skew`` and ``samples_per_device``.
    ``shape`` may also be ``(F,)``: flat features, smooth along the one axis.

    Returns one ``(x float32 (n_k, *shape), y int64 (n_k,))`` per device.
    """
    shp = tuple(int(s) for s in shape)
    if len(shp) == 1:
        shp = (1, 1, shp[0])  # flat features: "images" of one row, smoothing along it
    if len(shp) != 3 or min(shp) < 1:
        raise ValueError(f"shape must be (C, H, W) or (F,), got {tuple(shape)}")
    if not 0.0 <= label_skew <= 1.0:
        raise ValueError(f"label_skew must be in [0, 1], got {label_skew}")
    if int(classes) < 2 or int(num_devices) < 1:
        raise ValueError(f"need classes >= 2 and num_devices >= 1, got {classes}, {num_devices}")
    if device_labels is not None and len(device_labels) != num_devices:
        raise ValueError(f"device_labels has {len(device_labels)} entries for {num_devices} "
                         "devices")
    rng = np.random.default_rng(seed)
    c = shp[0]
    protos = smooth_patterns(rng, classes, shp, grid)  # (classes, C, H, W)
    fs = float(feature_shift)
    out: list[Shard] = []
    for k in range(int(num_devices)):
        drng = np.random.default_rng([seed, k])  # per device: independent of fleet size
        if device_labels is not None:
            y = np.asarray(device_labels[k], dtype=np.int64)
            if y.size and (y.min() < 0 or y.max() >= classes):
                raise ValueError(f"device {k}: labels must be in [0, {classes}), found "
                                 f"{int(y.min())}..{int(y.max())}")
        else:
            if label_skew <= 0.0:
                p = np.full(classes, 1.0 / classes)
            elif label_skew >= 1.0:
                p = np.eye(classes)[drng.integers(classes)]
            else:
                p = drng.dirichlet(np.full(classes, skew_to_alpha(label_skew)))
            y = drng.choice(classes, size=int(samples_per_device), p=p).astype(np.int64)
        contrast = math.exp(drng.normal(0.0, 0.3 * fs))
        offset = (drng.normal(0.0, 0.5 * fs)
                  + drng.normal(0.0, 0.5 * fs, (c, 1, 1))
                  + fs * smooth_patterns(drng, 1, shp, grid)[0])  # (C, H, W)
        delta = smooth_patterns(drng, classes, shp, grid)  # (classes, C, H, W)
        # smooth noise does not average out over neighbouring pixels, so ``noise`` really
        # sets how much classes overlap; pixel noise only adds texture
        x = (protos[y] + fs * delta[y] + noise * smooth_patterns(drng, y.size, shp, grid)
             + pixel_noise * drng.normal(0.0, 1.0, (y.size, *shp)))
        x = contrast * x + offset
        out.append((x.reshape(y.size, *(tuple(int(s) for s in shape))).astype(np.float32), y))
    return out
