"""FedRoD (Chen & Chao, ICLR 2022): a body with a generic head trained by the balanced
softmax and aggregated, plus a personal head on the same features that stays on the
device; the personalized prediction is the sum of the two heads' logits.

The model is one graph: ``... -> body -> G-head`` and ``body -> P-head``, summed by an
``addition`` layer that is the model's output (``experiments.algorithms`` builds it from
a one-head model for the ``fedrod`` row; the P-head is the personal layer, starting at
zero so that the personalized model starts as the generic one). Each step on one batch,
at the same weights (as the paper's per-batch updates):

* body and G-head: an SGD step on the balanced softmax loss of the G-head's logits,
  ``-log(n_y e^{z_y} / sum_c n_c e^{z_c})`` with the device's class counts ``n_c``
  (Ren et al., NeurIPS 2020). It is the cross-entropy of ``z + log n``, so the gradient is
  taken at the G-head's bias shifted by ``log n`` (classes the device lacks: -1e4, whose
  softmax weight is 0 in float32) and with the P-head zeroed, so the sum is the G-head;
* P-head: an SGD step on the cross-entropy of the summed logits, body and G-head fixed.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import ConfigError
from .config import DeviceConfig, patterns, split_keys
from .gradients import Gradients, axpy
from .localrun import LocalRun, layers_of
from .registry import local_update
from .trainers import initial_weights, model_specs

ABSENT = -1e4  # the shift of a class with no example (log 0): exp underflows to 0


@functools.lru_cache(maxsize=8)
def _heads_of(model: str, seed: int) -> tuple[str, tuple[str, ...]]:
    last = model_specs(model, seed)[-1]
    ins = last.props.get("input_layers", "")
    names = tuple(s.strip() for s in (ins.split(",") if isinstance(ins, str) else ins)
                  if str(s).strip())
    return last.type.lower(), names


def heads_of(model: str, seed: int, personal_keys: list[str]) -> tuple[str, str] | None:
    """(G-head, P-head) layer names: the two inputs of the model's output sum, the
    personal one being the P-head, the generic one with a bias; None for another model."""
    kind, names = _heads_of(model, seed)
    mine = layers_of(personal_keys)
    p = [n for n in names if n in mine]
    g = [n for n in names if n not in mine]
    if kind != "addition" or len(names) != 2 or len(p) != 1 or len(g) != 1:
        return None
    return g[0], p[0]


def heads(run: LocalRun) -> tuple[str, str]:
    """:func:`heads_of` the run's model, refused when it is not FedRoD's."""
    found = heads_of(run.cfg.model, run.cfg.model_seed, run.personal_keys)
    if found is None:
        kind, names = _heads_of(run.cfg.model, run.cfg.model_seed)
        raise ConfigError("local-update fedrod needs a model whose output is an addition of "
                          "a generic head and a personal head (the fedrod algorithm builds it); "
                          f"got a {kind} of {list(names)} with personal layers "
                          f"{sorted(layers_of(run.personal_keys))}")
    return found


def is_two_heads(cfg: DeviceConfig) -> bool:
    """Does the config's model end in FedRoD's sum of a generic head (with a bias) and a
    personal head? (``local-update = auto`` then picks fedrod.)"""
    if not patterns(cfg.personal):
        return False
    keys = list(initial_weights(cfg.model, cfg.model_seed))
    found = heads_of(cfg.model, cfg.model_seed, split_keys(keys, cfg.personal)[1])
    return found is not None and found[0] + ":bias" in keys


def log_prior(y: np.ndarray, classes: int) -> np.ndarray:
    """log n_c of the device's labels (``ABSENT`` for a class it does not have)."""
    counts = np.bincount(np.asarray(y, np.int64), minlength=classes)[:classes]
    out = np.full(classes, ABSENT, np.float32)
    out[counts > 0] = np.log(counts[counts > 0]).astype(np.float32)
    return out


def generic_gradient(grads: Gradients, w: dict[str, np.ndarray], idx: np.ndarray,
                     g_head: str, p_head: str, shift: np.ndarray
                     ) -> tuple[float, dict[str, np.ndarray]]:
    """The balanced softmax loss of the G-head and its gradient (body and G-head keys)."""
    bias = g_head + ":bias"
    at = {k: (np.zeros_like(a) if k.split(":", 1)[0] == p_head else a) for k, a in w.items()}
    at[bias] = (w[bias] + shift).astype(np.float32)
    loss, g = grads(at, idx)
    # the L2 terms were taken at the shifted bias: take them at the true one
    opt = grads.model.optimizer
    decay = grads.cfg.weight_decay + (opt.param_decay.get(bias, 0.0) if opt else 0.0)
    if decay and bias in g:
        g[bias] = (g[bias] - np.float32(decay) * shift).astype(np.float32)
    return loss, {k: a for k, a in g.items() if k.split(":", 1)[0] != p_head}


@local_update("fedrod", auto=("a model ending in a generic + personal head sum", is_two_heads))
def fedrod(run: LocalRun) -> None:
    """FedRoD's two heads, each step: body + G-head on the balanced softmax, the P-head on
    the cross-entropy of the summed logits (module docstring)."""
    g_head, p_head = heads(run)
    bias = g_head + ":bias"
    if bias not in run.weights:
        raise ConfigError(f"local-update fedrod needs a bias in the generic head {g_head}")
    grads = Gradients(run.cfg, run.state, run.batch, run.frozen)
    run.model = grads.model
    shift = log_prior(run.state.data.y_train, int(run.weights[bias].shape[0]))
    w = dict(run.weights)
    lr = run.cfg.lr
    batches = grads.batches("local")
    with grads.guarded():
        for _ in range(grads.steps()):
            idx = next(batches)
            _, gg = generic_gradient(grads, w, idx, g_head, p_head, shift)
            loss, gp = grads(w, idx)
            w = axpy(-lr, gg, axpy(-lr, {k: a for k, a in gp.items()
                                         if k.split(":", 1)[0] == p_head}, w))
            run.losses.append(loss)
    run.weights = w
