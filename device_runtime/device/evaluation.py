"""The personalized model on the device's own test split."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import rss
from ..errors import MemoryCapExceeded
from ..model import Model
from .config import DeviceConfig, patterns, split_keys
from .registry import PERSONALIZED, resolve
from .state import Arrays, DeviceData, DeviceState
from .trainers import fit, inference_model, initial_weights, phase_seed, with_fallbacks

EVAL_BATCH = 32


def evaluate(m: Model, weights: Arrays, data: DeviceData) -> tuple[float, float]:
    """(mean loss, accuracy) of ``weights`` on the test split; (-1, -1) when it is empty."""
    if data.y_test.shape[0] == 0:
        return -1.0, -1.0
    m.set_weights(weights, strict=False)
    # Two fixed batch sizes (EVAL_BATCH, then 1 for the tail) so that devices with different
    # test-set sizes reuse the same two inference executors instead of planning new ones.
    n = int(data.y_test.shape[0])
    cut = n - n % EVAL_BATCH
    loss = correct = 0.0
    for lo, hi, b in ((0, cut, EVAL_BATCH), (cut, n, 1)):
        if hi > lo:
            r = m.evaluate(data.x_test[lo:hi], data.y_test[lo:hi], batch_size=b)
            loss += r["loss"] * (hi - lo)
            correct += r.get("accuracy", -1.0) * (hi - lo)
    return loss / n, correct / n


def personal_model(state: DeviceState, like: Arrays) -> Arrays:
    """Ditto's personal model v kept in the state (empty before its first round)."""
    return {k: state.arrays["v/" + k] for k in like if "v/" + k in state.arrays}


def personalized(state: DeviceState, full: Arrays, cfg: DeviceConfig) -> Arrays:
    """The device's personalized model, from ``full`` (the received shared weights with
    its personal layers): Ditto's v, the rule's own (APFL's mix, pFedMe's theta,
    Per-FedAvg's one-step adaptation: ``@personalized_model``), then fine-tuned for
    ``finetune-epochs`` (FedAvg-FT, FedBABU). A step that cannot fit the RAM cap is left
    out (the model as it was before it is evaluated)."""
    if cfg.ditto_lambda and any(k.startswith("v/") for k in state.arrays):
        full = {k: state.arrays.get("v/" + k, a) for k, a in full.items()}
    personalize = PERSONALIZED.get(resolve(cfg))
    if personalize is not None:
        try:
            full = personalize(state, full, cfg)
        except MemoryCapExceeded:
            pass  # cannot build it here: evaluate the model as received
    n = int(state.data.y_train.shape[0])
    if cfg.finetune_epochs and n:
        batch = min(int(state.settings.batch_size or cfg.batch_size), n)
        try:
            m = with_fallbacks(cfg, state.settings, batch, tuple(patterns(state.settings.freeze)))
            full, _ = fit(m, full, state.data, cfg, cfg.finetune_epochs,
                          phase_seed(cfg, state.device_id, "finetune"))
        except MemoryCapExceeded:
            pass  # cannot fine-tune here: evaluate the model as received
    return full


def evaluate_device(state: DeviceState, shared: Arrays,
                    config: Mapping[str, Any] | DeviceConfig,
                    keep: Arrays | None = None) -> dict[str, float]:
    """The personalized model on the device's own test split: ``num-examples`` (test
    samples), ``loss``, ``accuracy``. FedAvg + fine-tuning trains a throw-away copy first.
    ``keep``: a dict that receives the weights evaluated (every parameter of the model:
    the device's personalized model), e.g. to save them.

    Raises :class:`MemoryCapExceeded` when the process is already larger than the cap."""
    cfg = config if isinstance(config, DeviceConfig) else DeviceConfig.from_mapping(config)
    data = state.data
    cap = state.settings.ram_cap
    if cap and rss.current_rss() > cap:
        raise MemoryCapExceeded(rss.current_rss(), cap, "the runtime alone is larger than the cap")
    init = initial_weights(cfg.model, cfg.model_seed)
    _, personal = split_keys(list(init), cfg.personal)
    full = {**init, **{k: state.arrays.get("p/" + k, init[k]) for k in personal}, **shared}
    full = personalized(state, full, cfg)
    if keep is not None:
        keep.update(full)
    loss, acc = evaluate(inference_model(cfg), full, data)
    return {"num-examples": float(data.y_test.shape[0]), "loss": loss, "accuracy": acc}
