"""The fleet engine: warm worker processes running RAM-capped devices behind Flower's Grid.

``FleetGrid`` (which imports flwr) is loaded on first use, so that the worker processes,
which import this package, never import Flower.
"""

from typing import Any

from .engine import FleetEngine
from .profiles import DeviceProfile, draw, draw_profiles
from .protocol import Job, TaskResult
from .store import StoreReader, write_store

__all__ = ["DeviceProfile", "FleetEngine", "FleetGrid", "Job", "StoreReader", "TaskResult",
           "draw", "draw_profiles", "write_store"]


def __getattr__(name: str) -> Any:
    if name == "FleetGrid":
        from .grid import FleetGrid
        return FleetGrid
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
