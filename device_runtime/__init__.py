"""nnfleet's device runtime: a memory-planned on-device trainer (no Flower import).

The names below load on first use (PEP 562), so ``import device_runtime`` (or its CLI)
does not yet load the kernels: the choice of numba or the numpy kernels
(``NNFLEET_NO_NUMBA``, ``nnfleet train --kernels``) can still be made after it.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import rss
from .errors import ConfigError, DataError, MemoryCapExceeded, ModelError, NNFleetError

_LAZY = {"History": "model", "LayerSpec": "model", "Model": "model", "layer": "model",
         "BUILTINS": "models", "build": "models", "SGD": "optimizers", "Adam": "optimizers",
         "AdamW": "optimizers", "Schedule": "optimizers", "create_optimizer": "optimizers"}

__all__ = [
    "BUILTINS",
    "SGD",
    "Adam",
    "AdamW",
    "ConfigError",
    "DataError",
    "History",
    "LayerSpec",
    "MemoryCapExceeded",
    "Model",
    "ModelError",
    "NNFleetError",
    "Schedule",
    "build",
    "create_optimizer",
    "layer",
    "rss",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'device_runtime' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
