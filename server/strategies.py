"""Flower's own strategies by name; the maths of aggregation is Flower's, not ours."""

from __future__ import annotations

import json
from typing import Any

from device_runtime.errors import ConfigError

# lower-case name -> class name in flwr.serverapp.strategy
STRATEGIES = {
    "fedavg": "FedAvg", "fedprox": "FedProx", "fedadam": "FedAdam", "fedyogi": "FedYogi",
    "fedadagrad": "FedAdagrad", "fedavgm": "FedAvgM", "krum": "Krum", "multikrum": "MultiKrum",
    "fedtrimmedavg": "FedTrimmedAvg", "fedmedian": "FedMedian", "bulyan": "Bulyan",
    "qfedavg": "QFedAvg",
}


def make_strategy(name: str, fraction_train: float = 1.0, fraction_evaluate: float = 1.0,
                  min_nodes: int = 2, args: dict[str, Any] | str | None = None) -> Any:
    """A ``flwr.serverapp.strategy`` instance: ``make_strategy("fedadam", args={"eta": 0.1})``."""
    from flwr.serverapp import strategy as S

    key = name.strip().lower()
    if key not in STRATEGIES:
        raise ConfigError(f"unknown strategy '{name}' (known: {', '.join(STRATEGIES)})")
    if isinstance(args, str):  # JSON text, as a run config carries it; blank means none
        kwargs = json.loads(args) if args.strip() else {}
    else:
        kwargs = dict(args or {})
    if not isinstance(kwargs, dict):
        raise ConfigError(f"strategy-args must be a JSON object, got {args!r}")
    kwargs.setdefault("fraction_train", float(fraction_train))
    kwargs.setdefault("fraction_evaluate", float(fraction_evaluate))
    kwargs.setdefault("min_train_nodes", int(min_nodes))
    kwargs.setdefault("min_evaluate_nodes", int(min_nodes) if fraction_evaluate > 0 else 0)
    kwargs.setdefault("min_available_nodes", int(min_nodes))
    try:
        return getattr(S, STRATEGIES[key])(**kwargs)
    except TypeError as e:
        raise ConfigError(f"strategy {name}: {e}") from None
