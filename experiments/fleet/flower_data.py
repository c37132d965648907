"""The data factory of Flower's ClientApp in simulation (``data-factory`` =
``experiments.fleet.flower_data:partition``).

Run config keys: ``data-kind``, ``data-devices``, ``data-seed``, ``data-params`` (JSON of
``experiments.data.make_fleet_data`` parameters). The fleet is built once per process.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=2)
def _fleet(kind: str, devices: int, seed: int, params: str) -> Any:
    from experiments.data import make_fleet_data
    return make_fleet_data(kind, devices, seed, **json.loads(params or "{}"))


def fleet_from_run_config(run_config: dict[str, Any]) -> Any:
    return _fleet(str(run_config.get("data-kind", "synthetic_fedprox")),
                  int(run_config.get("data-devices", 10)), int(run_config.get("data-seed", 0)),
                  str(run_config.get("data-params", "{}")))


def partition(partition_id: int, run_config: dict[str, Any]) -> Any:
    """Device ``partition_id`` of the fleet described by the run config."""
    fleet = fleet_from_run_config(run_config)
    if not 0 <= partition_id < len(fleet.devices):
        raise ValueError(f"partition-id {partition_id} out of range: the fleet has "
                         f"{len(fleet.devices)} devices (data-devices)")
    return fleet.devices[partition_id]
