"""The device program: one round of on-device training for federated personalization.

Given the device's own state (its data, settings, personal layers, optimizer state and
whatever the rule keeps, such as Ditto's personal model), the shared weights from the
server and the round's :class:`~.config.DeviceConfig`, :func:`run_device` trains under the
device's RAM cap and returns the updated *shared* weights, metrics and the new state.
Personal weights never appear in the returned shared weights. Nothing here knows Flower:
the Flower ``ClientApp`` (``device_runtime.flower_client``) and the fleet engine both call it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import rss
from ..errors import ConfigError, MemoryCapExceeded
from .config import DeviceConfig, patterns, split_keys
from .evaluation import evaluate, personal_model, personalized
from .rules import LocalRun, rule_of
from .state import Arrays, DeviceState
from .trainers import inference_model, initial_weights

# what a device reports to the server (Flower reply MetricRecord); the fleet engine logs
# every METRIC_KEYS entry locally
REPLY_KEYS = ("num-examples", "train-loss", "loss-before", "accuracy-before", "loss-after",
              "accuracy-after", "peak-rss", "ram-cap", "cap-exceeded")
METRIC_KEYS = ("num-examples", "trained", "steps", "train-loss", "loss-before", "accuracy-before",
               "loss-after", "accuracy-after", "baseline-rss", "peak-rss", "ram-cap",
               "cap-exceeded", "needed-bytes", "micro-batch", "swap-bytes", "train-seconds")


def run_device(state: DeviceState, shared: Arrays, config: Mapping[str, Any] | DeviceConfig
               ) -> tuple[Arrays, dict[str, float], DeviceState]:
    """One round on the device: train, return (shared weights out, metrics, new state).

    ``shared`` must hold exactly the non-personal parameters. When the device cannot train
    within its RAM cap the shared output is empty and ``metrics["trained"] == 0`` with
    ``cap-exceeded`` and ``needed-bytes`` set.
    """
    t0 = time.perf_counter()
    cfg = config if isinstance(config, DeviceConfig) else DeviceConfig.from_mapping(config)
    rule = rule_of(cfg)
    data, st = state.data, state.settings
    init = initial_weights(cfg.model, cfg.model_seed)
    shared_keys, personal_keys = split_keys(list(init), cfg.personal)
    if set(shared) != set(shared_keys):
        extra = sorted(set(shared) - set(shared_keys))
        missing = sorted(set(shared_keys) - set(shared))
        raise ConfigError(f"device {state.device_id}: shared weights do not match the model's "
                          f"shared part (unexpected: {extra[:3]}, missing: {missing[:3]}); "
                          f"personal patterns {patterns(cfg.personal)}")
    metrics: dict[str, float] = {k: -1.0 for k in METRIC_KEYS}
    metrics.update({"num-examples": float(data.y_train.shape[0]), "trained": 0.0, "steps": 0.0,
                    "cap-exceeded": 0.0, "ram-cap": float(st.ram_cap or -1)})
    full = {**init, **{k: state.arrays.get("p/" + k, init[k]) for k in personal_keys}, **shared}
    v_model = personal_model(state, init) if cfg.ditto_lambda else {}
    ev = inference_model(cfg)
    if cfg.eval_before:  # the personalized model the device starts the round with
        metrics["loss-before"], metrics["accuracy-before"] = evaluate(
            ev, personalized(state, full, cfg), data)

    n = int(data.y_train.shape[0])
    batch = min(int(st.batch_size or cfg.batch_size), n) if n else 0
    rss.release_heap(collect=False)  # microseconds; a collection would cost milliseconds
    baseline = rss.current_rss()
    rss.reset_peak()
    metrics["baseline-rss"] = float(baseline)
    if batch < 1:
        metrics["peak-rss"] = float(rss.peak_rss())
        return {}, metrics, state

    run = LocalRun(state, cfg, batch, tuple(sorted(patterns(st.freeze))), shared_keys,
                   personal_keys, shared, init, full, v_model, dict(state.arrays))
    try:
        rule(run)
    except MemoryCapExceeded as e:
        metrics.update({"cap-exceeded": 1.0, "needed-bytes": float(e.needed),
                        "peak-rss": float(rss.peak_rss())})
        return {}, metrics, state
    # the peak since training began: at least the baseline, even where RSS fell before the
    # RAM guard reset the OS high-water mark for the step (a compile gives heap back)
    peak = max(rss.peak_rss(), baseline)
    metrics.update({"peak-rss": float(peak), "steps": float(len(run.losses)), "trained": 1.0,
                    "train-loss": float(np.mean(run.losses)) if run.losses else -1.0})
    if run.model is not None:
        rep = run.model.memory_report()
        metrics["micro-batch"] = float(rep.get("micro_batch") or batch)
        metrics["swap-bytes"] = float(rep.get("swap_bytes_written") or 0)
        if rep.get("cap_exceeded"):
            metrics["cap-exceeded"] = 1.0
    if st.ram_cap and peak > st.ram_cap:  # the OS would have killed it: the update is lost
        metrics.update({"cap-exceeded": 1.0, "needed-bytes": float(peak), "trained": 0.0})
        return {}, metrics, state
    run.arrays.update({"p/" + k: run.weights[k] for k in personal_keys})
    if cfg.eval_after:
        metrics["loss-after"], metrics["accuracy-after"] = evaluate(
            ev, run.personal_model or run.weights, data)
    metrics["train-seconds"] = time.perf_counter() - t0
    meta = dict(state.meta)
    meta["rounds"] = meta.get("rounds", 0.0) + 1
    new_state = DeviceState(state.device_id, data, st, run.arrays, meta)
    return {k: run.weights[k] for k in shared_keys}, metrics, new_state
