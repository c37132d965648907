"""More local-update rules: APFL, pFedMe, Per-FedAvg and FedBABU (FedRoD: :mod:`.rules_rod`).

APFL, pFedMe and Per-FedAvg update with their papers' plain gradient steps (``lr`` is the
step; ``optimizer = sgd``, no momentum), the gradients taken from the device's compiled
trainer (:mod:`.gradients`). Each rule with a personalized model of its own also says how
the device builds it for evaluation (``@personalized_model``), so that the final
accuracies are those of APFL's mix, pFedMe's theta and Per-FedAvg's adapted model.

State kept on the device: ``apfl/v/<key>`` and ``apfl/alpha`` (APFL's personal model and
mixing weight), ``pfedme/<key>`` (pFedMe's personal model theta).
"""

from __future__ import annotations

import numpy as np

from .config import DeviceConfig
from .gradients import Gradients, axpy
from .localrun import LocalRun, layers_of
from .registry import local_update, personalized_model
from .state import Arrays, DeviceState


def _grads(run: LocalRun) -> Gradients:
    g = Gradients(run.cfg, run.state, run.batch, run.frozen)
    run.model = g.model
    return g


def mix(alpha: float, v: Arrays, w: Arrays) -> Arrays:
    """APFL's personalized model ``alpha * v + (1 - alpha) * w`` (keys of ``w``)."""
    a = np.float32(alpha)
    return {k: (a * v.get(k, x) + (np.float32(1) - a) * x).astype(np.float32, copy=False)
            for k, x in w.items()}


def _dot(a: Arrays, b: Arrays) -> float:
    return float(sum(np.dot(a[k].reshape(-1).astype(np.float64), b[k].reshape(-1)) for k in b))


# ---------------------------------------------------------------------------- APFL
@local_update("apfl", auto=("apfl-alpha", lambda c: c.apfl_alpha is not None))
def apfl(run: LocalRun) -> None:
    """APFL (Deng, Kamani & Mahdavi, arXiv:2003.13461 2020, Algorithm 1, adaptive alpha):
    each step on one batch, the local copy of the global model takes an SGD step, the
    personal model v a step on the mixed model's loss (gradient alpha * grad f(v_bar),
    v_bar = alpha v + (1 - alpha) w), and alpha a step along <v - w, grad f(v_bar)>,
    clipped to [0, 1]. The mixed model is the device's personalized model."""
    cfg, grads = run.cfg, _grads(run)
    w = dict(run.weights)
    v = {k: run.arrays.get("apfl/v/" + k, a) for k, a in w.items()}  # starts at the global
    alpha = float(np.asarray(run.arrays.get("apfl/alpha", cfg.value("apfl_alpha"))).reshape(-1)[0])
    lr = cfg.lr
    batches = grads.batches("local")
    with grads.guarded():
        for _ in range(grads.steps()):
            idx = next(batches)
            _, gw = grads(w, idx)
            loss, gm = grads(mix(alpha, v, w), idx)
            diff = {k: v[k] - w[k] for k in gm}
            new_alpha = min(1.0, max(0.0, alpha - lr * _dot(diff, gm)))
            w = axpy(-lr, gw, w)
            v = axpy(-lr * alpha, gm, v)
            alpha = new_alpha
            run.losses.append(loss)
    run.weights = w
    run.personal_model = mix(alpha, v, w)
    run.arrays.update({"apfl/v/" + k: a for k, a in v.items()})
    run.arrays["apfl/alpha"] = np.asarray([alpha], np.float64)


@personalized_model("apfl")
def apfl_model(state: DeviceState, weights: Arrays, cfg: DeviceConfig) -> Arrays:
    """The mix of the kept personal model with the received global one."""
    if "apfl/alpha" not in state.arrays:
        return weights  # never trained: v is the global model
    alpha = float(np.asarray(state.arrays["apfl/alpha"]).reshape(-1)[0])
    v = {k: state.arrays.get("apfl/v/" + k, a) for k, a in weights.items()}
    return mix(alpha, v, weights)


# ---------------------------------------------------------------------------- pFedMe
def moreau_step(grads: Gradients, theta: Arrays, w: Arrays, idx: np.ndarray, lam: float,
                lr: float, k: int) -> tuple[float, Arrays]:
    """K gradient steps on h(theta) = f(theta; batch) + lam/2 ||theta - w||^2 (pFedMe's
    personal problem, whose minimum is the Moreau envelope's prox point)."""
    loss = 0.0
    for _ in range(k):
        loss, g = grads(theta, idx)
        theta = dict(theta)
        for key, gk in g.items():
            theta[key] = (theta[key] - np.float32(lr) * (gk + np.float32(lam)
                                                         * (theta[key] - w[key]))
                          ).astype(np.float32, copy=False)
    return loss, theta


@local_update("pfedme", auto=("a pfedme-* key", lambda c: any(
    getattr(c, k) is not None for k in ("pfedme_lambda", "pfedme_k", "pfedme_lr", "pfedme_beta"))))
