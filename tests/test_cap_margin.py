"""The cap fit's margin per micro-batch (issue 13, item 4; device_runtime/cap/fit.py).

At the full batch the fit keeps MARGIN_BYTES (or twice the measured unplanned RSS, if
more); at one sample, what the batch-1 warm-up measured (at least MIN_MARGIN_BYTES); in
proportion between. Without a measurement it keeps the full margin everywhere.
"""

from __future__ import annotations

import numpy as np

import device_runtime as dr
from device_runtime.cap.fit import MARGIN_BYTES, MIN_MARGIN_BYTES, batch_margin, fit_to_cap
from device_runtime.stepplan import StepPlan


def test_batch_margin_runs_from_the_measured_one_to_the_full_one() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        batch = int(rng.integers(1, 129))
        margin = int(rng.integers(1, 8 << 20))
        unplanned = int(rng.integers(0, 3 << 20))
        got = [batch_margin(margin, unplanned, b, batch) for b in range(1, batch + 1)]
        small = max(MIN_MARGIN_BYTES, 2 * unplanned)
        assert got[-1] == margin  # the full batch keeps the full margin
        assert got[0] == (min(small, margin) if batch > 1 else margin)
        assert all(a <= b for a, b in zip(got, got[1:]))  # never less at a larger batch
        assert all(g >= min(small, margin) for g in got)
        assert [batch_margin(margin, None, b, batch) for b in (1, batch)] == [margin, margin]


def test_fit_takes_one_sample_with_the_small_margin_where_only_it_fits() -> None:
    # Prepare: vgg16's micro-batch-1 floor, and a budget that fits it with the margin of
    # a measured 0.1 MiB step but not with the full 2 MiB one
    m = dr.build("vgg16")
    m.compile(batch_size=32, optimizer="sgd")
    params = m._trainable_sizes()

    def make(b, tile=0):
        return m._graph(b, backward=True, with_loss=True, conv_tile=tile)

    from device_runtime.accumulate import BUFFER_BYTES
    floor1 = StepPlan(make(1, 1), m.planner, swap="on", lookahead=0).plan.pool_bytes
    floor2 = StepPlan(make(2, 1), m.planner, swap="on", lookahead=0).plan.pool_bytes
    cap, base = 1 << 30, (1 << 30) - floor1 - BUFFER_BYTES - MIN_MARGIN_BYTES - 4096
    assert floor2 + MIN_MARGIN_BYTES > floor1 + MIN_MARGIN_BYTES + 4096  # 2 does not fit
    # Execute
    d = fit_to_cap(make, m.planner, 32, cap, base, 0, 0, "on", lookahead=0, params=params,
                   unplanned=100 << 10)
    # Assert: one sample, the margin it kept, everything within the cap
    assert (d.batch, d.margin_bytes, d.batch_margin_bytes) == (1, MIN_MARGIN_BYTES,
                                                               MARGIN_BYTES)
    assert base + d.pool_bytes + d.extra_bytes + d.margin_bytes <= cap
    # and without a measurement the full margin refuses that cap
    try:
        fit_to_cap(make, m.planner, 32, cap, base, 0, 0, "on", lookahead=0, params=params)
    except dr.MemoryCapExceeded as e:
        assert e.needed > cap
    else:
        raise AssertionError("fitted without room for the full margin")
