"""device_runtime/threads.py: BLAS threads chosen from the cores, the override switch, the
step-time tuner (``NNFLEET_THREADS=auto``), and that the default count is fixed for the
whole process (the count can move the last bits, so it must not change under a run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import device_runtime as dr
from device_runtime import threads
from device_runtime.data import synthetic_classification

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLEAN = {k: v for k, v in os.environ.items()
         if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "NNFLEET_THREADS")}
PROBE = ("import json, os, sys; {pre}from device_runtime import threads; "
         "import device_runtime.kernels.conv; print(json.dumps(threads.describe()))")


def _child(env: dict[str, str], pre: str = "") -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(pre=pre)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_threads_follow_cores_switch_and_user_variable() -> None:
    env = dict(CLEAN, PYTHONPATH=ROOT)
    cores = len(os.sched_getaffinity(0))
    auto = _child(env)
    assert auto["cores"] == cores and auto["set_by"] == "cores"
    assert auto["tuned"] == [] and not auto["tuner"]  # fixed by default: no tuner
    if auto["blas"] is not None:  # OpenBLAS: the count read back from the library itself
        assert auto["blas_threads"] == cores
    if cores > 1:
        tuned = _child(dict(env, NNFLEET_THREADS="auto"))
        assert tuned["set_by"] == "auto" and tuned["tuner"]
    fixed = _child(dict(env, NNFLEET_THREADS="1"))
    assert fixed["set_by"] == "NNFLEET_THREADS" and fixed["tuned"] == []
    user = _child(dict(env, OPENBLAS_NUM_THREADS="1"))
    assert user["set_by"] == "OPENBLAS_NUM_THREADS"
    if auto["blas"] is not None:
        assert fixed["blas_threads"] == 1 and user["blas_threads"] == 1


def test_affinity_mask_limits_the_count() -> None:
    # a process pinned to one core (taskset, a cgroup's cpuset) gets one BLAS thread
    got = _child(dict(CLEAN, PYTHONPATH=ROOT), pre="os.sched_setaffinity(0, {0}); ")
    assert got["cores"] == 1 and got["set_by"] == "cores"
    if got["blas"] is not None:
        assert got["blas_threads"] == 1


def test_bad_switch_value_names_the_variable() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE.format(pre="")], cwd=ROOT,
                         env=dict(CLEAN, PYTHONPATH=ROOT, NNFLEET_THREADS="two"),
                         capture_output=True, text=True)
    last = out.stderr.strip().splitlines()[-1]
    assert out.returncode != 0 and "NNFLEET_THREADS" in last and "'two'" in last


class FakeClock:
    """Step durations scripted per thread count: the tuner sees what it would measure."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost, self.now, self.n = cost, 0.0, 0

    def __call__(self) -> float:
        return self.now

    def set(self, n: int) -> None:
        self.n = n

    def step(self, tuner: threads.Tuner) -> None:
        tuner()  # before the step, as Model.train_step calls its hooks
        self.now += self.cost[self.n]


@pytest.mark.parametrize("cost,best", [({2: 1.0, 1: 1.7}, 2), ({2: 8.0, 1: 1.0}, 1)])
def test_tuner_keeps_the_faster_count_and_reprobes(cost: dict[int, float], best: int) -> None:
    clock = FakeClock(cost)
    t = threads.Tuner([2, 1], setter=clock.set, clock=clock)
    assert clock.n == 2
    for _ in range(threads.WARM + 2 * threads.PROBE + 2):
        clock.step(t)
    assert t.choices == [best] and clock.n == best
    # the load changes: the other count is now the faster one; the next probe finds it
    clock.cost = {2: cost[1], 1: cost[2]}
    for _ in range(threads.HOLD + 2 * threads.PROBE + 1):
        clock.step(t)
    assert t.choices[-1] == 3 - best and clock.n == 3 - best


def test_tuner_probes_less_often_on_a_steady_machine() -> None:
    clock = FakeClock({2: 1.0, 1: 1.5})
    t = threads.Tuner([2, 1], setter=clock.set, clock=clock)
    for _ in range(2000):
        clock.step(t)
    assert set(t.choices) == {2}
    assert t.hold_len == threads.MAX_HOLD
    # decisions: every probe costs PROBE steps on the slower count; few of them
    assert len(t.choices) < 10


def test_default_count_holds_through_training() -> None:
    # no hook changes the count under a run: training twice gives the same bits
    if threads.blas_core() is None:
        pytest.skip("not OpenBLAS: no thread count to read")
    before = threads.blas_threads()
    out = []
    for _ in range(2):
        m = dr.build("mlp", seed=1)
        m.compile(batch_size=8, optimizer="sgd", lr=0.01, momentum=0.9)
        x, y = synthetic_classification(m.input_shape, 10, 40, seed=2)
        m.fit(x, y, steps=12, seed=3)
        out.append(m.get_weights())
        assert threads.blas_threads() == before
    for k in out[0]:
        assert np.array_equal(out[0][k], out[1][k]), k