def pfedme(run: LocalRun) -> None:
    """pFedMe (Dinh, Tran & Nguyen, NeurIPS 2020, Algorithm 1): each step on one batch,
    the personal model theta approximately solves min f(theta) + lambda/2 ||theta - w||^2
    (pfedme-k gradient steps at pfedme-lr, warm-started from the last theta), then the
    local model moves w <- w - lr * lambda * (w - theta). The server's
    w <- (1 - beta) w + beta * mean(w_i) is applied on the device to what it sends back
    (received + beta * (w_i - received)): averaging that is the paper's update."""
    cfg, grads = run.cfg, _grads(run)
    lam, k = cfg.value("pfedme_lambda"), cfg.value("pfedme_k")
    plr = cfg.value("pfedme_lr") or cfg.lr
    w = dict(run.weights)
    theta = dict(w)
    batches = grads.batches("local")
    with grads.guarded():
        for _ in range(grads.steps()):
            loss, theta = moreau_step(grads, theta, w, next(batches), lam, plr, k)
            w = {key: (a - np.float32(cfg.lr * lam) * (a - theta[key])).astype(np.float32)
                 if key in grads.keys else a for key, a in w.items()}
            run.losses.append(loss)
    beta = np.float32(cfg.value("pfedme_beta"))
    if beta != 1:
        for key in run.shared_keys:
            w[key] = (run.received[key] + beta * (w[key] - run.received[key])).astype(np.float32)
    run.weights = w
    run.personal_model = theta
    run.arrays.update({"pfedme/" + key: a for key, a in theta.items()})


@personalized_model("pfedme")
def pfedme_model(state: DeviceState, weights: Arrays, cfg: DeviceConfig) -> Arrays:
    """The personal model theta of the device's last round (the global one before)."""
    return {k: state.arrays.get("pfedme/" + k, a) for k, a in weights.items()}


# ---------------------------------------------------------------------------- Per-FedAvg
def meta_gradient(grads: Gradients, w: Arrays, d1: np.ndarray, d2: np.ndarray,
                  d3: np.ndarray | None, alpha: float, delta: float) -> tuple[float, Arrays]:
    """Per-FedAvg's stochastic gradient of F(w) = f(w - alpha grad f(w)): grad f(w~; D')
    at the adapted w~ = w - alpha grad f(w; D), minus (Hessian-free, with ``d3``)
    alpha * H(w; D'') grad f(w~; D') from central differences of gradients at w +- delta
    grad f(w~; D'); without ``d3`` the first-order version (no Hessian term)."""
    _, g0 = grads(w, d1)
    loss, g1 = grads(axpy(-alpha, g0, w), d2)
    if d3 is None:
        return loss, g1
    _, gp = grads(axpy(delta, g1, w), d3)
    _, gm = grads(axpy(-delta, g1, w), d3)
    scale = np.float32(alpha / (2 * delta))
    return loss, {k: (g1[k] - scale * (gp[k] - gm[k])).astype(np.float32) for k in g1}


@local_update("perfedavg", auto=("a perfedavg-* key", lambda c: any(
    getattr(c, k) is not None for k in ("perfedavg_beta", "perfedavg_variant", "perfedavg_delta"))))
def perfedavg(run: LocalRun) -> None:
    """Per-FedAvg (Fallah, Mokhtari & Ozdaglar, NeurIPS 2020, Algorithm 1): each meta step
    takes two batches (first-order, perfedavg-variant = fo) or three (Hessian-free, hf) and
    moves w <- w - beta * meta_gradient; lr is alpha. The personalized model is the global
    one after one SGD step of alpha on a batch of the device's data."""
    cfg, grads = run.cfg, _grads(run)
    hf = cfg.value("perfedavg_variant") == "hf"
    alpha, beta = cfg.lr, cfg.value("perfedavg_beta") or cfg.lr
    w = dict(run.weights)
    batches = grads.batches("local")
    with grads.guarded():
        for _ in range(max(1, grads.steps() // (3 if hf else 2))):
            loss, g = meta_gradient(grads, w, next(batches), next(batches),
                                    next(batches) if hf else None, alpha,
                                    cfg.value("perfedavg_delta"))
            w = axpy(-beta, g, w)
            run.losses.append(loss)
        _, g0 = grads(w, next(grads.batches("adapt")))
    run.weights = w
    run.personal_model = axpy(-alpha, g0, w)


@personalized_model("perfedavg")
def perfedavg_model(state: DeviceState, weights: Arrays, cfg: DeviceConfig) -> Arrays:
    """The received model after one SGD step of alpha (lr) on one batch of its data."""
    from .config import patterns

    n = int(state.data.y_train.shape[0])
    if n == 0:
        return weights
    batch = min(int(state.settings.batch_size or cfg.batch_size), n)
    grads = Gradients(cfg, state, batch, tuple(sorted(patterns(state.settings.freeze))))
    with grads.guarded():
        _, g0 = grads(weights, next(grads.batches("adapt")))
    return axpy(-cfg.lr, g0, weights)


# ---------------------------------------------------------------------------- FedBABU
@local_update("fedbabu", auto=("fixed-head", lambda c: bool(c.fixed_head)))
def fedbabu(run: LocalRun) -> None:
    """FedBABU (Oh, Kim & Yun, ICLR 2022): the body is trained and aggregated while the
    head (the personal layers) stays at its random initialization, the same on every
    device; evaluation fine-tunes a copy of the whole model (``finetune-epochs``)."""
    head = layers_of(run.personal_keys)
    run.weights = run.train(tuple(sorted(head | set(run.frozen))), run.weights,
                            run.cfg.local_epochs, "local")
