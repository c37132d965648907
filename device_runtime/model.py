"""The Python API: build, compile, fit, evaluate, predict, save and load weights."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError, DataError, MemoryCapExceeded, ModelError
from .executor import Executor
from .graph import Graph
from .layers import create_layer, create_loss
from .layers.core import Input
from .layers.loss import CrossEntropySoftmax, Loss
from .optimizers import Accumulator, NullOptimizer, Optimizer, create_optimizer
from .planner import DEFAULT_STRATEGY, STRATEGIES
from .units import MAX_BATCH_SIZE
from .weights import WeightStore
from . import hooks, switches

# Recompute cheap outputs (batch-norm + activation) before backward instead of keeping
# them; NNFLEET_NO_RECOMPUTE=1 turns it off (results are bit-identical either way).
RECOMPUTE = not switches.flag("NNFLEET_NO_RECOMPUTE")


def _test_leak() -> tuple[int, int] | None:
    """``NNFLEET_TEST_ALLOC=BYTES@STEP``: allocate memory the plan does not know about at
    that step (a debug switch that lets tests show the RAM guard stopping a run)."""
    raw = switches.text("NNFLEET_TEST_ALLOC")
    if not raw:
        return None
    size, _, step = raw.partition("@")
    from .units import parse_size

    return parse_size(size), int(step or 0)


@dataclass
class LayerSpec:
    """A layer description: NNTrainer type name, unique name, properties."""

    type: str
    name: str
    props: dict[str, Any] = field(default_factory=dict)


def layer(type: str, name: str, **props: Any) -> LayerSpec:
    """Shorthand: ``layer("conv2d", "conv1", filters=6, kernel_size=5, activation="relu")``."""
    return LayerSpec(type, name, props)


@dataclass
class History:
    losses: list[float] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    correct: list[int] = field(default_factory=list)  # per step, with class-id labels
    examples: int = 0


class Model:
    """A model description plus its weights; executors are built per batch size and mode."""

    def __init__(self, layers: Sequence[LayerSpec], loss: str = "cross_softmax", seed: int = 0,
                 name: str = "model") -> None:
        self.specs = list(layers)
        self.name = name
        self.loss_name = self._resolve_loss(loss)
        self.seed = seed
        probe = self._graph(batch=1, backward=False, with_loss=True)
        inputs = [n.layer for n in probe.nodes if isinstance(n.layer, Input)]
        if len(inputs) != 1:
            raise ModelError(f"the model needs exactly one input layer, found {len(inputs)}")
        self.input_shape = inputs[0].out_shapes[0][1:]
        self.folded_activation = probe.folded_activation
        loss_node = probe.nodes[-1]
        self.output_shape = probe.by_name[loss_node.inputs[0][0]].layer.out_shapes[
            loss_node.inputs[0][1]][1:]
        specs = []
        for node in probe.nodes:
            for w in node.layer.weights:
                specs.append((f"{node.name}:{w.name}", w.shape, w.trainable, w.init, w.fan_in, w.fan_out))
        self.weights = WeightStore.from_specs(specs)
        self.weights.initialize(seed)
        self.optimizer: Optimizer | None = None
        self.batch_size = 0
        self.planner = DEFAULT_STRATEGY
        self.clip_grad_norm: float | None = None
        self.label_kind = "index" if self.loss_name == "cross_softmax" else "dense"
        self._train: Executor | None = None
        self._infer: dict[tuple[int, bool], Executor] = {}
        # RAM cap state (set by compile); defaults so reports work before it
        self.ram_cap: int | None = None
        self.swap, self.lookahead, self.swap_dir = "off", 3, None
        self.micro_batch = 0
        self._swap_groups: Any = "off"
        self.cap_exceeded = False
        self.peak_rss = 0

    # ------------------------------------------------------------------ graphs
    def _resolve_loss(self, loss: str) -> str:
        name = str(loss).strip().lower()
        if name == "cross":  # NNTrainer: cross-entropy after the last layer's activation
            last = str(self.specs[-1].props.get("activation", self.specs[-1].props.get("type", "")))
            name = "cross_sigmoid" if "sigmoid" in (last.lower(), self.specs[-1].type.lower()) \
                else "cross_softmax"
        return create_loss(name).type

    def _graph(self, batch: int, backward: bool, with_loss: bool) -> Graph:
        layers = [create_layer(s.type, s.name, s.props) for s in self.specs]
        loss: Loss | None = None
        if with_loss:
            loss = create_loss(self.loss_name)
            loss.label_kind = getattr(self, "label_kind", loss.label_kind)
        return Graph(layers, loss, batch, backward=backward,
                     clip_grad=self.clip_grad_norm if backward else None,
                     fuse_apply=getattr(self, "fuse_apply", True),
                     recompute=getattr(self, "recompute", RECOMPUTE))

    def freeze(self, upto: str) -> None:
        """Make every layer up to and including ``upto`` (in description order) frozen."""
        names = [s.name for s in self.specs]
        if upto not in names:
            raise ModelError(f"cannot freeze up to '{upto}': no such layer (layers: "
                             f"{', '.join(names[:8])}...)")
        for spec in self.specs[:names.index(upto) + 1]:
            spec.props["trainable"] = False
        self._rebuild_weight_flags()

    def _rebuild_weight_flags(self) -> None:
        probe = self._graph(batch=1, backward=False, with_loss=True)
        flags = {f"{n.name}:{w.name}": w.trainable for n in probe.nodes for w in n.layer.weights}
        for k, p in list(self.weights.params.items()):
            if p.trainable != flags[k]:
                self.weights.params[k] = dataclasses.replace(p, trainable=flags[k])
        self._tv = None

    # ------------------------------------------------------------------ compile
    def compile(self, batch_size: int = 32, optimizer: str | Optimizer = "sgd",
                planner: str = DEFAULT_STRATEGY, clip_grad_norm: float | None = None,
                label_kind: str | None = None, ram_cap: int | None = None,
                swap: str = "auto", lookahead: int = 3, swap_dir: str | None = None,
                baseline_rss: int | None = None, **opt_kwargs: Any) -> Model:
        """Choose batch size, optimizer and planner; with ``ram_cap`` (bytes, whole process)
        fit the step into it (planner, then swap unless ``swap="off"``, then micro-batches
        with gradient accumulation) or raise :class:`MemoryCapExceeded` before training.
        ``swap="on"`` swaps every candidate block even without a cap."""
        if not 1 <= int(batch_size) <= MAX_BATCH_SIZE:
            raise ConfigError(f"batch size must be in [1, {MAX_BATCH_SIZE}], got {batch_size}")
        if planner not in STRATEGIES:
            raise ConfigError(f"unknown planner '{planner}' (known: {', '.join(STRATEGIES)})")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ConfigError(f"clip_grad_norm must be > 0, got {clip_grad_norm}")
        if swap not in ("off", "auto", "on"):
            raise ConfigError(f"swap must be off, auto or on, got {swap!r}")
        if lookahead < 0:
            raise ConfigError(f"lookahead must be >= 0, got {lookahead}")
        if ram_cap is not None and ram_cap <= 0:
            raise ConfigError(f"RAM cap must be positive, got {ram_cap}")
        self.batch_size = int(batch_size)
        self.planner = planner
        self.clip_grad_norm = clip_grad_norm
        if label_kind is not None:
            if label_kind not in ("index", "dense"):
                raise ConfigError(f"label_kind must be index or dense, got {label_kind!r}")
            self.label_kind = label_kind
        self.optimizer = create_optimizer(optimizer, **opt_kwargs) if isinstance(optimizer, str) \
            else optimizer
        trainable = [(k, p.size) for k, p in self.weights.params.items() if p.trainable]
        self.optimizer.init_state(trainable)
        from .regularizers import param_decays

        self.optimizer.param_decay = param_decays(self)
        self.close()
        self._train = None
        self._infer = {}
        self.ram_cap, self.swap, self.lookahead, self.swap_dir = ram_cap, swap, lookahead, swap_dir
        self.micro_batch = self.batch_size
        self._swap_groups: Any = "on" if swap == "on" else "off"
        self.cap_exceeded = False
        self.peak_rss = 0
        self.decision = None
        if ram_cap is not None:
            from .capfit import fit_to_cap
            from .rss import current_rss, release_heap

            self.warm_up()  # JIT code is part of the baseline, and must be loaded before it
            release_heap()
            self.baseline_rss = baseline_rss if baseline_rss is not None else current_rss()
            def fit(base: int) -> Any:
                return fit_to_cap(lambda b: self._graph(b, backward=True, with_loss=True),
                                  self.weights, planner, self.batch_size, ram_cap, base,
                                  self.optimizer.state_bytes, 4 * sum(n for _, n in trainable),
                                  swap, lookahead)

            d = fit(self.baseline_rss)
            # Planning itself leaves heap behind (about 1 MiB for resnet18, less once freed
            # pages are given back): count it in the baseline and fit again (the second
            # pass reuses that heap).
            release_heap()
            grown = current_rss()
            if grown > self.baseline_rss:
                self.baseline_rss = grown
                d = fit(grown)
            self.decision = d
            self.micro_batch = d.batch
            self.lookahead = d.lookahead
            self._swap_groups = [(s.group, s.out_after) for s in d.slots]
        return self

    @property
    def train_executor(self) -> Executor:
        if self.optimizer is None:
            raise ConfigError("compile() the model before training")
        if self._train is None:
            opt: Optimizer = self.optimizer
            if self.micro_batch < self.batch_size:
                trainable = [(k, p.size) for k, p in self.weights.params.items() if p.trainable]
                opt = Accumulator(self.optimizer, trainable, self.batch_size // self.micro_batch)
            g = self._graph(self.micro_batch, backward=True, with_loss=True)
            self._train = Executor(g, self.weights, self.planner, opt, swap=self._swap_groups,
                                   lookahead=self.lookahead, swap_dir=self.swap_dir)
        return self._train

    def warm_up(self) -> None:
        """Run one step at batch 1 that changes nothing, so every one-time cost of this
        model's kernels (JIT specialisations, BLAS buffers for its shapes: ~4 MiB measured
        for vgg16) is paid before a baseline RSS is taken."""
        from .warmup import warmup

        warmup()
        saved = {k: self.weights.get(k).copy() for k, p in self.weights.params.items()
                 if not p.trainable}  # running statistics move in a training forward
        g = self._graph(1, backward=True, with_loss=True)
        ex = Executor(g, self.weights, self.planner, NullOptimizer())
        x = np.zeros((1, int(math.prod(self.input_shape))), np.float32)
        y = np.zeros(1, np.int64) if self.label_kind == "index" else \
            np.zeros((1, int(math.prod(self.output_shape))), np.float32)
        ex.set_source(x, y)
        ex.run(np.zeros(1, np.int64))
        ex.close()
        del ex, g
        self.weights.load_state(saved, strict=False)

    def close(self) -> None:
        """Release swap files and threads of the executors."""
        for ex in [self._train, *self._infer.values()] if hasattr(self, "_train") else []:
            if ex is not None:
                ex.close()

    def _infer_executor(self, batch: int, with_loss: bool) -> Executor:
        key = (batch, with_loss)
        if key not in self._infer:
            g = self._graph(batch, backward=False, with_loss=with_loss)
            self._infer[key] = Executor(g, self.weights, self.planner)
        return self._infer[key]

    # ------------------------------------------------------------------ data
    def prepare_x(self, x: np.ndarray, what: str = "x") -> np.ndarray:
        """(N, ...) with the input's element count per sample -> C-contiguous (N, F) float32."""
        x = np.asarray(x)
        per = int(math.prod(self.input_shape))
        if x.ndim < 1 or x.shape[0] == 0:
            raise DataError(f"data {what} is empty (shape {x.shape})")
        if x.dtype.kind not in "fiu":
            raise DataError(f"data {what} has dtype {x.dtype}, expected float32")
        if x.size // x.shape[0] != per or x.size % x.shape[0]:
            raise DataError(f"data {what} has shape {x.shape}: {x.size // max(x.shape[0], 1)} values "
                            f"per sample, the model's input {self.input_shape} needs {per}")
        return np.ascontiguousarray(x.reshape(x.shape[0], per), dtype=np.float32)

    def prepare_y(self, y: np.ndarray, n: int) -> tuple[np.ndarray, str]:
        y = np.asarray(y)
        k = int(math.prod(self.output_shape))
        if y.shape[0] != n:
            raise DataError(f"data has {n} samples in x but {y.shape[0]} labels in y")
        if y.ndim == 1 and y.dtype.kind in "iu":
            if self.loss_name != "cross_softmax":
                raise DataError(f"loss {self.loss_name} needs float targets (N, {k}), got class ids")
            classes = self.output_shape[-1]
            if y.size and (y.min() < 0 or y.max() >= classes):
                raise DataError(f"labels must be class ids in [0, {classes}), found "
                                f"{int(y.min())}..{int(y.max())}")
            return np.ascontiguousarray(y, dtype=np.int64), "index"
        if y.dtype.kind not in "fiu":
            raise DataError(f"labels y have dtype {y.dtype}, expected int64 ids or float32 targets")
        if y.size // max(n, 1) != k:
            raise DataError(f"targets y have shape {y.shape}, the model's output {self.output_shape} "
                            f"needs {k} values per sample")
        return np.ascontiguousarray(y.reshape(n, k), dtype=np.float32), "dense"

    def _use_labels(self, kind: str) -> None:
        if kind != self.label_kind:
            self.label_kind = kind
            self._train = None
            self._infer = {}

    # ------------------------------------------------------------------ training
    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int = 1, steps: int | None = None,
            shuffle: bool = True, seed: int = 0,
            callback: Callable[[int, float], None] | None = None,
            start_epoch: int = 0) -> History:
        """Train; batches of ``batch_size`` (a last partial batch is dropped).

        ``start_epoch`` resumes a run that used the same ``seed``: the shuffles of the
        epochs already trained are replayed so batches are the same as uninterrupted."""
        xs = self.prepare_x(x)
        ys, kind = self.prepare_y(y, xs.shape[0])
        self._use_labels(kind)
        b = self.batch_size or 0
        if b == 0:
            raise ConfigError("compile() the model before training")
        n = xs.shape[0]
        if n < b:
            raise DataError(f"data has {n} samples, fewer than one batch of {b}")
        per_epoch = n // b
        total = steps if steps is not None else epochs * per_epoch
        if total < 0:
            raise ConfigError(f"steps/epochs must be >= 0, got {total}")
        ex = self.train_executor
        ex.set_source(xs, ys)
        rng = np.random.default_rng(seed)
        perm = np.arange(n, dtype=np.int64)
        if shuffle:
            for _ in range(start_epoch):
                rng.shuffle(perm)
        hist = History()
        guard = None
        if self.ram_cap is not None:
            from .memcap import RamGuard

            guard = RamGuard(self.ram_cap)
            guard.__enter__()
            ex.guard = guard
        try:
            self._fit_loop(hist, total, per_epoch, b, perm, rng, shuffle, callback)
        except MemoryCapExceeded:
            self.cap_exceeded = True
            raise
        finally:
            if guard is not None:
                guard.__exit__(None, None, None)
                ex.guard = None
                self.peak_rss = guard.peak_rss
                self.guard_overhead = guard.sample_seconds
                if guard.exceeded and not self.cap_exceeded:
                    self.cap_exceeded = True
                    raise MemoryCapExceeded(needed=guard.peak_rss, cap=guard.cap,
                                            detail="the process went over its RAM cap")
        return hist

    def _fit_loop(self, hist: History, total: int, per_epoch: int, b: int, perm: np.ndarray,
                  rng: np.random.Generator, shuffle: bool,
                  callback: Callable[[int, float], None] | None) -> None:
        ex = self.train_executor
        leak = _test_leak()
        for step in range(total):
            if leak is not None and step == leak[1]:  # NNFLEET_TEST_ALLOC: test the guard
                self._leaked = np.ones(leak[0], np.uint8)
            j = step % per_epoch
            if j == 0 and shuffle:
                rng.shuffle(perm)
            idx = perm[j * b:(j + 1) * b]
            t0 = time.perf_counter()
            loss = self.train_step(idx)
            hist.step_seconds.append(time.perf_counter() - t0)
            hist.losses.append(loss)
            if ex.loss is not None and ex.loss.correct >= 0:
                hist.correct.append(ex.loss.correct)
            hist.examples += b
            if callback is not None:
                callback(step, loss)

    def train_step(self, idx: np.ndarray) -> float:
        """One step on rows ``idx`` of the source set by ``fit`` (or ``Executor.set_source``)."""
        hooks.run_before_step()
        opt = self.optimizer
        assert opt is not None
        ex = self.train_executor
        opt.begin_step()
        mb = self.micro_batch
        if mb == self.batch_size:
            loss = ex.run(idx)
        else:  # gradient accumulation over micro-batches, then one update
            k = self.batch_size // mb
            loss = 0.0
            for i in range(k):
                loss += ex.run(idx[i * mb:(i + 1) * mb]) / k
            ex.optimizer.flush(self._trainable_views)
        opt.end_step()
        return loss

    @property
    def _trainable_views(self) -> dict[str, np.ndarray]:
        if getattr(self, "_tv", None) is None:
            self._tv = {k: self.weights.get(k).reshape(-1)
                        for k, p in self.weights.params.items() if p.trainable}
        return self._tv

    def memory_report(self) -> dict[str, Any]:
        """RAM cap outcome and swap traffic of the training executor."""
        ex = self._train
        dev = ex.swap_device if ex is not None else None
        return {
            "ram_cap_bytes": self.ram_cap,
            "baseline_rss_bytes": getattr(self, "baseline_rss", None),
            "peak_rss_bytes": self.peak_rss or None,
            "cap_exceeded": self.cap_exceeded,
            "micro_batch": self.micro_batch,
            "swap_blocks": len(ex.slots) if ex is not None else 0,
            "swap_bytes_written": dev.bytes_written if dev else 0,
            "swap_bytes_read": dev.bytes_read if dev else 0,
            "swap_wait_seconds": dev.wait_seconds if dev else 0.0,
            "swap_direct_io": bool(dev.direct) if dev else None,
            "guard_seconds": getattr(self, "guard_overhead", 0.0),
        }

    # ------------------------------------------------------------------ inference
    def _batches(self, n: int, batch_size: int | None) -> list[tuple[int, int]]:
        b = batch_size or self.batch_size or 32
        return [(s, min(s + b, n)) for s in range(0, n, b)]

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int | None = None) -> dict[str, float]:
        """Mean loss and (with class ids) accuracy, with inference-mode layers."""
        xs = self.prepare_x(x)
        ys, kind = self.prepare_y(y, xs.shape[0])
        self._use_labels(kind)
        tot_loss, correct, n = 0.0, 0, xs.shape[0]
        for s, e in self._batches(n, batch_size):
            ex = self._infer_executor(e - s, with_loss=True)
            ex.set_source(xs, ys)
            tot_loss += ex.run(np.arange(s, e, dtype=np.int64)) * (e - s)
            if ex.loss is not None and ex.loss.correct >= 0:
                correct += ex.loss.correct
        out = {"loss": tot_loss / n, "examples": float(n)}
        if kind == "index" and isinstance(self._infer_executor(1, True).loss, CrossEntropySoftmax):
            out["accuracy"] = correct / n
        return out

    def predict(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Model outputs (N, *output_shape); a folded softmax/sigmoid is applied."""
        xs = self.prepare_x(x)
        n = xs.shape[0]
        out = np.empty((n, *self.output_shape), dtype=np.float32)
        for s, e in self._batches(n, batch_size):
            ex = self._infer_executor(e - s, with_loss=False)
            ex.set_source(xs, None)
            ex.run(np.arange(s, e, dtype=np.int64))
            out[s:e] = ex.output
        if self.folded_activation == "softmax":
            z = out - out.max(axis=-1, keepdims=True)
            np.exp(z, out=z)
            out = z / z.sum(axis=-1, keepdims=True)
        elif self.folded_activation == "sigmoid":
            out = 1.0 / (1.0 + np.exp(-out))
        return out

    # ------------------------------------------------------------------ weights
    def save_weights(self, path: str) -> None:
        self.weights.save(path)

    def load_weights(self, path: str, strict: bool = True) -> None:
        self.weights.load(path, strict=strict)

    def get_weights(self) -> dict[str, np.ndarray]:
        return self.weights.state()

    def set_weights(self, arrays: dict[str, np.ndarray], strict: bool = True) -> None:
        self.weights.load_state(arrays, strict=strict)

    # ------------------------------------------------------------------ reporting
    def plan(self) -> dict[str, Any]:
        """The training step's memory plan: pool, lower bound, naive bytes, tensor table."""
        ex = self.train_executor
        opt_bytes = self.optimizer.state_bytes if self.optimizer else 0
        return {
            "model": self.name,
            "batch_size": self.batch_size,
            "planner": self.planner,
            "pool_bytes": ex.plan.pool_bytes,
            "lower_bound_bytes": ex.lower_bound,
            "naive_bytes": ex.naive_bytes,
            "weight_bytes": self.weights.nbytes,
            "optimizer_state_bytes": opt_bytes,
            "planned_working_set_bytes": ex.plan.pool_bytes + opt_bytes,
            "num_tensors": len(ex.records),
            "num_blocks": len(ex.sizes),
            "num_orders": ex.graph.num_orders,
            "tensors": ex.table(),
        }
