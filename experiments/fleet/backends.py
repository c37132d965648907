"""Which fleet engine runs a fleet: ``local`` (:class:`~.engine.FleetEngine`, this machine,
the default) or ``ray`` (:class:`~.ray_backend.RayEngine`, a Ray cluster); ``[fleet]
backend`` or ``--backend``. Ray is imported only for the ray backend (it is an extra)."""

from __future__ import annotations

import socket
from typing import Any, cast

from device_runtime.errors import ConfigError

from .engine import FleetEngine

BACKENDS = ("local", "ray")
RAY_MISSING = ("the ray backend needs Ray, which this install does not have: "
               "pip install 'nnfleet[flower]' (Flower's simulation extra brings Ray)")


def open_engine(backend: str = "local", ray_address: str | None = None,
                **kwargs: Any) -> FleetEngine:
    """The fleet engine of ``backend`` ("local" or "ray"), with FleetEngine's arguments."""
    if backend == "local":
        return FleetEngine(**kwargs)
    if backend != "ray":
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    # not a subclass: RayEngine has the interface that FleetGrid and simulate use
    from .ray_backend import RayEngine

    return cast(FleetEngine, RayEngine(address=ray_address, **kwargs))


def need_ray() -> Any:
    """The ray module; a one-line ConfigError naming the extra when it is not installed."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


def check_address(address: str | None, timeout: float = 10.0) -> None:
    """A one-line ConfigError when nothing listens at a Ray head's ``HOST:PORT`` (Ray
    itself retries for minutes); other forms (``auto``, ``ray://...``) are Ray's to check."""
    if not address or "://" in address or address.count(":") != 1:
        return
    host, port = address.rsplit(":", 1)
    if not port.isdigit():
        raise ConfigError(f"--ray-address {address!r} must be HOST:PORT (the head's GCS port, "
                          f"6379 by default)")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConfigError(f"no Ray cluster at {address} ({e.strerror or e}): start its head "
                          f"with 'ray start --head --port {port}'") from None
