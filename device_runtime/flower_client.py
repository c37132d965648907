"""A Flower ``ClientApp`` around the device program (flwr is imported only when used).

``import device_runtime`` never imports flwr, and neither does importing this module:
the ``app`` attribute (what ``flwr run`` and ``flower-supernode`` load, as
``device_runtime.flower_client:app``) is created on first access. A board without
Flower can still use everything else in ``device_runtime``.

Where the device's data and RAM cap come from (``node_config``, set per SuperNode with
``flower-supernode --node-config "..."``; ``run_config`` values are defaults):

- ``data-path``: the device's ``.npz`` (``x, y`` and optionally ``x_test, y_test``), or
- ``data-factory`` (``module:function``, e.g. ``experiments.fleet.flower_data:partition``)
  called with ``(partition_id, run_config)``; Flower's simulation runtime sets
  ``partition-id`` in ``node_config``;
- ``ram-cap`` (``256MiB``), ``swap``, ``batch-size``, ``freeze``, ``fallbacks``: the
  device's own settings (see :class:`device_runtime.device.DeviceSettings`), or
- ``device-socket``: the Unix socket of a device service (``device_runtime.service``) that
  holds the data, the settings and the device state, and trains; the ClientApp then only
  forwards each message there, so the process Flower starts for each message imports
  neither the runtime nor numba and loads no data (the runtime is imported lazily here).

Personal layers, Ditto's personal model and optimizer state stay in ``context.state``
(on the device); replies carry only the shared arrays and a MetricRecord. A device that
cannot train within its RAM cap raises, so Flower replies with an error message that
names the bytes needed and the cap, and strategies leave it out of the aggregate.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, MemoryCapExceeded, NNFleetError

if TYPE_CHECKING:
    from .device import DeviceData, DeviceState

# "app" is listed for Flower's static check of `device_runtime.flower_client:app`; it is
# created by the module's __getattr__ on first access.
__all__ = ["app", "evaluate", "load_state", "make_client_app", "reply_content", "save_state",  # noqa: F822
           "train"]

STATE_ARRAYS = "device-state"  # ArrayRecord in context.state: the device state's arrays
SETTING_KEYS = ("ram-cap", "swap", "batch-size", "freeze", "fallbacks")

_DATA: dict[tuple[Any, ...], DeviceData] = {}


def node_value(context: Any, key: str, default: Any = None) -> Any:
    """``node_config[key]``, else ``run_config[key]``, else ``default``."""
    if key in context.node_config:
        return context.node_config[key]
    return context.run_config.get(key, default)


def device_data(context: Any) -> DeviceData:
    """The device's data (cached per process and node)."""
    from .device import DeviceData, load_device_data

    path = node_value(context, "data-path")
    pid = context.node_config.get("partition-id", context.node_id)
    key = (path, pid, context.run_id) if path else (pid, tuple(sorted(context.run_config.items())))
    if key not in _DATA:
        if path:
            _DATA[key] = load_device_data(str(path))
        else:
            spec = str(context.run_config.get("data-factory", ""))
            if ":" not in spec:
                raise ConfigError("the device has no data: set node_config data-path=FILE.npz or "
                                  "run_config data-factory='module:function'")
            mod, fn = spec.split(":", 1)
            try:
                factory = getattr(importlib.import_module(mod), fn)
            except (ImportError, AttributeError) as e:
                raise ConfigError(f"the device has no data: set node_config data-path=FILE.npz "
                                  f"(run_config data-factory {spec!r} cannot be loaded here: "
                                  f"{e})") from e
            d = factory(int(pid), dict(context.run_config))
            _DATA[key] = DeviceData(d.x_train, d.y_train, d.x_test, d.y_test)
    return _DATA[key]


def device_id(context: Any) -> int:
    return int(context.node_config.get("partition-id", context.node_id))


def load_state(context: Any) -> DeviceState:
    """The device state kept in ``context.state`` between rounds."""
    from .device import DeviceState, parse_settings, state_from_arrays

    saved: dict[str, np.ndarray] = {}
    if STATE_ARRAYS in context.state:
        saved = {k: a.numpy() for k, a in context.state[STATE_ARRAYS].items()}
    arrays, meta = state_from_arrays(saved)
    settings = parse_settings({k: node_value(context, k) for k in SETTING_KEYS
                               if node_value(context, k) is not None})
    return DeviceState(device_id(context), device_data(context), settings, arrays, meta)


