"""The Python API: build, compile, fit, evaluate, predict, save and load weights.

``Model`` holds a description and its weights and builds an executor per batch size and
mode; RAM caps (warm-up, baseline, cap fit, guard) are the :mod:`device_runtime.cap`
module's work, data checks :mod:`device_runtime.prepare`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import report, switches, training
from .accumulate import make_accumulator
from .cap import Decision, adopt, fit_model, take_plan, warm_up_model
from .errors import ConfigError, MemoryCapExceeded, ModelError
from .executor import Executor
from .graph import Graph
from .layers import create_layer, create_loss, resolve_loss
from .layers.base import FinalizeContext
from .layers.core import Input
from .layers.loss import CrossEntropySoftmax, apply_folded
from .optimizers import Optimizer, create_optimizer
from .planner import DEFAULT_STRATEGY
from .spec import LayerSpec, layer
from .stepplan import StepPlan
from .training import History
from .validate import check_compile, prepare_x, prepare_y
from .weights import WeightStore

# Recompute cheap outputs (batch-norm + activation) before backward instead of keeping
# them; NNFLEET_NO_RECOMPUTE=1 turns it off (results are bit-identical either way).
RECOMPUTE = not switches.flag("NNFLEET_NO_RECOMPUTE")


__all__ = ["History", "LayerSpec", "Model", "layer"]


class Model:
    """A model description plus its weights; executors are built per batch size and mode."""

    def __init__(self, layers: Sequence[LayerSpec], loss: str = "cross_softmax", seed: int = 0,
                 name: str = "model") -> None:
        self.specs = list(layers)
        self.name = name
        last = self.specs[-1]
        self.loss_name = resolve_loss(loss, last.type, last.props.get("activation",
                                                                      last.props.get("type")))
        self.seed = seed
        self.label_kind = "index" if self.loss_name == "cross_softmax" else "dense"
        # how training graphs are built (tests and benchmarks switch these)
        self.fuse_apply = True
        self.recompute = RECOMPUTE
        self.conv_tile = 0  # conv backward's im2col bytes per tile (0 = whole; the cap fit sets it)
        # conv layers whose outputs are replayed before backward instead of kept (the cap fit
        # sets them, cheapest first, when nothing else fits at a micro-batch; stepplan.py)
        self.remat: frozenset[str] = frozenset()
        self.clip_grad_norm: float | None = None
        probe = self._graph(batch=1, backward=False, with_loss=True)
        inputs = [n.layer for n in probe.nodes if isinstance(n.layer, Input)]
        if len(inputs) != 1:
            raise ModelError(f"the model needs exactly one input layer, found {len(inputs)}")
        self.input_shape = inputs[0].out_shapes[0][1:]
        self.folded_activation = probe.folded_activation
        (prod, k), = probe.nodes[-1].inputs
        self.output_shape = probe.by_name[prod].layer.out_shapes[k][1:]
        self.weights = WeightStore.from_specs(
            [(f"{n.name}:{w.name}", w.shape, w.trainable, w.init, w.fan_in, w.fan_out)
             for n in probe.nodes for w in n.layer.weights])
        self.weights.initialize(seed)
        self.optimizer: Optimizer | None = None
        self.batch_size = 0
        self.planner = DEFAULT_STRATEGY
        self._train: Executor | None = None
        self._infer: dict[tuple[int, bool], Executor] = {}
        self._tv: dict[str, np.ndarray] | None = None
        # RAM cap state (set by compile and fit); defaults so reports work before them
        self.ram_cap: int | None = None
        self.swap, self.lookahead = "off", 3
        self.swap_dir: str | None = None
        self.micro_batch = 0
        self.decision: Decision | None = None  # what the cap fit chose
        self.baseline_rss: int | None = None
        self.cap_exceeded = False
        self.peak_rss = 0
        self.guard_overhead = 0.0

    # ------------------------------------------------------------------ graphs
    def _context(self, batch: int, backward: bool, with_loss: bool,
                 conv_tile: int | None = None) -> FinalizeContext:
        tile = self.conv_tile if conv_tile is None else conv_tile
        return FinalizeContext(batch, backward, recompute=backward and self.recompute,
                               label_kind=self.label_kind if with_loss else None,
                               conv_tile=tile if backward else 0)

    def _graph(self, batch: int, backward: bool, with_loss: bool,
               conv_tile: int | None = None) -> Graph:
        layers = [create_layer(s.type, s.name, s.props) for s in self.specs]
        return Graph(layers, create_loss(self.loss_name) if with_loss else None,
                     self._context(batch, backward, with_loss, conv_tile),
                     clip_grad=self.clip_grad_norm if backward else None,
                     fuse_apply=self.fuse_apply)

    def freeze(self, upto: str) -> None:
        """Make every layer up to and including ``upto`` (in description order) frozen."""
        names = [s.name for s in self.specs]
        if upto not in names:
            raise ModelError(f"cannot freeze up to '{upto}': no such layer (layers: "
                             f"{', '.join(names[:8])}...)")
        for spec in self.specs[:names.index(upto) + 1]:
            spec.props["trainable"] = False
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
        check_compile(batch_size, planner, clip_grad_norm, swap, lookahead, ram_cap, label_kind)
        self.batch_size = int(batch_size)
        self.planner = planner
        self.clip_grad_norm = clip_grad_norm
        if label_kind is not None:
            self.label_kind = label_kind
        self.optimizer = create_optimizer(optimizer, **opt_kwargs) if isinstance(optimizer, str) \
            else optimizer
        self.optimizer.init_state(self._trainable_sizes())
        from .regularizers import param_decays

        self.optimizer.param_decay = param_decays(self)
        self.close()
        self._train = None
        self._infer = {}
        self.ram_cap, self.swap, self.lookahead, self.swap_dir = ram_cap, swap, lookahead, swap_dir
        self.micro_batch, self.cap_exceeded, self.peak_rss = self.batch_size, False, 0
        self.decision = None
        if ram_cap is not None:
            self.baseline_rss, decision = fit_model(self, ram_cap, baseline_rss)
            adopt(self, decision)
        return self

    def _trainable_sizes(self) -> list[tuple[str, int]]:
        return [(k, p.size) for k, p in self.weights.params.items() if p.trainable]

    def trainable_views(self) -> dict[str, np.ndarray]:
        """Every trainable parameter as a flat view into the weight store."""
        if self._tv is None:
            self._tv = {k: self.weights.get(k).reshape(-1)
                        for k, p in self.weights.params.items() if p.trainable}
        return self._tv

    @property
    def train_executor(self) -> Executor:
        if self.optimizer is None:
            raise ConfigError("compile() the model before training")
        if self._train is None:
            step = self._train_plan()
            opt: Optimizer = self.optimizer
            if self.micro_batch < self.batch_size:
                opt = make_accumulator(self.optimizer, self._trainable_sizes(),
                                       self.batch_size // self.micro_batch,
                                       self.decision, self.swap_dir)
            self._train = Executor(step, self.weights, opt, swap_dir=self.swap_dir)
        return self._train

    def _train_plan(self) -> StepPlan:
        """Under a cap the plan the cap fit chose, else one for the compiled settings."""
        if self.ram_cap is not None:
            return take_plan(self)
        g = self._graph(self.micro_batch, backward=True, with_loss=True)
        return StepPlan(g, self.planner, "on" if self.swap == "on" else "off", self.lookahead,
                        remat=self.remat)

    def warm_up(self) -> None:
        """Run one step at batch 1 that changes nothing, so every one-time cost of this
        model's kernels is paid before a baseline RSS is taken."""
        warm_up_model(self)

    def close(self) -> None:
        """Release swap files and threads of the executors."""
        for ex in [self._train, *self._infer.values()]:
            if ex is not None:
                ex.close()

    def _infer_executor(self, batch: int, with_loss: bool) -> Executor:
        key = (batch, with_loss)
        if key not in self._infer:
            g = self._graph(batch, backward=False, with_loss=with_loss)
            self._infer[key] = Executor(StepPlan(g, self.planner), self.weights)
        return self._infer[key]

    # ------------------------------------------------------------------ data
    def prepare_x(self, x: np.ndarray, what: str = "x") -> np.ndarray:
        """(N, ...) with the input's element count per sample -> C-contiguous (N, F) float32."""
        return prepare_x(x, self.input_shape, what)

    def prepare_y(self, y: np.ndarray, n: int) -> tuple[np.ndarray, str]:
        """Labels for ``n`` samples -> (int64 ids, "index") or (float32 targets, "dense")."""
        return prepare_y(y, n, self.output_shape, self.loss_name)

    def _use_labels(self, kind: str) -> None:
        if kind != self.label_kind:
            self.label_kind = kind
            self._train = None
            self._infer = {}

    # ------------------------------------------------------------------ training
    # ------------------------------------------------------------------ training
    def fit(self, x: np.ndarray, y: np.ndarray, epochs: int = 1, steps: int | None = None,
            shuffle: bool = True, seed: int = 0,
            callback: Callable[[int, float], None] | None = None,
            start_epoch: int = 0, drop_last: bool = True) -> History:
        """Train; batches of ``batch_size``. ``drop_last`` (the default here) drops an
        epoch's last partial batch; ``drop_last=False`` trains on it too, as PyTorch's
        DataLoader does, inside the full batch's memory plan (device_runtime.tail).

        ``start_epoch`` resumes a run that used the same ``seed``: the shuffles of the
        epochs already trained are replayed so batches are the same as uninterrupted."""
        xs = self.prepare_x(x)
        ys, kind = self.prepare_y(y, xs.shape[0])
        self._use_labels(kind)
        return training.fit(self, xs, ys, epochs, steps, shuffle, seed, callback, start_epoch,
                            drop_last)

    def train_step(self, idx: np.ndarray) -> float:
        """One step on rows ``idx`` of the source set by ``fit`` (or ``Executor.set_source``)."""
        return training.train_step(self, idx)

    # ------------------------------------------------------------------ inference
    def _batches(self, n: int, batch_size: int | None) -> list[tuple[int, int]]:
        b = batch_size or self.batch_size or 32
        return [(s, min(s + b, n)) for s in range(0, n, b)]

    def evaluate(self, x: np.ndarray, y: np.ndarray,
                 batch_size: int | None = None) -> dict[str, float]:
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
        return apply_folded(self.folded_activation, out)

    # ------------------------------------------------------------------ weights
    def save_weights(self, path: str) -> None:
        """Write every parameter to an ``.npz`` (keys ``<layer>:<param>``); under a RAM cap
        the file is kept only if the process stayed under the cap while writing it."""
        self.weights.save(path, before_rename=self._check_peak if self.ram_cap else None)

    def _check_peak(self) -> None:
        from . import rss

        peak = rss.peak_rss()
        if self.ram_cap and peak > self.ram_cap:
            self.cap_exceeded, self.peak_rss = True, max(self.peak_rss or 0, peak)
            raise MemoryCapExceeded(needed=peak, cap=self.ram_cap,
                                    detail="the process went over it while saving the weights; "
                                    "nothing saved")

    def load_weights(self, path: str, strict: bool = True) -> None:
        """Read parameters from an ``.npz``; ``strict`` wants every key, no other."""
        self.weights.load(path, strict=strict)

    def get_weights(self) -> dict[str, np.ndarray]:
        """A copy of every parameter, by key."""
        return self.weights.state()

    def set_weights(self, arrays: dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy ``arrays`` into the parameters (``strict``: every key, no other)."""
        self.weights.load_state(arrays, strict=strict)

    # ------------------------------------------------------------------ reporting
    def plan(self) -> dict[str, Any]:
        """The training step's memory plan: pool, lower bound, naive bytes, tensor table."""
        return report.plan(self)

    def memory_report(self) -> dict[str, Any]:
        """RAM cap outcome and swap traffic of the training executor."""
        return report.memory(self)
