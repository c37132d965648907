"""The executor: execution orders, in-place aliasing, planned pool, bit-identical runs."""

from __future__ import annotations

import numpy as np
import pytest

import device_runtime as dr
from device_runtime import Model, layer
from device_runtime.data import synthetic_classification
from device_runtime.layers.base import AG, CD, CG, F
from device_runtime.planner import check_plan


def _orders(m: Model) -> dict[str, dict[str, int]]:
    return {n.name: n.orders for n in m.train_executor.graph.nodes}


def _frozen_first():
    return Model([layer("input", "in", input_shape="4"),
                  layer("fully_connected", "frozen1", unit=5, trainable=False, activation="relu"),
                  layer("fully_connected", "fc2", unit=5, activation="relu"),
                  layer("fully_connected", "fc3", unit=3)])


def test_fused_layers_order_derivative_before_gradient():
    m = _frozen_first()
    m.compile(batch_size=2)
    o = _orders(m)
    assert set(o["fc3"]) == {F, CD, CG}
    assert o["fc3"][CD] < o["fc3"][CG]  # CD reads the weights before CG updates them
    assert set(o["fc2"]) == {F, CG}
    assert set(o["frozen1"]) == {F}
    assert not any(r.kind == "gradient" for r in m.train_executor.step.records)


def test_execution_orders_frozen_layers():
    # Prepare: a frozen first layer, a trainable head; whole gradients (no fusion).
    m = _frozen_first()
    m.fuse_apply = False
    m.compile(batch_size=2)
    o = _orders(m)
    # Execute / Assert: forward orders follow topological order ...
    names = [n.name for n in m.train_executor.graph.nodes]
    assert [o[n][F] for n in names] == list(range(len(names)))
    # ... the frozen layer has no CG/AG and, with nothing trainable upstream, no CD.
    assert set(o["frozen1"]) == {F}
    assert set(o["frozen1/activation_realized"]) == {F}
    assert set(o["fc2"]) == {F, CG, AG}  # its input derivative is not needed either
    assert set(o["fc3"]) == {F, CG, CD, AG}
    # Backward runs in reverse, CG before CD before AG for each node.
    assert o["fc3"][CG] < o["fc3"][CD] < o["fc3"][AG] < o["fc2"][CG]
    # The frozen layer keeps no gradient and no derivative tensors.
    kinds = {r.name: r.kind for r in m.train_executor.step.records}
    assert not any(k.startswith("frozen1:") and v in ("gradient", "derivative")
                   for k, v in kinds.items())


def test_frozen_layer_between_trainable_layers_gets_cd_only():
    m = Model([layer("input", "in", input_shape="4"),
               layer("fully_connected", "fc1", unit=5),
               layer("fully_connected", "mid", unit=5, trainable=False),
               layer("fully_connected", "fc3", unit=3)])
    m.compile(batch_size=2)
    assert set(_orders(m)["mid"]) == {F, CD}


def test_in_place_activation_and_batchnorm_share_memory():
    m = dr.build("resnet18")
    m.compile(batch_size=2)
    ex = m.train_executor.step
    group = {r.name: ex._find(i) for i, r in enumerate(ex.records)}
    # bn -> relu in one block (batch-norm keeps its input and recomputes its output
    # before backward); the derivative chain is in place all the way to the conv.
    assert group["bn0:out0"] == group["bn0/activation_realized:out0"]
    assert group["conv0:out0"] != group["bn0:out0"]
    assert group["conv0:dout0"] == group["bn0:dout0"] == group["bn0/activation_realized:dout0"]
    assert ex.group_of[group["bn0:out0"]] in ex.recomputed
    # without recompute, batch-norm writes its output over the conv output
    m2 = dr.build("resnet18")
    m2.recompute = False
    m2.compile(batch_size=2)
    ex2 = m2.train_executor.step
    g2 = {r.name: ex2._find(i) for i, r in enumerate(ex2.records)}
    assert g2["conv0:out0"] == g2["bn0:out0"] == g2["bn0/activation_realized:out0"]
    # flatten is a view of its input
    assert group["avgpool:out0"] == group["avgpool/flatten_realized:out0"]


def test_no_in_place_when_input_is_read_later():
    # sigmoid needs its output in backward: a batch-norm after it must not overwrite it.
    m = Model([layer("input", "in", input_shape="4"),
               layer("fully_connected", "fc1", unit=6, activation="sigmoid"),
               layer("batch_normalization", "bn"),
               layer("fully_connected", "fc2", unit=3)])
    m.compile(batch_size=4)
    ex = m.train_executor.step
    group = {r.name: ex._find(i) for i, r in enumerate(ex.records)}
    assert group["fc1:out0"] == group["fc1/activation_realized:out0"]
    assert group["bn:out0"] != group["fc1/activation_realized:out0"]


@pytest.mark.parametrize("name", sorted(dr.BUILTINS))
def test_plan_invariants_on_builtin_models(name):
    m = dr.build(name)
    m.compile(batch_size=8)
    ex = m.train_executor.step
    check_plan(ex.sizes, ex.intervals, ex.plan, ex.alignment)
    assert ex.plan.pool_bytes >= ex.lower_bound
    assert ex.plan.pool_bytes <= 1.05 * ex.lower_bound
    # every record's uses lie inside its block's interval
    for i, rec in enumerate(ex.records):
        lo, hi = ex.hulls[ex.group_of[ex._find(i)]]
        assert all(lo <= u < hi for u in rec.uses), rec.name