def save_state(context: Any, state: DeviceState) -> None:
    from flwr.app import Array, ArrayRecord

    from .device import state_arrays

    context.state[STATE_ARRAYS] = ArrayRecord(
        {k: Array(np.ascontiguousarray(v)) for k, v in state_arrays(state).items()})


def arrays_of(message: Any) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in message.content["arrays"].items()}


def config_of(message: Any) -> dict[str, Any]:
    return dict(message.content["config"]) if "config" in message.content else {}


def reply_content(shared: dict[str, np.ndarray] | None, metrics: dict[str, float]) -> Any:
    """A reply RecordDict: ``arrays`` (shared only; omitted for evaluation) and ``metrics``
    (for training, the :data:`~device_runtime.device.REPLY_KEYS`)."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    from .device.program import REPLY_KEYS

    keys = REPLY_KEYS if shared is not None else metrics
    content = RecordDict({"metrics": MetricRecord({k: float(metrics[k]) for k in keys})})
    if shared is not None:
        content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v))
                                         for k, v in shared.items()})
    return content


def cap_failure(device: int, cap: int, metrics: dict[str, float]) -> MemoryCapExceeded:
    needed = int(metrics.get("needed-bytes", -1))
    return MemoryCapExceeded(needed, cap, f"device {device} cannot train within its RAM cap")


def forward(socket_path: str, op: str, message: Any, context: Any) -> tuple[
        dict[str, np.ndarray], dict[str, float]]:
    """Send the message to the device service; (shared arrays, metrics) back."""
    from .service import request

    header = {"op": op, "run": int(context.run_id), "device": device_id(context),
              "config": {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
                         for k, v in config_of(message).items()}}
    reply, shared = request(str(socket_path), header, arrays_of(message))
    if reply.get("error") == "cap":
        raise cap_failure(device_id(context), int(reply.get("cap", -1)),
                          {"needed-bytes": reply.get("needed", -1)})
    if not reply.get("ok"):
        raise NNFleetError(f"device service: {reply.get('message', 'request failed')}")
    return shared, {k: float(v) for k, v in reply.get("metrics", {}).items()}


def train(message: Any, context: Any) -> Any:
    """Flower ``@app.train()``: one round of the device program."""
    from flwr.app import Message

    sock = node_value(context, "device-socket")
    if sock:
        shared, metrics = forward(sock, "train", message, context)
        return Message(reply_content(shared, metrics), reply_to=message)
    from .device import run_device

    _warm()
    state = load_state(context)
    shared, metrics, new_state = run_device(state, arrays_of(message), config_of(message))
    if not metrics["trained"]:
        raise cap_failure(state.device_id, int(state.settings.ram_cap or -1), metrics)
    save_state(context, new_state)
    return Message(reply_content(shared, metrics), reply_to=message)


def evaluate(message: Any, context: Any) -> Any:
    """Flower ``@app.evaluate()``: the personalized model on the device's own test split."""
    from flwr.app import Message

    sock = node_value(context, "device-socket")
    if sock:
        _, metrics = forward(sock, "evaluate", message, context)
        return Message(reply_content(None, metrics), reply_to=message)
    from .device import evaluate_device

    _warm()
    metrics = evaluate_device(load_state(context), arrays_of(message), config_of(message))
    return Message(reply_content(None, metrics), reply_to=message)


def make_client_app() -> Any:
    """A new ``flwr.clientapp.ClientApp`` wired to :func:`train` and :func:`evaluate`."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.clientapp import ClientApp

    client = ClientApp()
    client.train()(train)
    client.evaluate()(evaluate)
    return client


def _warm() -> None:
    """Pay the JIT once per process, before any measured step (only where this process
    trains itself: not when a device service does)."""
    from .warmup import warmup

    warmup()


_APP: Any = None


def __getattr__(name: str) -> Any:  # PEP 562: ``app`` is built (and flwr imported) on demand
    global _APP
    if name == "app":
        if _APP is None:
            _APP = make_client_app()
        return _APP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
