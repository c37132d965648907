"""Where the Ray backend's workers go: a pure function of what they need and what nodes have.

A worker reserves Ray's ``memory`` resource (a logical resource, in bytes, that every Ray
node has: ``ray start --memory BYTES``, by default most of the node's memory at start) for
the largest RAM cap among its devices (the cap covers the worker process, baseline
included) plus :data:`ACTOR_MEMORY` for the Ray actor process that drives it, and one CPU.
Workers are placed biggest reservation first, each on the node with the most memory left
that still has a CPU, so that the sum of reservations on a node never exceeds its
``memory``; Ray holds the same reservations, so nothing else it schedules can take them.
"""

from __future__ import annotations

from dataclasses import dataclass

from device_runtime.errors import ConfigError
from device_runtime.units import fmt_bytes

# A Ray actor process (core worker + this package's imports) measured ~95-110 MiB RSS here
# (Ray 2.55, Python 3.11); the device's own worker process is under the device's cap
ACTOR_MEMORY = 128 << 20
# reserved for the worker of uncapped devices (a cap is what makes a reservation exact)
UNCAPPED_MEMORY = 1 << 30


@dataclass
class Room:
    """What a node offers: its id, Ray ``memory`` and ``CPU`` left."""

    node: str
    memory: int
    cpus: float


def reservation(caps: list[int | None]) -> int:
    """Ray ``memory`` a worker of devices with these caps reserves."""
    if any(c is None or c <= 0 for c in caps):
        return UNCAPPED_MEMORY + ACTOR_MEMORY
    return max(int(c) for c in caps if c is not None) + ACTOR_MEMORY


def place(reserves: list[int], rooms: list[Room], cpus: float = 1.0) -> list[str]:
    """The node of each worker (``reserves[i]`` bytes, ``cpus`` CPUs); ``rooms`` are updated.

    A ConfigError names the first worker that fits on no node."""
    out = [""] * len(reserves)
    for i in sorted(range(len(reserves)), key=lambda i: (-reserves[i], i)):
        fits = [r for r in rooms if r.memory >= reserves[i] and r.cpus >= cpus]
        if not fits:
            best = max(rooms, key=lambda r: r.memory, default=None)
            left = (f"the most any node has left is {fmt_bytes(best.memory)} and "
                    f"{best.cpus:g} CPUs" if best else "the cluster has no node")
            raise ConfigError(f"Ray backend: worker {i} needs {fmt_bytes(reserves[i])} of Ray's "
                              f"memory resource and {cpus:g} CPU, but {left} (add nodes, lower "
                              f"--workers, or smaller caps)")
        room = max(fits, key=lambda r: r.memory)  # the most free memory: spread the load
        room.memory -= reserves[i]
        room.cpus -= cpus
        out[i] = room.node
    return out
