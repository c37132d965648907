"""nnfleet's aggregation side: a Flower ServerApp running Flower's strategies over the
shared layers. Importing this package imports flwr (device_runtime never does)."""

from .app import DEVICE_KEYS, app, initial_shared
from .strategies import STRATEGIES, make_strategy

__all__ = ["DEVICE_KEYS", "STRATEGIES", "app", "initial_shared", "make_strategy"]
