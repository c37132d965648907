"""Compiled models for the device program, kept per process and reused across devices
and rounds (each holds a planned pool), with the device's fallbacks when its RAM cap is
too small: swap, a smaller batch, a frozen backbone."""

from __future__ import annotations

import fnmatch
import zlib
from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import ConfigError, MemoryCapExceeded
from ..model import LayerSpec, Model
from ..modelspec import load_model
from ..optimizers import create_optimizer
from .config import DeviceConfig, DeviceSettings, patterns
from .prox import ProxOptimizer
from .state import Arrays, DeviceData

_TRAINERS: OrderedDict[tuple[Any, ...], Model] = OrderedDict()
_INIT: dict[tuple[str, int], Arrays] = {}
_SPECS: dict[tuple[str, int], list[LayerSpec]] = {}  # from the same load as _INIT
MAX_TRAINERS = 16  # compiled models kept per process (each holds a planned pool)


def initial_weights(model: str, seed: int) -> Arrays:
    """The model's seeded initial weights (cached per process)."""
    key = (model, int(seed))
    if key not in _INIT:
        m = load_model(model, seed)[0]
        _INIT[key], _SPECS[key] = m.get_weights(), m.specs
    return _INIT[key]


def model_specs(model: str, seed: int) -> list[LayerSpec]:
    """The model's layer specs, from the load :func:`initial_weights` makes (a model is
    loaded once per process: a large one costs seconds and its weights' bytes)."""
    key = (model, int(seed))
    if key not in _SPECS:
        initial_weights(model, seed)
    return _SPECS[key]


def _keep(key: tuple[Any, ...], m: Model) -> Model:
    _TRAINERS[key] = m
    while len(_TRAINERS) > MAX_TRAINERS:
        _TRAINERS.popitem(last=False)
    return m


def _frozen_specs(model: Model, frozen: tuple[str, ...]) -> Model:
    """The same model with every layer matching ``frozen`` marked ``trainable=False``."""
    specs = [LayerSpec(s.type, s.name, dict(s.props)) for s in model.specs]
    for s in specs:
        if any(fnmatch.fnmatchcase(s.name, p) for p in frozen):
            s.props["trainable"] = False
    return Model(specs, loss=model.loss_name, seed=model.seed, name=model.name)


def trainer(cfg: DeviceConfig, batch: int, frozen: tuple[str, ...], settings: DeviceSettings,
            swap: str) -> Model:
    """A compiled model for this config, batch and frozen set, reused across devices.

    Raises :class:`MemoryCapExceeded` when the step cannot fit the device's RAM cap.
    """
    opt_kw: dict[str, Any] = {"lr": cfg.lr}
    if cfg.optimizer == "sgd":
        opt_kw["momentum"] = cfg.momentum
    if cfg.weight_decay:
        opt_kw["weight_decay"] = cfg.weight_decay
    key = (cfg.model, cfg.model_seed, batch, frozen, cfg.optimizer,
           tuple(sorted(opt_kw.items())), settings.ram_cap, swap)
    if key in _TRAINERS:
        _TRAINERS.move_to_end(key)
        return _TRAINERS[key]
    base = load_model(cfg.model, cfg.model_seed)[0]
    m = _frozen_specs(base, frozen) if frozen else base
    opt = ProxOptimizer(create_optimizer(cfg.optimizer, **opt_kw))
    if settings.ram_cap:
        m.compile(batch_size=batch, optimizer=opt, ram_cap=settings.ram_cap, swap=swap)
    else:
        m.compile(batch_size=batch, optimizer=opt)
    return _keep(key, m)


def inference_model(cfg: DeviceConfig) -> Model:
    """An uncompiled model for evaluation only (no training pool, so it fits small caps)."""
    key = ("infer", cfg.model, cfg.model_seed)
    if key in _TRAINERS:
        return _TRAINERS[key]
    return _keep(key, load_model(cfg.model, cfg.model_seed)[0])


