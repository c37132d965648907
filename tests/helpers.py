"""Test helpers: gradient capture and numerical differentiation through the executor."""

from __future__ import annotations

import tracemalloc

import numpy as np

from device_runtime.model import Model
from device_runtime.optimizers import Optimizer


class GradCapture(Optimizer):
    """An 'optimizer' that records each gradient and leaves the weights alone."""

    name = "capture"
    slots = 0

    def __init__(self) -> None:
        super().__init__(lr=1.0)
        self.grads: dict[str, np.ndarray] = {}

    def update(self, key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        # fused layers hand over blocks: assemble the whole gradient
        if key not in self.grads:
            self.grads[key] = np.full(self.sizes[key], np.nan)
        self.grads[key][start:start + g.size] = g

    def init_state(self, params: list[tuple[str, int]]) -> None:
        super().init_state(params)
        self.sizes = dict(params)


def loss_and_grads(model: Model, x: np.ndarray, y: np.ndarray
                   ) -> tuple[float, dict[str, np.ndarray]]:
    """One training-mode forward/backward on the whole of ``x`` (one batch)."""
    opt = model.optimizer
    assert isinstance(opt, GradCapture)
    xs = model.prepare_x(x)
    ys, kind = model.prepare_y(y, xs.shape[0])
    model._use_labels(kind)
    ex = model.train_executor
    for node in ex.graph.nodes:  # same dropout mask on every evaluation
        state = node.layer.run_state()
        if state:
            node.layer.load_run_state({k: 0 for k in state})
    ex.set_source(xs, ys)
    opt.grads = {}
    loss = ex.run(np.arange(xs.shape[0], dtype=np.int64))
    return loss, dict(opt.grads)


def numerical_grad_check(model: Model, x: np.ndarray, y: np.ndarray, eps: float = 1e-3,
                         samples: int = 12, seed: int = 0, rtol: float = 3e-2,
                         atol: float = 2e-3) -> int:
    """Compare captured gradients with central differences at random coordinates.

    Returns how many coordinates were compared; raises AssertionError with both values.
    """
    _, grads = loss_and_grads(model, x, y)
    assert grads, "no trainable weight received a gradient"
    rng = np.random.default_rng(seed)
    checked = 0
    for key, g in grads.items():
        w = model.weights.get(key).reshape(-1)
        gf = g.reshape(-1)
        for i in rng.choice(w.size, size=min(samples, w.size), replace=False):
            old = float(w[i])
            w[i] = old + eps
            lp, _ = loss_and_grads(model, x, y)
            w[i] = old - eps
            lm, _ = loss_and_grads(model, x, y)
            w[i] = old
            num = (lp - lm) / (2 * eps)
            ana = float(gf[i])
            assert abs(num - ana) <= atol + rtol * abs(num), (
                f"{key}[{i}]: analytic {ana:.6g} vs numerical {num:.6g}")
            checked += 1
    return checked


def peak_alloc_during_steps(m, x, y, steps=3) -> int:
    """Peak bytes traced during ``steps`` training steps (the body of ``Model.fit``)."""
    m.fit(x, y, steps=2)  # warm-up: JIT, executor construction, optimizer state
    b = m.batch_size
    batches = [np.arange(i * b, (i + 1) * b, dtype=np.int64) % len(x) for i in range(steps)]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        for idx in batches:
            m.train_step(idx)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base


def load_scaled(seconds: float) -> float:
    """``seconds`` stretched by how loaded this machine is now (the 1-minute load average
    per core, at least 1): a timeout that an honest task must never meet keeps its margin on
    a busy CI machine, and stays short on a quiet one."""
    import os

    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


def history_engine(fleet, profiles, workers: int, isolation: str, payload: dict,
                   base: int | None):
    """(engine, base) for the worker-history tests: a numpy-kernel fleet engine (use it in a
    ``with``) and device 0's RSS at the start of training on a fresh worker (``base`` when
    given: a second engine compares against the first one's)."""
    from experiments.fleet import FleetEngine, Job

    eng = FleetEngine(fleet, profiles, workers=workers, isolation=isolation, kernels="numpy",
                      faults={"timeout": 300.0}, quiet=True)
    if base is None:
        try:
            first = eng.run(payload, [Job("train", 0, 0)], "base")[0]
        except BaseException:
            eng.close()
            raise
        base = int(first.metrics["baseline-rss"])
    return eng, base
