"""Memory planner: every strategy through the same cases, invariants over random cases."""

from __future__ import annotations

import random

import numpy as np
import pytest

from device_runtime.planner import (
    DEFAULT_STRATEGY,
    STRATEGIES,
    Plan,
    align,
    check_plan,
    lower_bound,
    plan_layout,
)

ALL = sorted(STRATEGIES)


def pool_of(sizes, intervals, strategy, alignment=64):
    """Plan, check the plan, return its pool size."""
    plan = plan_layout(sizes, intervals, strategy, alignment)
    check_plan(sizes, intervals, plan, alignment)
    assert plan.strategy == strategy
    return plan.pool_bytes


# ---------------------------------------------------------------- basics


def test_public_api():
    assert set(STRATEGIES) == {"naive", "v1", "best_fit"}
    assert DEFAULT_STRATEGY == "best_fit"
    assert align(0) == 0 and align(1) == 64 and align(64) == 64 and align(65) == 128
    assert align(10, 8) == 16 and align(7, 1) == 7


def test_lower_bound_by_hand():
    # [0,2),[1,3),[2,4) of 100 B -> 128 B each; at most two live at once
    assert lower_bound([100] * 3, [(0, 2), (1, 3), (2, 4)]) == 256
    # half-open: [0,1) and [1,2) never live together
    assert lower_bound([64, 64], [(0, 1), (1, 2)]) == 64
    assert lower_bound([], []) == 0
    assert lower_bound([0, 10], [(0, 5), (0, 5)], alignment=1) == 10


# ------------------------------------------- same cases for every strategy
# (sizes, intervals, {strategy: expected pool}, lower bound); pools worked out by hand,
# alignment 64.
CASES = {
    # three 100 B tensors -> 128 B each; [0,2) and [2,4) can share
    "chain": (
        [100, 100, 100], [(0, 2), (1, 3), (2, 4)],
        {"naive": 384, "v1": 256, "best_fit": 256}, 256,
    ),
    "full_overlap": (
        [64, 128, 192], [(0, 5), (0, 5), (0, 5)],
        {"naive": 384, "v1": 384, "best_fit": 384}, 384,
    ),
    # 128, 256, 320 B, one after another in time: all can start at 0
    "no_overlap": (
        [100, 200, 300], [(0, 1), (1, 2), (2, 3)],
        {"naive": 704, "v1": 320, "best_fit": 320}, 320,
    ),
    "partial_overlap": (
        [256, 64, 256], [(0, 3), (2, 5), (4, 6)],
        {"naive": 576, "v1": 320, "best_fit": 320}, 320,
    ),
    # a long-lived tensor with two short ones inside its lifetime, one after the other
    "nested": (
        [64, 128, 128], [(0, 10), (2, 4), (5, 8)],
        {"naive": 320, "v1": 192, "best_fit": 192}, 192,
    ),
    # v1 reuses only exact-size buried holes: C (64 B) cannot take A's 128 B hole
    "v1_hole_mismatch": (
        [128, 64, 64], [(0, 2), (1, 10), (2, 4)],
        {"naive": 256, "v1": 256, "best_fit": 192}, 192,
    ),
    "single": ([100], [(3, 7)], {"naive": 128, "v1": 128, "best_fit": 128}, 128),
}


@pytest.mark.parametrize("strategy", ALL)
@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_cases(strategy, case):
    # Prepare
    sizes, intervals, expected, bound = CASES[case]
    # Execute
    pool = pool_of(sizes, intervals, strategy)
    # Assert
    assert lower_bound(sizes, intervals) == bound
    assert pool == expected[strategy]


@pytest.mark.parametrize("strategy", ALL)
def test_zero_size_tensors_take_nothing(strategy):
    # empty tensors may carry any interval, even an empty one
    sizes = [0, 100, 0, 100]
    intervals = [(5, 5), (0, 2), (0, 0), (2, 4)]
    plan = plan_layout(sizes, intervals, strategy)
    check_plan(sizes, intervals, plan)
    assert plan.offsets[0] == 0 and plan.offsets[2] == 0
    assert plan.pool_bytes == (256 if strategy == "naive" else 128)


@pytest.mark.parametrize("strategy", ALL)
def test_nothing_to_place(strategy):
    assert plan_layout([], [], strategy) == Plan(offsets=(), pool_bytes=0, strategy=strategy)
    assert plan_layout([0, 0], [(0, 1), (3, 2)], strategy).pool_bytes == 0


@pytest.mark.parametrize("strategy", ALL)
def test_alignment_is_honoured(strategy):
    sizes, intervals = [1, 1, 1], [(0, 3), (0, 3), (0, 3)]
    for alignment, pool in [(1, 3), (8, 24), (256, 768)]:
        plan = plan_layout(sizes, intervals, strategy, alignment)
        check_plan(sizes, intervals, plan, alignment)
        assert plan.pool_bytes == pool


