"""A warm worker's memory between device tasks: what one device leaves in the process must
not be charged to the next one (issue 14: a device's measured memory independent of what
its worker ran before).

In worker isolation a device runs inside the long-lived worker, whose RSS is what its cap
is checked against (the runtime's own guard, the task's window, the kernel's cgroup limit:
the process's real RSS, never an estimate of it). The runtime keeps compiled models per
process (``device_runtime.device.trainers``: up to 16, each with its planned pool, plus
every model's seeded initial weights), and the numpy kernels keep scratch buffers; all of
it stays resident after the device that made it is gone. With a 3072-1024-10 MLP (12 MiB
of weights) a device's baseline grew from 83 MiB on a fresh worker to 371 MiB once 16
trainers of other caps were kept. So before a capped task the worker drops what that device
cannot use (:func:`forget_others`): other models, trainers compiled for another cap, every
model's initial weights but this one's, the scratch buffers, and cyclic garbage, then gives
free heap pages back (``malloc_trim``). What stays is what the device would hold in a
process of its own that ran its model before: trainers of its model and cap (reused: a
task that compiles that MLP took 2.2-2.5x one that reuses it), its inference model, its
initial weights. Nothing is subtracted from what is measured: the cap stays a cap on the
worker's real RSS, which now holds no more than that device's own.

:func:`fix_mmap_threshold` keeps freed large blocks from staying resident (glibc's dynamic
threshold), and :func:`warm_device_program` runs one tiny capped device once when the worker
starts, so that the first real device does not run with fewer pages mapped (code, lazily
imported modules) than every later one (its baseline read 1.7 MiB lower before). What is
left: OpenBLAS's per-thread buffers, touched further by the first products of a larger size
(the 3072-1024-10 MLP's first task on a fresh worker reads ~0.8 MiB less baseline, inside
the same peak).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

M_MMAP_THRESHOLD = -3  # mallopt's parameter (glibc's malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept fixed

WARM_MODEL = json.dumps([
    {"type": "input", "name": "in", "input_shape": "8"},
    {"type": "fully_connected", "name": "fc1", "unit": 16, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 3},
])


def fix_mmap_threshold() -> bool:
    """Keep glibc's mmap threshold at its default (128 KiB) for good: every block at least
    that large is mapped on its own and unmapped when freed. Left dynamic, glibc raises
    the threshold to the size of the largest mapped block freed so far (up to 32 MiB), so
    that once a device has freed its weights, blocks of that size come from the heap and
    stay resident after they are freed, until a trim: a 3072-1024-10 MLP's training peak
    read 122 MiB that way, 109 MiB with the threshold fixed, and how much dead heap a
    device saw depended on the devices before it. False where malloc is not glibc's."""
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def forget_others(config: Mapping[str, Any], ram_cap: int | None) -> int:
    """Out of this process whatever a device of ``config`` capped at ``ram_cap`` cannot
    use (see the module docstring), free heap pages given back; entries dropped."""
    from device_runtime import rss
    from device_runtime.device import DeviceConfig, keep_only
    from device_runtime.kernels.lean import clear_scratch

    try:
        cfg = DeviceConfig.from_mapping(config)
        dropped = keep_only(cfg.model, cfg.model_seed, ram_cap)
    except Exception:  # noqa: BLE001 - a bad config fails in the task itself, with its reason
        dropped = keep_only("", -1, None, trainers=False)
    clear_scratch()
    if dropped:  # the dropped models' cycles may have been frozen by settle(): all of it
        settle()
    rss.release_heap()  # a collection frees the rest of the garbage; then malloc_trim
    return dropped


def settle() -> None:
    """Put what the worker holds now (the store's index, a round's payload, the trainers
    kept) out of the collector's sight, once per message that brings it, so that the full
    collection before each capped task scans only what devices made since: that
    collection took ~0.45 ms of a ~2 ms device-round in ``nnfleet bench fleet``. What was
    frozen before is unfrozen and collected first, so garbage frozen earlier (the last
    round's payload) is freed here, not kept for good; forget_others settles too when it
    drops models, which may have been frozen with their cycles."""
    import gc

    gc.unfreeze()
    gc.collect()
    gc.freeze()


def warm_device_program() -> None:
    """Run one tiny device (capped: the cap's planning and guard, evaluation, the reply's
    serialization) and forget it: the pages every device maps are mapped from now on."""
    import gc

    import numpy as np

    from device_runtime import rss
    from device_runtime.device import (
        DeviceData,
        DeviceSettings,
        DeviceState,
        initial_weights,
        keep_only,
        run_device,
    )
    from device_runtime.kernels.lean import clear_scratch

    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 8)).astype(np.float32)
    y = rng.integers(0, 3, 24).astype(np.int64)
    state = DeviceState(0, DeviceData(x[:16], y[:16], x[16:], y[16:]),
                        DeviceSettings(ram_cap=rss.current_rss() + (256 << 20)), {}, {})
    config = {"model": WARM_MODEL, "lr": 0.1, "batch-size": 8, "local-epochs": 1, "seed": 0,
              "server-round": 1}
    out, _, _ = run_device(state, initial_weights(WARM_MODEL, 0), config)
    from experiments.fleet.worker import npy_bytes

    npy_bytes(out)
    del out
    keep_only("", -1, None, trainers=False)
    clear_scratch()
    rss.release_heap()
    # what the worker holds from now on (modules, kernels) is never garbage: out of the
    # collector's sight, so that forget_others' collection before each capped task scans
    # only what devices made since (~1 ms, not ~40 ms over 26,000 objects at load 12)
    gc.freeze()