def test_gradient_clipping_extends_gradient_lifespans():
    specs = dr.models.mlp()
    m1 = Model(specs)
    m1.fuse_apply = False
    m1.compile(batch_size=4)
    m2 = Model(specs)
    m2.compile(batch_size=4, clip_grad_norm=1.0)
    def grad_intervals(m):
        ex = m.train_executor.step
        return [ex.hulls[ex.group_of[ex._find(i)]] for i, r in enumerate(ex.records)
                if r.kind == "gradient"]
    g1, g2 = grad_intervals(m1), grad_intervals(m2)
    # Without clipping gradients die right after their layer's update; with it they all
    # live until the first update, which comes after the last gradient is computed.
    assert max(b - a for a, b in g1) <= 3
    last_cg = max(a for a, _ in g2)
    assert all(b > last_cg for _, b in g2)
    assert m2.plan()["pool_bytes"] >= m1.plan()["pool_bytes"]


@pytest.mark.parametrize("name", sorted(dr.BUILTINS))
def test_planned_and_naive_runs_are_bit_identical(name, monkeypatch):
    # The pool is poisoned (NaN) so a read of a tensor nobody wrote shows up.
    monkeypatch.setattr("device_runtime.executor.POISON", True)
    batch = 4 if name in ("vgg16", "resnet18", "alexnet") else 8
    weights = {}
    for planner in ("naive", "best_fit", "v1"):
        m = dr.build(name, seed=1)
        m.compile(batch_size=batch, optimizer="adam" if name == "resnet18" else "sgd",
                  lr=1e-3 if name == "resnet18" else 0.01, planner=planner,
                  **({} if name == "resnet18" else {"momentum": 0.9}))
        x, y = synthetic_classification(m.input_shape, 10, batch * 5, seed=2)
        hist = m.fit(x, y, steps=20, seed=3)
        assert np.all(np.isfinite(hist.losses))
        weights[planner] = m.get_weights()
    for planner in ("best_fit", "v1"):
        for k, v in weights["naive"].items():
            assert np.array_equal(v, weights[planner][k]), f"{planner}: {k} differs from naive"


def test_weights_change_and_loss_falls():
    m = dr.build("lenet5")
    m.compile(batch_size=16, optimizer="sgd", lr=0.01, momentum=0.9)
    x, y = synthetic_classification(m.input_shape, 10, 256, seed=0)
    hist = m.fit(x, y, epochs=6)
    assert np.mean(hist.losses[-5:]) < 0.7 * np.mean(hist.losses[:5])
    assert m.evaluate(x, y)["accuracy"] > 0.5


@pytest.mark.parametrize("name,opt", [("alexnet", "sgd"), ("vgg16", "adam"), ("lenet5", "adamw")])
def test_fused_gradient_application_is_bit_identical(name, opt, monkeypatch):
    # Gradients applied block by block (no full gradient in memory) give the same weights
    # as whole gradients applied at apply-gradient time.
    import device_runtime.layers.core as core
    monkeypatch.setattr(core, "GRAD_BLOCK_BYTES", 64 * 1024)  # many blocks even when small
    out = {}
    for fused in (True, False):
        m = dr.build(name, seed=4)
        m.compile(batch_size=4, optimizer=opt, lr=1e-3)
        m.fuse_apply = fused
        x, y = synthetic_classification(m.input_shape, 10, 8, seed=5)
        m.fit(x, y, steps=3, seed=6)
        assert any(n.layer.fused for n in m.train_executor.graph.nodes) == fused
        out[fused] = m.get_weights()
    for k in out[True]:
        assert np.array_equal(out[True][k], out[False][k]), k


def test_recomputed_batchnorm_outputs_are_bit_identical(monkeypatch):
    # Batch-norm outputs (and the activations/additions on them) rebuilt before backward
    # instead of kept: same weights as keeping them, on a poisoned pool.
    monkeypatch.setattr("device_runtime.executor.POISON", True)
    out = {}
    for recompute in (True, False):
        m = dr.build("resnet18", seed=7)
        m.recompute = recompute
        m.compile(batch_size=4, optimizer="sgd", lr=0.05, momentum=0.9)
        assert bool(m.train_executor.step.recomputed) == recompute
        x, y = synthetic_classification(m.input_shape, 10, 8, seed=8)
        m.fit(x, y, steps=4, seed=9)
        out[recompute] = (m.get_weights(), m.plan()["pool_bytes"])
    for k in out[True][0]:
        assert np.array_equal(out[True][0][k], out[False][0][k]), k
    assert out[True][1] < 0.85 * out[False][1]  # 0.63 at batch 32


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
def test_forward_only_in_place_changes_no_bit(name, monkeypatch):
    # Frozen convs and batch norms write their output over their input: same losses,
    # weights and predictions as keeping both, on a poisoned pool; and a smaller pool.
    monkeypatch.setattr("device_runtime.executor.POISON", True)
    runs = {}
    for in_place in (False, True):
        monkeypatch.setattr("device_runtime.stepplan.FORWARD_ONLY_IN_PLACE", in_place)
        m = dr.build(name, seed=1)
        m.freeze(m.specs[-2].name)
        m.compile(batch_size=4, optimizer="sgd", lr=0.05)
        x, y = synthetic_classification(m.input_shape, 10, 20, seed=2)
        hist = m.fit(x, y, steps=5, seed=3)
        runs[in_place] = (hist.losses, m.get_weights(), m.predict(x[:6]), m.plan()["pool_bytes"])
    (l0, w0, p0, pool0), (l1, w1, p1, pool1) = runs[False], runs[True]
    assert l0 == l1 and np.all(np.isfinite(l1))
    assert all(np.array_equal(w0[k], w1[k]) for k in w0)
    assert np.array_equal(p0, p1)
    assert pool1 < pool0
