"""Load every compiled kernel once, so that JIT cost is paid before any measurement.

Numba compiles (or loads from its cache) a kernel on first call; that costs time and about
65 MiB of RSS (LLVM and the machine code) which belong to the runtime's baseline, not to
a training step's working set. A tiny model that uses every layer kind is trained for a
step with each optimizer and loss, and run in inference, on the same array layouts the
real executors use. :func:`warm_up_model` then pays what is left for one model (its
own shapes) with a step that changes nothing.

The tiny model is built with the class of the model being warmed up (or the one
``device_runtime.warmup`` passes), so this lower module never imports ``Model``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from ..kernels import USE_NUMBA
from ..spec import layer

if TYPE_CHECKING:
    from ..model import Model

_DONE = False


def _tiny(model_cls: type[Model], loss: str, act: str, out: int) -> Model:
    specs = [
        layer("input", "in", input_shape="2:6:6"),
        layer("conv2d", "c1", filters=4, kernel_size=3, padding=1),       # chunked im2col path
        layer("batch_normalization", "bn", activation="relu"),
        layer("conv2d", "c2", filters=4, kernel_size=1, input_layers="bn"),  # direct path
        layer("activation", "a2", activation="leaky_relu"),
        layer("addition", "add", input_layers="a2,bn"),
        layer("pooling2d", "p1", pooling="max", pool_size=2, stride=2),
        layer("pooling2d", "p2", pooling="average", pool_size=1, stride=1, input_layers="p1"),
        layer("concat", "cat", input_layers="p1,p2", axis=1, flatten=True),
        layer("dropout", "drop", dropout_rate=0.5),
        layer("fully_connected", "fc1", unit=8, activation="tanh"),
        layer("activation", "s1", activation="sigmoid"),
        layer("activation", "g1", activation="gelu"),
        layer("activation", "w1", activation="swish"),
        layer("fully_connected", "fc2", unit=out, activation=act),
    ]
    return model_cls(specs, loss=loss, seed=0, name="warmup")


def warm_kernels(model_cls: type[Model], force: bool = False) -> None:
    """Run every kernel once, through tiny ``model_cls`` models (no-op after the first
    call, or without numba)."""
    global _DONE
    if (_DONE or not USE_NUMBA) and not force:
        return
    # BLAS grows its per-thread packing buffers on the first large product: pay it here.
    a = np.ones((1024, 1024), np.float32)
    for shape in ((1024, 1024), (64, 1024), (1024, 64)):
        np.matmul(a[:shape[0], :shape[1]], a[:shape[1], :], out=np.empty((shape[0], 1024),
                                                                           np.float32))
    del a
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 2, 6, 6)).astype(np.float32)
    for loss, act, y in (
        ("cross_softmax", "softmax", rng.integers(0, 3, 4)),
        ("cross_softmax", "softmax", rng.random((4, 3)).astype(np.float32)),
        ("cross_sigmoid", "sigmoid", rng.random((4, 3)).astype(np.float32)),
        ("mse", "softmax", rng.random((4, 3)).astype(np.float32)),
    ):
        opts: tuple[tuple[str, dict[str, Any]], ...] = (
            ("sgd", {"momentum": 0.9}), ("adam", {}), ("sgd", {}))
        for opt, kw in opts:
            m = _tiny(model_cls, loss, act, 3)
            m.compile(batch_size=2, optimizer=opt, lr=0.01, **kw)
            m.fit(x, y, steps=1, shuffle=False)
        m.compile(batch_size=2, optimizer="sgd", lr=0.01, clip_grad_norm=1.0)
        m.fit(x, y, steps=1, shuffle=False)
        m.evaluate(x, y)
        m.predict(x)
    _DONE = True


def warm_up_model(model: Model, measure: bool = False) -> int:
    """Run one step of ``model`` at batch 1 that changes nothing, so every one-time cost
    of its kernels (JIT specialisations, BLAS buffers for its shapes: ~4 MiB measured for
    vgg16) is paid before a baseline RSS is taken. With ``measure``, a second plan,
    executor and step measure what they add beyond the step's pool: the RSS no plan
    describes (Python objects of the plan and bindings, transients; returned in bytes,
    else 0)."""
    from .. import rss
    from ..executor import Executor
    from ..optimizers import NullOptimizer
    from ..stepplan import StepPlan

    warm_kernels(type(model))
    w = model.weights
    saved = {k: w.get(k).copy() for k, p in w.params.items()
             if not p.trainable}  # running statistics move in a training forward
    ex = Executor(StepPlan(model._graph(1, backward=True, with_loss=True), model.planner), w,
                  NullOptimizer())
    x = np.zeros((1, int(math.prod(model.input_shape))), np.float32)
    y = np.zeros(1, np.int64) if model.label_kind == "index" else \
        np.zeros((1, int(math.prod(model.output_shape))), np.float32)
    ex.set_source(x, y)
    ex.run(np.zeros(1, np.int64))
    ex.close()
    del ex
    unplanned = 0
    if measure and rss.can_measure():
        # one-time costs are paid now: a second plan, executor and step measure what a
        # step's objects and transients add beyond its pool (drawn once more at batch 1)
        rss.release_heap()
        before = rss.current_rss()
        window = rss.open_window()
        step = StepPlan(model._graph(1, backward=True, with_loss=True), model.planner)
        ex = Executor(step, w, NullOptimizer())
        ex.set_source(x, y)
        ex.run(np.zeros(1, np.int64))
        unplanned = max(0, rss.window_peak(window) - before - step.plan.pool_bytes)
        rss.close_window(window)
        ex.close()
        del ex, step
    w.load_state(saved, strict=False)
    return unplanned
