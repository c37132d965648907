"""The worker's collector between device tasks (experiments/fleet/clean.py): settle()
freezes what the worker holds at a round's start, so that the collection before each
capped task scans only what devices made since, and never keeps garbage for good: cycles
frozen earlier are freed at the next settle, and a trainer that forget_others drops is
freed at once even when it was frozen with its cycles. Run in a child process: freezing is
process-wide."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import gc, weakref
import numpy as np
from device_runtime import rss
from device_runtime.device import DeviceData, DeviceSettings, DeviceState, initial_weights
from device_runtime.device import run_device
from device_runtime.device import trainers as T
from experiments.fleet.clean import WARM_MODEL, forget_others, settle

class Node:
    pass

# a held cycle leaves the collector's sight; once dropped, a plain collection cannot free
# it (frozen), the next settle does
held = Node(); held.me = held
junk = [Node() for _ in range(500)]
settle()
seen = {id(o) for o in gc.get_objects()}
assert id(held) not in seen and id(junk) not in seen, "held objects were not frozen"
w = weakref.ref(held)
del held
gc.collect()
assert w() is not None  # frozen garbage waits for the next settle
settle()
assert w() is None, "settle did not free garbage frozen earlier"

# a real capped device's trainer, frozen by a settle, then dropped by forget_others for a
# device of another cap: freed by forget_others itself
rng = np.random.default_rng(0)
x = rng.standard_normal((24, 8)).astype(np.float32)
y = rng.integers(0, 3, 24).astype(np.int64)
cap = rss.current_rss() + (256 << 20)
state = DeviceState(0, DeviceData(x[:16], y[:16], x[16:], y[16:]), DeviceSettings(ram_cap=cap),
                    {}, {})
config = {"model": WARM_MODEL, "lr": 0.1, "batch-size": 8, "local-epochs": 1, "seed": 0,
          "server-round": 1}
run_device(state, initial_weights(WARM_MODEL, 0), config)
kept = [weakref.ref(m) for k, m in T._TRAINERS.items() if len(k) == 8 and k[6] == cap]
assert kept and all(r() is not None for r in kept)  # the trainers of this cap
for r in kept:  # a cycle through each (refcounts alone would free them otherwise)
    r().loop = r()
settle()
assert forget_others(config, cap + (1 << 20)) > 0  # another cap: its trainers go
assert all(r() is None for r in kept), "a dropped trainer stayed in memory"
# without a drop, the collection sees only what was made since the settle
settle()
before = len(gc.get_objects())
assert forget_others(config, cap + (1 << 20)) == 0
print("ok", before)
"""


def test_settle_freezes_what_is_held_and_never_keeps_garbage():
    p = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT, NNFLEET_NO_NUMBA="1"))
    assert p.returncode == 0, p.stderr[-2000:]
    ok, before = p.stdout.split()
    assert ok == "ok"
    assert int(before) < 1000  # objects left in the collector's sight after a settle
