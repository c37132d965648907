"""Convolutions rebuilt before backward instead of kept (issue 13, item 1; stepplan.py).

A conv block (the conv and the in-place layers on its output) chosen for rematerialization
lives from its forward to its last forward reader, and again from its first backward use,
when the conv and its in-place layers replay from the conv's input (kept anyway for dW).
Checked: the step's numbers are the plain run's, bit for bit (poisoned pools, with and
without swap, fused and not); every tensor a replay reads or writes is planned live at the
replay; the pool shrinks; the cap fit takes the fewest rebuilt convs that fit, best bytes
per FLOP first, and only where nothing else fits at that micro-batch.
"""

from __future__ import annotations

import numpy as np
import pytest

import device_runtime as dr
from device_runtime import rss
from device_runtime.cap.fit import fit_to_cap
from device_runtime.data import synthetic_classification
from device_runtime.layers.base import F
from device_runtime.model import Model
from device_runtime.planner import check_plan
from device_runtime.planner.layout import pieces
from device_runtime.spec import layer
from device_runtime.stepplan import StepPlan

F32 = np.float32


def _convnet(batch: int, stages: int = 2, per_stage: int = 4) -> Model:
    """A small VGG: stages of same-shape 3x3 convs with ReLU, then a max pool."""
    specs = [layer("input", "in", input_shape="3:32:32")]
    for s in range(stages):
        for j in range(per_stage):
            specs.append(layer("conv2d", f"c{s}_{j}", filters=16 * (s + 1), kernel_size="3,3",
                               padding="same", activation="relu"))
        specs.append(layer("pooling2d", f"p{s}", pooling="max", pool_size="2,2",
                           stride="2,2"))
    specs += [layer("flatten", "flat"), layer("fully_connected", "fc", unit=10)]
    m = Model(specs, loss="cross_softmax", seed=4)
    m.compile(batch_size=batch, optimizer="sgd", lr=0.05, momentum=0.9)
    return m


def _heads(m: Model) -> frozenset[str]:
    g = m._graph(m.batch_size, backward=True, with_loss=True)
    return frozenset(n.name for n in g.nodes if n.layer.rematerializable)


def _train(m: Model, remat: frozenset[str], swap: str = "off", steps: int = 3):
    x, y = synthetic_classification((3, 32, 32), 10, 2 * m.batch_size, seed=8)
    m.remat, m.swap = remat, swap
    h = m.fit(x, y, steps=steps, shuffle=False)
    st = m.train_executor.step
    out = (m.get_weights(), h.losses, st)
    m.close()
    return out


@pytest.mark.parametrize("swap", ["off", "on"])
@pytest.mark.parametrize("fuse", [True, False])
def test_rebuilt_convs_change_no_bit(monkeypatch, swap: str, fuse: bool) -> None:
    # Prepare: poisoned pools (a read of anything unwritten is NaN), the same model twice
    monkeypatch.setattr("device_runtime.executor.POISON", True)
    runs = {}
    for remat in (False, True):
        m = _convnet(16)
        m.fuse_apply = fuse
        # Execute: three SGD steps with momentum, every conv a candidate or none
        runs[remat] = _train(m, _heads(m) if remat else frozenset(), swap)
    (w0, l0, s0), (w1, l1, s1) = runs[False], runs[True]
    # Assert: convs were rebuilt, the pool is smaller, and every number is the same bits
    rebuilt = s1.remat_ranking()
    assert len(rebuilt) >= 2 and not s0.remat_ranking(), rebuilt
    assert s1.layout([])[0].pool_bytes < s0.layout([])[0].pool_bytes
    assert l0 == l1 and all(np.isfinite(l1))
    for k in w0:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)


def test_a_replay_finds_all_it_touches_live() -> None:
    # Prepare: the plan with every conv a candidate
    m = _convnet(16)
    g = m._graph(16, backward=True, with_loss=True)
    st = StepPlan(g, m.planner, remat=_heads(m))
    assert st.remat_ranking()
    check_plan(st.sizes, st.intervals, st.plan, st.alignment)

    def live(group: int, order: int) -> bool:
        return any(s <= order < e for s, e in pieces(st.intervals[group]))

    # Execute / Assert: at each replay, the inputs of its layers and their forward scratch
    # are live; the rebuilt block is not live between its forward and its rebuild; and no
    # rebuilt block feeds another's replay (its input is kept, not rebuilt later)
    for grp, (need, chain, iv) in st.recomputed.items():
        assert iv[0][1] < need and not live(grp, iv[0][1]) and live(grp, need)
        for lay in chain:
            node = g.by_name[lay.name]
            for ref in node.inputs:
                p = st.group(st.out_rec[ref])
                if p != grp:
                    assert live(p, need), (lay.name, ref)
                    assert p not in st.recomputed or st.recomputed[p][0] <= need
            for t in lay.tensors:
                r = st.own_rec.get((lay.name, t.name))
                if r is not None and node.orders[F] in st.records[r].uses:
                    assert live(st.group(r), need), (lay.name, t.name)


def test_ranking_is_bytes_times_idle_orders_per_flop() -> None:
    m = _convnet(16)
    st = StepPlan(m._graph(16, backward=True, with_loss=True), m.planner, remat=_heads(m))
    by_head = {chain[0].name: (g, need, iv) for g, (need, chain, iv) in st.recomputed.items()}
    score = [st.sizes[g] * (need - iv[0][1]) / by_head_flops
             for name in st.remat_ranking()
             for g, need, iv in [by_head[name]]
             for by_head_flops in [st.graph.by_name[name].layer.replay_flops()]]
    assert len(score) >= 2 and score == sorted(score, reverse=True)
    # a conv's replay costs its forward's multiply-adds, twice
    lay = st.graph.by_name["c0_0"].layer
    assert lay.replay_flops() == 2 * 16 * (3 * 9) * (32 * 32) * 16


