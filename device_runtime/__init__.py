"""nnfleet's device runtime: a memory-planned on-device trainer (no Flower import).

The names below load on first use (PEP 562), so ``import device_runtime`` (or its CLI)
does not yet load the kernels: the choice of numba or the numpy kernels
(``NNFLEET_NO_NUMBA``, ``nnfleet train --kernels``) can still be made after it.
"""

from __future__ import annotations

import importlib
import sys
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
    "import_numpy_random",
    "layer",
    "rss",
]


def import_numpy_random() -> None:
    """Import ``numpy.random`` without loading ``secrets``, which costs 3.9 MiB of RSS.

    numpy.random takes one function from ``secrets``: ``randbits``, which is
    ``random.SystemRandom().getrandbits`` (entropy from ``os.urandom``, for unseeded
    generators). ``secrets`` itself imports ``hmac`` and with it OpenSSL's libcrypto,
    which training never uses. While numpy.random loads, a stand-in ``secrets`` holding
    that very function is in ``sys.modules``; it is removed after, so a later ``import
    secrets`` gets the real module. A no-op once either is loaded (the CLI calls it first).
    """
    if "numpy.random" in sys.modules or "secrets" in sys.modules:
        return
    import random
    import types

    stand_in = types.ModuleType("secrets", "stand-in while numpy.random loads")
    setattr(stand_in, "randbits", random.SystemRandom().getrandbits)
    sys.modules["secrets"] = stand_in
    try:
        importlib.import_module("numpy.random")
    finally:
        if sys.modules.get("secrets") is stand_in:
            del sys.modules["secrets"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'device_runtime' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
