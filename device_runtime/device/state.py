"""A device's own data and the state it keeps between rounds, and that state's one
persistent form (:func:`state_arrays` / :func:`state_from_arrays`): a flat dict of arrays,
which the fleet worker writes as an ``.npz`` (:func:`save_state`, no pickle) and the
Flower ClientApp keeps as an ArrayRecord in ``context.state``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..errors import DataError
from .config import DeviceSettings

Arrays = dict[str, np.ndarray]
META = "meta/"  # prefix of the counters in the persistent form


@dataclass
class DeviceData:
    """A device's own data: class-id labels; the test split is from its own distribution."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class DeviceState:
    """Everything the device keeps between rounds; ``arrays``/``meta`` are what is saved."""

    device_id: int
    data: DeviceData
    settings: DeviceSettings = field(default_factory=DeviceSettings)
    # "p/<key>" personal layers, "v/<key>" Ditto's personal model, "o/..." optimizer state
    arrays: Arrays = field(default_factory=dict)
    meta: dict[str, float] = field(default_factory=dict)


def state_arrays(state: DeviceState) -> Arrays:
    """The persistent part of ``state`` (arrays and counters) as one flat dict of arrays."""
    out = dict(state.arrays)
    # shape (1,), not 0-d: Flower's ArrayRecord stores a scalar array as shape (1,)
    out.update({META + k: np.asarray([v], np.float64) for k, v in state.meta.items()})
    return out


def state_from_arrays(saved: Arrays) -> tuple[Arrays, dict[str, float]]:
    """(arrays, meta) from :func:`state_arrays`' form."""
    meta = {k[len(META):]: float(np.asarray(v).reshape(-1)[0]) for k, v in saved.items()
            if k.startswith(META)}
    return {k: v for k, v in saved.items() if not k.startswith(META)}, meta


def save_state(state: DeviceState, path: str, fsync: bool = True,
               before_rename: Callable[[], None] | None = None) -> None:
    """The persistent part of the state as one private (0600) ``.npz``, atomically (no
    pickle); ``fsync=False`` where surviving a kill is enough (the fleet's workers);
    ``before_rename`` may raise to keep the old state."""
    from ..weights import save_npz_atomic

    save_npz_atomic(path, state_arrays(state), fsync, before_rename)


def load_state(path: str) -> tuple[Arrays, dict[str, float]]:
    """(arrays, meta) saved by :func:`save_state`."""
    from ..weights import load_npz

    return state_from_arrays(load_npz(path))


def load_device_data(path: str) -> DeviceData:
    """A device's ``.npz``: ``x, y`` and optionally ``x_test, y_test`` (else 20% of x, y)."""
    from ..weights import load_npz

    z = load_npz(path)
    if "x" not in z or "y" not in z:
        raise DataError(f"{path} needs arrays x and y (found: {', '.join(z) or 'none'})")
    x, y = z["x"], z["y"]
    if "x_test" in z and "y_test" in z:
        return DeviceData(x, y, z["x_test"], z["y_test"])
    cut = len(y) - max(1, len(y) // 5) if len(y) > 1 else len(y)
    return DeviceData(x[:cut], y[:cut], x[cut:], y[cut:])
