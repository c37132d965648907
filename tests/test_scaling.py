"""Planning grows linearly with the number of layers (an INI of 8,000 identity layers took
109 s when reference lookups were quadratic). Measured as work, not time: the number of
Python function calls that building and planning make, which does not depend on machine
load (cProfile counts them exactly)."""

from __future__ import annotations

import cProfile
import pstats

import device_runtime as dr


def _chain(n: int) -> list:
    specs = [dr.layer("input", "in", input_shape="1:1:8")]
    specs += [dr.layer("identity", f"id{i}") for i in range(n)]
    specs += [dr.layer("fully_connected", "out", unit=2)]
    return specs


def _calls(n: int) -> int:
    prof = cProfile.Profile()
    prof.enable()
    m = dr.Model(_chain(n), loss="mse")
    m.compile(batch_size=4, optimizer="sgd", lr=0.1)
    plan = m.plan()
    prof.disable()
    assert plan["pool_bytes"] > 0
    return int(pstats.Stats(prof).total_calls)


def test_building_and_planning_work_is_linear_in_the_layers():
    small, large = _calls(500), _calls(4000)
    # 8x the layers: linear work is ~8x the calls, quadratic 64x; allow what a
    # log factor or fixed costs add
    assert large < 12 * small, (small, large)
