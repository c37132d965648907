"""The Ray backend's workers and nodes: a worker's record, what each node has left, and
whether a node is gone (for the account of a dead worker).

Ray's node table lags behind a node's death (until the node's health check fails), and an
actor that died with its node does not always say so: when Ray's word on the death comes
late, the caller gets a bare "The actor died unexpectedly". So the table alone cannot tell a
worker that crashed from one whose node died a moment ago. A task pinned to the node settles
it: it runs if the node lives, and Ray fails it once it has declared the node dead (after
its own health check, however long the cluster sets that to be; no timeout of ours).
"""

from __future__ import annotations

from typing import Any

from .backends import need_ray
from .ray_place import Room


class Slot:
    """One worker: its actor, kind, reservation, node and devices."""

    def __init__(self, index: int, kind: str, reserve: int, devices: list[int]) -> None:
        self.index, self.kind, self.reserve, self.devices = index, kind, reserve, devices
        self.node = ""
        self.actor: Any = None
        self.info: dict[str, Any] = {}
        self.alive = True
        self.status = ""  # how it died: node-lost or crashed
        self.pending: Any = None  # its data being packed, then None


def rooms_left(live: list[Slot], lost: set[str]) -> dict[str, Room]:
    """What each node Ray reads alive, and not in ``lost``, has left after the ``live``
    workers' reservations (a node that died may read Alive for a while: ``lost`` holds the
    ones seen dead, never to be placed on)."""
    rooms = {nd["NodeID"]: Room(nd["NodeID"], int(nd["Resources"].get("memory", 0)),
                                float(nd["Resources"].get("CPU", 0)))
             for nd in need_ray().nodes() if nd["Alive"] and nd["NodeID"] not in lost}
    for s in live:
        if s.node in rooms:
            rooms[s.node].memory -= s.reserve
            rooms[s.node].cpus -= 1
    return rooms


def node_alive(node: str) -> bool:
    """Ray's node table reads ``node`` alive (it can lag behind a death)."""
    return any(nd["NodeID"] == node and nd["Alive"] for nd in need_ray().nodes())


def node_gone(node: str, err: BaseException | str = "") -> bool:
    """Whether ``node`` has died, after one of its actors raised ``err``."""
    ray = need_ray()
    if "node has died" in str(err) or not node_alive(node):
        return True
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # a lambda travels by value: the probe's worker imports nothing of this package
    probe = ray.remote(lambda: None).options(
        num_cpus=0, max_retries=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    try:
        ray.get(probe.remote())
    except ray.exceptions.RayError:  # unschedulable: Ray has declared the node dead
        return True
    return False
