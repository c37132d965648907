"""The device program (no Flower here): its config, state, trainers, evaluation and
local-update rules. :func:`run_device` and :func:`evaluate_device` are what the fleet
worker and the Flower ClientApp call."""

from .config import (
    DeviceConfig,
    DeviceSettings,
    forwarded_keys,
    key_specs,
    matches,
    parse_settings,
    patterns,
    split_keys,
)
from .evaluation import evaluate_device
from .program import METRIC_KEYS, REPLY_KEYS, run_device
from .prox import ProxOptimizer
from .registry import LOCAL_UPDATES, local_update
from .rules import LocalRun
from .state import (
    DeviceData,
    DeviceState,
    load_device_data,
    load_state,
    save_state,
    state_arrays,
    state_from_arrays,
)
from .trainers import clear_cache, initial_weights, keep_only

__all__ = [
    "LOCAL_UPDATES",
    "METRIC_KEYS",
    "REPLY_KEYS",
    "DeviceConfig",
    "DeviceData",
    "DeviceSettings",
    "DeviceState",
    "LocalRun",
    "local_update",
    "ProxOptimizer",
    "clear_cache",
    "keep_only",
    "evaluate_device",
    "forwarded_keys",
    "initial_weights",
    "key_specs",
    "load_device_data",
    "load_state",
    "matches",
    "parse_settings",
    "patterns",
    "run_device",
    "save_state",
    "split_keys",
    "state_arrays",
    "state_from_arrays",
]
