"""``nnfleet bench speed``: the profile adds up and names the operations; bad input is one
line. (The side-by-side timing itself is a benchmark, not a test: no time is asserted.)"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

import device_runtime as dr
from device_runtime.data import synthetic_classification
from experiments.bench.speed_profile import group, profile_steps

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_profile_kinds_add_up_and_do_not_change_the_numbers() -> None:
    runs = {}
    for profiled in (False, True):
        m = dr.build("lenet5", seed=1)
        m.compile(batch_size=4, optimizer="sgd", lr=0.01)
        x, y = synthetic_classification(m.input_shape, 10, 4, seed=2)
        m.fit(x, y, steps=1, shuffle=False)
        idx = np.arange(4, dtype=np.int64)
        if profiled:
            prof = profile_steps(m, lambda: m.train_step(idx), 2)
        else:
            for _ in range(3):
                m.train_step(idx)
        runs[profiled] = m.get_weights()
    for k in runs[False]:  # the timers wrap the kernels, they do not replace them
        assert np.array_equal(runs[False][k], runs[True][k]), k
    kinds = prof["kinds_ms"]
    total = prof["profiled_step_ms"]
    assert abs(sum(kinds.values()) - total) < 1e-6 * total + 1e-9
    for name in ("conv forward: gemm", "conv forward: im2col", "conv backward weights: gemm",
                 "conv backward data: col2im", "pool forward", "activation", "optimizer",
                 "matmul forward: gemm", "python overhead"):
        assert name in kinds, (name, sorted(kinds))
    assert all(v >= 0 for v in kinds.values())
    assert prof["calls"]["conv forward: gemm"] >= 2  # two convs, each one GEMM per chunk at least
    groups = group(kinds)
    assert abs(sum(groups.values()) - sum(kinds.values())) < 1e-9


def test_bad_model_is_one_line_and_nonzero() -> None:
    out = subprocess.run([sys.executable, "-m", "experiments.cli", "bench", "speed", "lenet7"],
                         cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "lenet7" in lines[0]
