"""The messages of the fleet engine: what the grid asks the engine to run, and what the
engine and its worker processes send each other over their socket pair (pickled).

Engine -> worker: :class:`Setup` (once a worker is ready, and again for a respawned one),
:class:`Options`, :class:`Payload` / :class:`Drop`, :class:`Tasks`, :class:`Reset`,
:class:`Stop`, :class:`Timing`. Worker -> engine: :class:`Ready` (once warm), then one
:class:`Result` per task, in the order of the tasks; a :class:`Timings` for each Timing.

Both sides import this module, so every field is seen by name; the device's settings
travel as the runtime's own ``DeviceSettings`` (no string round trip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from device_runtime.device import DeviceSettings

# shared arrays as a Flower ``Array`` holds them: (dtype, shape, .npy bytes)
NpyArrays = dict[str, tuple[str, tuple[int, ...], bytes]]


@dataclass(frozen=True)
class Job:
    """One device task the grid asks for (it becomes a :class:`Task` for the device's worker)."""

    kind: str  # "train" or "evaluate"
    device: int  # index in the fleet (node id - 1)
    payload: int  # key of the shared weights and config in the run's payloads
    fault: str | None = None  # a kind of experiments.fleet.faults to inject on purpose


# ---------------------------------------------------------------- engine -> worker
@dataclass(frozen=True)
class Setup:
    """Where the fleet's packed data (:mod:`experiments.fleet.store`) and device states are."""

    store_path: str
    isolation: str  # "worker": in the worker process; "fork": in a child forked per device
    state_dir: str  # device states: <state_dir>/<run_key>/<device>.npz


@dataclass(frozen=True)
class Options:
    """How a worker carries injected faults out (see ``FaultPlan.options``)."""

    timeout: float | None = None  # seconds a device task may run; None = for ever
    scale: float = 100.0  # a "scale" fault multiplies the update by this
    dtype: str = "float64"  # a "dtype" fault returns the first array in this dtype


@dataclass(frozen=True)
class Payload:
    """The shared weights and server config of one message, sent once for many tasks."""

    pid: int
    shared: dict[str, np.ndarray]
    config: dict[str, Any]


@dataclass(frozen=True)
class Drop:
    """Forget payload ``pid`` (its run is over)."""

    pid: int


@dataclass(frozen=True)
class Task:
    """Run device ``device``'s ``kind`` task on payload ``pid``, with its own settings."""

    task_id: int
    kind: str  # "train" or "evaluate"
    device: int
    pid: int
    settings: DeviceSettings  # the device's own: RAM cap, swap, batch size, fallbacks
    run_key: str  # namespaces the device states of one experiment run
    fault: str | None = None


@dataclass(frozen=True)
class Tasks:
    """Tasks to run one after another; one :class:`Result` comes back per task."""

    tasks: tuple[Task, ...]


@dataclass(frozen=True)
class Reset:
    """Forget every device state of ``run_key``."""

    run_key: str


@dataclass(frozen=True)
class Stop:
    """End the worker."""


@dataclass(frozen=True)
class Timing:
    """Send your phase clocks (:mod:`experiments.fleet.clock`) and start them afresh."""


# ---------------------------------------------------------------- worker -> engine
@dataclass(frozen=True)
class Ready:
    """A worker is warm (imports and JIT paid): its pid and RSS before any device."""

    pid: int
    baseline_rss: int
    warmup_seconds: float
    kernels: str = "numba"  # "numba" or "numpy": the kernels this process loaded


@dataclass(frozen=True)
class Result:
    """The outcome of one task: the device's reply, or why there is none."""

    task_id: int
    shared: NpyArrays | None  # the returned shared weights (train), already serialized
    metrics: dict[str, float]
    error: str | None = None
    detail: str | None = None  # a short traceback of an unexpected error
    status: str | None = None  # no update: "raised", "killed", "timeout"


@dataclass(frozen=True)
class Timings:
    """A worker's seconds per phase and tasks run since the last :class:`Timing`."""

    seconds: dict[str, float]
    tasks: int


# ---------------------------------------------------------------- engine -> grid
@dataclass
class TaskResult:
    """What the engine reports of one :class:`Job`: the worker's Result, or a failure."""

    task_id: int
    device: int
    kind: str
    shared: NpyArrays | None
    metrics: dict[str, float]
    error: str | None
    detail: str | None = None
    status: str | None = None  # no update: "raised", "killed", "timeout", "crashed"
    fault: str | None = None  # the fault injected on purpose, if any
    kernels: str = ""  # the kernels of the worker that ran it: "numba" or "numpy"
    worker_rss: int = 0  # that worker's RSS when it was ready, before any device