def _fit(m: Model, cap_over: int, remat: bool = True):
    trainable = sum(p.size for p in m.weights.params.values() if p.trainable)
    return fit_to_cap(lambda b, t: m._graph(b, backward=True, with_loss=True, conv_tile=t),
                      m.planner, m.batch_size, 10**9 + cap_over, 10**9, 0, 4 * trainable,
                      "off", margin=0, params=m._trainable_sizes(), remat=remat)


def test_cap_fit_rebuilds_the_fewest_convs_that_fit_before_micro_batches() -> None:
    # Prepare: the unswapped pools with no conv rebuilt and with each prefix of the ranking
    # (not monotone: a rebuild's scratch, and the rebuilds it pulls earlier, live at its
    # replay)
    m = _convnet(16)
    g = m._graph(16, backward=True, with_loss=True)
    plain = StepPlan(g, m.planner).plan.pool_bytes
    ranking = StepPlan(g, m.planner, remat=_heads(m)).remat_ranking()
    pools = [StepPlan(g, m.planner, remat=ranking[:k]).plan.pool_bytes
             for k in range(1, len(ranking) + 1)]
    assert len(ranking) >= 2 and min(pools) < plain, (pools, plain)
    # Execute / Assert: room for the plain pool: nothing rebuilt; for a prefix's pool: the
    # shortest prefix that fits in it, at the full batch
    assert _fit(m, plain).remat == []
    for room in sorted(set(pools)):
        if room >= plain:
            continue
        k = next(k for k, p in enumerate(pools, 1) if p <= room)
        d = _fit(m, room)
        assert d.batch == 16 and d.remat == sorted(ranking[:k]) and d.pool_bytes <= room
    # without rematerialization the smallest of them means micro-batches
    assert _fit(m, min(pools), remat=False).batch < 16


def test_capped_run_with_rebuilt_convs_trains_the_plain_numbers() -> None:
    # Prepare: vgg16's unswapped pools with no conv rebuilt and with every candidate, and
    # a cap (swap off) with room for the second and 5 MiB more, short of the first; the
    # baseline is given, 64 MiB above this process's RSS, so the guard never trips
    x, y = synthetic_classification((3, 32, 32), 10, 64, seed=8)
    plain = dr.build("vgg16", seed=2)
    plain.compile(batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9)
    g = plain._graph(32, backward=True, with_loss=True)
    heads = frozenset(n.name for n in g.nodes if n.layer.rematerializable)
    pools = [StepPlan(g, plain.planner, remat=r).plan.pool_bytes for r in ((), heads)]
    assert pools[1] + (5 << 20) < pools[0], pools
    h0 = plain.fit(x, y, steps=2, shuffle=False)
    w0 = plain.get_weights()
    state = plain.optimizer.state_bytes
    plain.close()
    base = rss.current_rss() + (64 << 20)
    m = dr.build("vgg16", seed=2)
    m.compile(batch_size=32, optimizer="sgd", lr=0.05, momentum=0.9, swap="off",
              ram_cap=base + state + pools[1] + (5 << 20), baseline_rss=base)
    d = m.decision
    assert d is not None and d.margin_bytes <= 5 << 20 and d.batch == 32 and d.remat, d
    # Execute: train under that cap
    h1 = m.fit(x, y, steps=2, shuffle=False)
    w1 = m.get_weights()
    report = dr.report.memory(m)
    m.close()
    # Assert: the plain run's bits, under the cap, with the rebuilt convs reported
    assert report["remat"] == d.remat and report["micro_batch"] == 32
    assert not report["cap_exceeded"]
    assert h0.losses == h1.losses
    for k in w0:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)


def test_residual_net_rebuilds_convs_under_batch_norm_bit_identically(monkeypatch) -> None:
    # Prepare: resnet18 (conv -> batch norm -> ReLU: the norm's output is rebuilt cheaply
    # from the conv's output, so a rebuilt conv is rebuilt earlier, at the norm's replay)
    monkeypatch.setattr("device_runtime.executor.POISON", True)
    x, y = synthetic_classification((3, 32, 32), 10, 16, seed=8)
    runs = {}
    for remat in (False, True):
        m = dr.build("resnet18", seed=2)
        m.compile(batch_size=8, optimizer="sgd", lr=0.05, momentum=0.9)
        m.remat = _heads(m) if remat else frozenset()
        # Execute: two steps
        h = m.fit(x, y, steps=2, shuffle=False)
        st = m.train_executor.step
        runs[remat] = (m.get_weights(), h.losses, st)
        m.close()
    (w0, l0, _), (w1, l1, st) = runs[False], runs[True]
    # Assert: convs rebuilt, some at a norm's replay (before their own first backward
    # use), the plain run's bits
    rebuilt = {chain[0].name: (g, need) for g, (need, chain, _) in st.recomputed.items()}
    convs = [n for n in st.remat_ranking() if n in rebuilt]
    assert convs
    pulled = [n for n in convs
              if rebuilt[n][1] < [u for u in st.group_uses[rebuilt[n][0]]
                                  if u >= len(st.graph.nodes)][0]]
    assert pulled, convs
    assert l0 == l1 and all(np.isfinite(l1))
    for k in w0:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)
