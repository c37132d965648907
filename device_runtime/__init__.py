"""nnfleet's device runtime: a memory-planned on-device trainer (no Flower import)."""

from .errors import ConfigError, DataError, MemoryCapExceeded, ModelError, NNFleetError
from .model import History, LayerSpec, Model, layer
from .models import BUILTINS, build
from . import rss
from .optimizers import SGD, Adam, AdamW, Schedule, create_optimizer

__all__ = ["Adam", "AdamW", "BUILTINS", "ConfigError", "DataError", "History", "LayerSpec",
           "MemoryCapExceeded", "Model", "ModelError", "NNFleetError", "SGD", "Schedule", "build",
           "create_optimizer", "layer", "rss"]