def test_naive_lays_tensors_in_input_order():
    plan = plan_layout([100, 64, 1], [(0, 1), (0, 1), (5, 6)], "naive")
    assert plan.offsets == (0, 128, 192) and plan.pool_bytes == 256


def test_default_strategy_is_best_fit():
    sizes, intervals, expected, _ = CASES["v1_hole_mismatch"]
    plan = plan_layout(sizes, intervals)
    assert plan.strategy == "best_fit" and plan.pool_bytes == expected["best_fit"]


# --------------------------------------------------- invariants, random cases


def random_case(rng: random.Random):
    """A random interval set: mixed sizes (some equal, some empty), mixed lifetimes."""
    n = rng.randint(1, 40)
    horizon = rng.randint(1, 30)
    sizes, intervals = [], []
    for _ in range(n):
        start = rng.randrange(horizon)
        intervals.append((start, start + rng.randint(1, horizon)))
        # equal sizes exercise v1's exact-size reuse; 0 exercises the empty path
        sizes.append(rng.choice([0, 64, 128, 1000, rng.randint(1, 5000), rng.randint(1, 1 << 20)]))
    return sizes, intervals


@pytest.mark.parametrize("seed", range(5))
def test_random_invariants(seed):
    # 5 seeds x 500 cases x 3 strategies = 7,500 checked plans
    rng = random.Random(seed)
    for _ in range(500):
        sizes, intervals = random_case(rng)
        alignment = rng.choice([1, 8, 64, 256])
        bound = lower_bound(sizes, intervals, alignment)
        total = sum(align(s, alignment) for s in sizes)
        pools = {}
        for strategy in ALL:
            plan = plan_layout(sizes, intervals, strategy, alignment)
            # no live overlap, fits in pool, aligned offsets
            check_plan(sizes, intervals, plan, alignment)
            assert bound <= plan.pool_bytes <= total, (strategy, sizes, intervals)
            pools[strategy] = plan.pool_bytes
        assert pools["naive"] == total
        # best-fit never places a tensor above everything placed before it
        assert pools["best_fit"] <= pools["naive"]


@pytest.mark.parametrize("strategy", ALL)
def test_random_large(strategy):
    # a few bigger sets, where gaps and buried holes are many
    rng = random.Random(100)
    for _ in range(3):
        n = 400
        sizes = [rng.randint(1, 1 << 16) for _ in range(n)]
        starts = [rng.randrange(300) for _ in range(n)]
        intervals = [(s, s + rng.randint(1, 40)) for s in starts]
        plan = plan_layout(sizes, intervals, strategy)
        check_plan(sizes, intervals, plan)
        assert plan.pool_bytes >= lower_bound(sizes, intervals)


# ------------------------------------------------- check_plan must be able to fail


def test_check_plan_catches_live_overlap():
    sizes, intervals = [100, 100, 100], [(0, 2), (1, 3), (2, 4)]
    good = plan_layout(sizes, intervals, "best_fit")
    check_plan(sizes, intervals, good)
    # tensors 1 and 2 are alive together at order 2; give them the same bytes
    broken = Plan(offsets=(0, 128, 128), pool_bytes=256, strategy="broken")
    with pytest.raises(AssertionError, match=r"tensors 1 and 2"):
        check_plan(sizes, intervals, broken)


def test_check_plan_allows_sharing_across_half_open_boundary():
    # [0,2) ends where [2,4) starts: the same bytes are fine
    check_plan([64, 64], [(0, 2), (2, 4)], Plan(offsets=(0, 0), pool_bytes=64, strategy="x"))
    # partial byte overlap of live tensors is caught too
    with pytest.raises(AssertionError, match=r"tensors 0 and 1"):
        broken = Plan(offsets=(0, 64), pool_bytes=192, strategy="x")
        check_plan([128, 128], [(0, 2), (1, 4)], broken)


def test_check_plan_catches_overflow_and_misalignment():
    sizes, intervals = [100, 100], [(0, 2), (0, 2)]
    with pytest.raises(AssertionError, match=r"tensor 1 .*overflows"):
        check_plan(sizes, intervals, Plan(offsets=(0, 128), pool_bytes=200, strategy="x"))
    with pytest.raises(AssertionError, match=r"tensor 1 offset 130"):
        check_plan(sizes, intervals, Plan(offsets=(0, 130), pool_bytes=512, strategy="x"))
    with pytest.raises(AssertionError, match=r"2 offsets for 3 tensors"):
        check_plan([1, 1, 1], [(0, 1)] * 3, Plan(offsets=(0, 64), pool_bytes=128, strategy="x"))


# ----------------------------------------------- quality on a training step


