"""Independent float64 numpy references for the tests of APFL, pFedMe, Per-FedAvg, FedBABU
and FedRoD: the model ``in(12) -> fc1(8, relu) -> fc2(3)`` (and FedRoD's ``+ fc2_p(3)``
on the same features), the batch order a device takes and one epoch of each rule's
update, written from the papers' formulas (nothing here calls the device runtime)."""

from __future__ import annotations

import zlib

import numpy as np

Arrays = dict[str, np.ndarray]


def grad(w: Arrays, x: np.ndarray, y: np.ndarray, shift: np.ndarray | None = None,
         heads: tuple[str, ...] = ("fc2", "fc2_p")) -> tuple[float, Arrays]:
    """Mean cross-entropy of the logits sum over ``heads`` present in ``w`` (+ ``shift``)
    and its gradient (every key of ``fc1`` and of those heads)."""
    f = {k: np.asarray(a, np.float64) for k, a in w.items()}
    x = x.astype(np.float64)
    a = x @ f["fc1:weight"] + f["fc1:bias"]
    h = np.maximum(a, 0)
    used = [hd for hd in heads if hd + ":weight" in f]
    z = sum(h @ f[hd + ":weight"] + f[hd + ":bias"] for hd in used)
    z = z + (0 if shift is None else shift)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    n = len(y)
    with np.errstate(divide="ignore"):
        loss = float(-np.mean(np.log(p[np.arange(n), y])))
    d = p.copy()
    d[np.arange(n), y] -= 1
    d /= n
    dh = sum(d @ f[hd + ":weight"].T for hd in used) * (a > 0)
    g = {"fc1:weight": x.T @ dh, "fc1:bias": dh.sum(0)}
    for hd in used:
        g[hd + ":weight"], g[hd + ":bias"] = h.T @ d, d.sum(0)
    return loss, g


def evaluate(w: Arrays, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the summed heads' logits."""
    f = {k: np.asarray(a, np.float64) for k, a in w.items()}
    h = np.maximum(x.astype(np.float64) @ f["fc1:weight"] + f["fc1:bias"], 0)
    z = sum(h @ f[hd + ":weight"] + f[hd + ":bias"] for hd in ("fc2", "fc2_p")
            if hd + ":weight" in f)
    loss, _ = grad(w, x, y)
    return loss, float(np.mean(np.argmax(z, axis=1) == y))


def step(w: Arrays, g: Arrays, lr: float) -> Arrays:
    """``w - lr * g`` over the keys of ``g`` (the others kept), float64."""
    return {k: np.asarray(a, np.float64) - (lr * g[k] if k in g else 0) for k, a in w.items()}


def batch_order(seed: int, device: int, rnd: int, phase: str, n: int, b: int, epochs: int,
                drop_last: bool) -> list[np.ndarray]:
    """The batches of ``epochs`` epochs, as a device shuffles them: numpy's generator seeded
    with crc32("seed/device/round/phase"), reshuffled each epoch, the last batch smaller
    unless ``drop_last``."""
    rng = np.random.default_rng(zlib.crc32(f"{seed}/{device}/{rnd}/{phase}".encode()))
    perm = np.arange(n, dtype=np.int64)
    out = []
    for _ in range(epochs):
        rng.shuffle(perm)
        stop = n - n % b if drop_last else n
        out += [perm[j:min(j + b, stop)].copy() for j in range(0, stop, b)]
    return out


def sgd(w: Arrays, x: np.ndarray, y: np.ndarray, batches: list[np.ndarray], lr: float) -> Arrays:
    """Plain SGD on every key of ``w`` over ``batches``."""
    for idx in batches:
        w = step(w, grad(w, x[idx], y[idx])[1], lr)
    return w


def mix(alpha: float, v: Arrays, w: Arrays) -> Arrays:
    return {k: alpha * np.asarray(v[k], np.float64) + (1 - alpha) * np.asarray(w[k], np.float64)
            for k in w}


def apfl(w: Arrays, v: Arrays, alpha: float, x: np.ndarray, y: np.ndarray,
         batches: list[np.ndarray], lr: float) -> tuple[Arrays, Arrays, float]:
    """APFL (Deng et al. 2020, Alg. 1) per batch: w by its gradient, v by alpha times the
    mix's, alpha by <v - w, grad of the mix> clipped to [0, 1] (all at the same point)."""
    for idx in batches:
        _, gw = grad(w, x[idx], y[idx])
        _, gm = grad(mix(alpha, v, w), x[idx], y[idx])
        dot = sum(float(np.sum((np.asarray(v[k], np.float64) - w[k]) * gm[k])) for k in gm)
        w, v = step(w, gw, lr), step(v, gm, lr * alpha)
        alpha = min(1.0, max(0.0, alpha - lr * dot))
    return w, v, alpha


def pfedme(w: Arrays, x: np.ndarray, y: np.ndarray, batches: list[np.ndarray], lr: float,
           plr: float, lam: float, k: int) -> tuple[Arrays, Arrays]:
    """pFedMe (Dinh et al. 2020, Alg. 1) per batch: K steps on f(theta) + lam/2 ||theta - w||^2
    from the last theta, then w <- w - lr lam (w - theta)."""
    w = {key: np.asarray(a, np.float64) for key, a in w.items()}
    theta = dict(w)
    for idx in batches:
        for _ in range(k):
            _, g = grad(theta, x[idx], y[idx])
            theta = {key: theta[key] - plr * (g[key] + lam * (theta[key] - w[key])) for key in w}
        w = {key: w[key] - lr * lam * (w[key] - theta[key]) for key in w}
    return w, theta


def perfedavg_fo(w: Arrays, x: np.ndarray, y: np.ndarray, batches: list[np.ndarray],
                 alpha: float, beta: float) -> Arrays:
    """First-order Per-FedAvg (Fallah et al. 2020): per pair of batches (D, D'),
    w <- w - beta grad f(w - alpha grad f(w; D); D')."""
    for d1, d2 in zip(batches[0::2], batches[1::2]):
        _, g0 = grad(w, x[d1], y[d1])
        _, g1 = grad(step(w, g0, alpha), x[d2], y[d2])
        w = step(w, g1, beta)
    return w


def fedrod(w: Arrays, x: np.ndarray, y: np.ndarray, batches: list[np.ndarray],
           lr: float) -> Arrays:
    """FedRoD (Chen & Chao 2022) per batch, at the same weights: body and G-head by the
    balanced softmax of the G-head's logits (CE of z_g + log n_c, classes absent: -inf
    weight), the P-head by the CE of the summed logits."""
    counts = np.bincount(y, minlength=3)
    with np.errstate(divide="ignore"):
        shift = np.where(counts > 0, np.log(np.maximum(counts, 1)), -1e4)
    for idx in batches:
        _, gg = grad(w, x[idx], y[idx], shift=shift, heads=("fc2",))
        _, gp = grad(w, x[idx], y[idx])
        w = step(step(w, gg, lr), {k: a for k, a in gp.items() if k.startswith("fc2_p:")}, lr)
    return w
