"""A strategy's state as JSON and arrays: what a checkpoint keeps of it, without pickle.

Flower's strategies keep their state in plain attributes: numbers and strings (their
settings), and arrays (FedAdam's ``m_t``/``v_t`` and ``current_arrays`` as dicts of
ndarrays, FedAvgM's ``momentum_vector`` as a list, QFedAvg's ``current_arrays`` as an
ArrayRecord). :func:`encode` turns every attribute made of those into a JSON tree whose
arrays are references into one flat dict of ndarrays; :func:`decode` rebuilds them.
Attributes that are neither (functions such as ``train_metrics_aggr_fn``, other objects)
are not state: the server builds them again from its config when it restarts, so they are
left as the new strategy has them. Nothing in a checkpoint can run code when it is read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from device_runtime.errors import ConfigError

_SCALARS = (bool, int, float, str, type(None))


class _NotState(Exception):
    """A value that is not a strategy's state (a function, an object)."""


def _enc(v: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    from flwr.app import ArrayRecord

    if isinstance(v, _SCALARS):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            raise _NotState
        key = f"{prefix}/a{len(arrays)}"  # unique over the whole state
        arrays[key] = v
        return {"array": key}
    if isinstance(v, ArrayRecord):
        return {"arrayrecord": {k: _enc(a.numpy(), arrays, prefix) for k, a in v.items()}}
    if isinstance(v, (list, tuple)):
        return {"list" if isinstance(v, list) else "tuple": [_enc(x, arrays, prefix) for x in v]}
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"dict": {k: _enc(x, arrays, prefix) for k, x in v.items()}}
    raise _NotState


def encode(strategy: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(tree, arrays)``: the strategy's state attributes, JSON-able, and their arrays."""
    tree: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for name, value in vars(strategy).items():
        mine: dict[str, np.ndarray] = {}
        try:
            tree[name] = _enc(value, mine, name)
        except _NotState:
            continue
        arrays.update(mine)  # kept only for attributes that are state through and through
    return tree, arrays


def _dec(enc: Any, arrays: dict[str, np.ndarray]) -> Any:
    from flwr.app import Array, ArrayRecord

    if isinstance(enc, _SCALARS):
        return enc
    if not isinstance(enc, dict) or len(enc) != 1:
        raise ConfigError(f"strategy state: unreadable entry {str(enc)[:60]}")
    (kind, body), = enc.items()
    if kind == "array":
        if body not in arrays:
            raise ConfigError(f"strategy state: array {body!r} is missing")
        return arrays[body]
    if kind == "arrayrecord":
        return ArrayRecord({k: Array(np.asarray(_dec(v, arrays))) for k, v in body.items()})
    if kind in ("list", "tuple"):
        items = [_dec(v, arrays) for v in body]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {k: _dec(v, arrays) for k, v in body.items()}
    raise ConfigError(f"strategy state: unknown entry kind {kind!r}")


def decode_into(strategy: Any, tree: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Set the strategy's state attributes from ``encode``'s output."""
    if not isinstance(tree, dict):
        raise ConfigError("strategy state: not a table of attributes")
    for name, enc in tree.items():
        setattr(strategy, name, _dec(enc, arrays))