def training_step(n_layers: int, seed: int):
    """Intervals of one training step of a sequential net.

    Forward of layer i at order i; its backward at order b_i = 2L - i. The activation
    of layer i lives from its forward until its backward use, [i, b_i + 1); the
    derivative flowing into layer i is made by layer i+1's backward and consumed by
    layer i's, [b_i - 1, b_i + 1); the weight gradient lives only at its backward
    order, [b_i, b_i + 1) (applied right away); weights live all step.
    """
    rng = random.Random(seed)
    end = 2 * n_layers + 1
    sizes, intervals = [], []
    for i in range(n_layers):
        b = 2 * n_layers - i
        act = rng.randint(1, 64) * rng.choice([100, 1000, 4000])
        sizes += [act, act]
        intervals += [(i, b + 1), (b - 1, b + 1)]
        params = rng.randint(0, 200) * 97  # some layers (activations, pooling) have none
        if params:
            sizes += [params, params]
            intervals += [(b, b + 1), (0, end)]
    return sizes, intervals


@pytest.mark.parametrize("seed", range(5))
def test_training_step_quality(seed):
    # Prepare
    sizes, intervals = training_step(n_layers=30, seed=seed)
    bound = lower_bound(sizes, intervals)
    # Execute
    pools = {s: pool_of(sizes, intervals, s) for s in ALL}
    # Assert
    ratios = {s: round(p / bound, 4) for s, p in pools.items()}
    print(f"seed {seed}: pool / lower bound = {ratios}")
    assert pools["best_fit"] <= 1.05 * bound, ratios
    assert pools["naive"] >= pools["best_fit"], ratios


# ----------------------------------------------------------- input validation


def test_rejects_length_mismatch():
    with pytest.raises(ValueError, match=r"2 sizes but 1 intervals"):
        plan_layout([1, 2], [(0, 1)])


def test_rejects_negative_size():
    with pytest.raises(ValueError, match=r"tensor 2 .*-5"):
        plan_layout([1, 2, -5], [(0, 1)] * 3)


@pytest.mark.parametrize("bad", [(3, 3), (4, 2)])
def test_rejects_empty_interval(bad):
    with pytest.raises(ValueError, match=rf"tensor 1 .*\[{bad[0]}, {bad[1]}\)"):
        plan_layout([1, 2, 3], [(0, 1), bad, (0, 1)])


def test_rejects_unknown_strategy():
    with pytest.raises(ValueError, match=r"'v9'.*naive, v1, best_fit"):
        plan_layout([1], [(0, 1)], strategy="v9")


# --------------------------------------------------------------------------- stretches
def test_tensor_with_two_stretches_lends_its_gap():
    # Prepare: tensor 0 is swapped out between orders 2 and 8; tensor 1 lives in the gap.
    sizes = [128, 128, 128]
    intervals = [[(0, 2), (8, 10)], (2, 8), (1, 9)]
    # Execute
    plan = plan_layout(sizes, intervals, "best_fit")
    # Assert: tensors 0 and 1 share bytes, the pool equals the live-bytes bound (256)
    check_plan(sizes, intervals, plan)
    assert plan.offsets[0] == plan.offsets[1]
    assert plan.pool_bytes == lower_bound(sizes, intervals) == 256
    # strategies that cannot use gaps see the hull [0, 10) and stay valid
    for strategy in ("naive", "v1"):
        check_plan(sizes, [(0, 10), (2, 8), (1, 9)], plan_layout(sizes, intervals, strategy))


def test_check_plan_catches_a_clash_in_a_second_stretch():
    sizes = [64, 64]
    intervals = [[(0, 2), (5, 7)], (6, 8)]
    bad = Plan(offsets=(0, 0), pool_bytes=64, strategy="hand")
    with pytest.raises(AssertionError, match="overlap"):
        check_plan(sizes, intervals, bad)


def test_overlapping_stretches_are_rejected():
    with pytest.raises(ValueError, match="tensor 0"):
        plan_layout([64], [[(0, 5), (3, 8)]])


@pytest.mark.parametrize("seed", range(3))
def test_random_multi_stretch_sets(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(300):
        n = int(rng.integers(1, 30))
        sizes, intervals = [], []
        for _ in range(n):
            sizes.append(int(rng.integers(1, 5000)))
            a = int(rng.integers(0, 40))
            b = a + int(rng.integers(1, 10))
            if rng.random() < 0.4:
                c = b + int(rng.integers(1, 20))
                intervals.append([(a, b), (c, c + int(rng.integers(1, 8)))])
            else:
                intervals.append((a, b))
        lb = lower_bound(sizes, intervals)
        for strategy in STRATEGIES:
            plan = plan_layout(sizes, intervals, strategy)
            check_plan(sizes, intervals, plan)
            assert plan.pool_bytes >= lb