def clear_cache() -> None:
    """Drop the compiled models (their pools) kept by :func:`trainer`."""
    _TRAINERS.clear()


def keep_only(model: str, seed: int, ram_cap: int | None = None, trainers: bool = True) -> int:
    """Drop every kept model and initial weights a device of ``model`` (seeded ``seed``)
    capped at ``ram_cap`` cannot use: other models' (their initial weights too), and
    trainers compiled for another cap; with ``trainers=False`` this model's compiled
    models as well (only its initial weights stay, a function of ``model`` and ``seed``).
    Returns how many entries were dropped (collect garbage after, to free them)."""
    drop = [k for k in _TRAINERS
            if not trainers or not (k == ("infer", model, seed) or (
                len(k) == 8 and k[0] == model and k[1] == seed and k[6] == ram_cap))]
    for k in drop:
        del _TRAINERS[k]
    init = [k for k in _INIT if k != (model, int(seed))]
    for k in init:
        del _INIT[k]
        _SPECS.pop(k, None)
    return len(drop) + len(init)


def with_fallbacks(cfg: DeviceConfig, settings: DeviceSettings, batch: int,
                   frozen: tuple[str, ...]) -> Model:
    """The device's trainer, trying its fallbacks (swap, smaller batch, frozen backbone);
    raises the smallest :class:`MemoryCapExceeded` when none fits."""
    tries: list[tuple[int, tuple[str, ...], str]] = [(batch, frozen, settings.swap)]
    for fb in settings.fallbacks:
        b, fz, sw = tries[-1]
        if fb == "swap":
            tries.append((b, fz, "on"))
        elif fb.startswith("batch:"):
            tries.append((min(b, int(fb.split(":", 1)[1])), fz, sw))
        elif fb.startswith("freeze:"):
            tries.append((b, tuple(sorted(set(fz) | set(patterns(fb.split(":", 1)[1])))), sw))
        else:
            raise ConfigError(f"unknown fallback '{fb}' (use swap, batch:N or freeze:PATTERNS)")
    err: MemoryCapExceeded | None = None
    for b, fz, sw in tries:
        try:
            return trainer(cfg, b, fz, settings, sw)
        except MemoryCapExceeded as e:
            err = e if err is None or e.needed < err.needed else err
    assert err is not None
    raise err


def phase_seed(cfg: DeviceConfig, device_id: int, phase: str) -> int:
    """The shuffling seed of one training phase of one device in one round: from the
    config's ``shuffle-seed``, else its ``seed`` (the same seeds when both are equal)."""
    seed = cfg.seed if cfg.shuffle_seed is None else cfg.shuffle_seed
    return zlib.crc32(f"{seed}/{device_id}/{cfg.server_round}/{phase}".encode())


def fit(m: Model, weights: Arrays, data: DeviceData, cfg: DeviceConfig, epochs: int,
        seed: int, anchor: Arrays | None = None, mu: float = 0.0,
        opt_state: dict[str, Any] | None = None) -> tuple[Arrays, list[float]]:
    """Train ``m`` from ``weights`` on the device's train split, with ``mu * (w - anchor)``
    added to each gradient; returns the new weights and the losses."""
    m.set_weights(weights, strict=False)
    opt = m.optimizer
    assert isinstance(opt, ProxOptimizer)
    opt.reset()
    if opt_state:
        opt.load_state_dict(opt_state)
    opt.mu, opt.anchor = float(mu), {}
    if mu and anchor:
        opt.anchor = {k: np.ascontiguousarray(a, np.float32).reshape(-1) for k, a in anchor.items()}
    m.cap_exceeded = False  # the trainer is shared by devices: only this run's verdict counts
    hist = m.fit(data.x_train, data.y_train, epochs=epochs, steps=cfg.local_steps or None,
                 shuffle=True, seed=seed, drop_last=cfg.drop_last)
    opt.mu, opt.anchor = 0.0, {}
    return m.get_weights(), hist.losses
