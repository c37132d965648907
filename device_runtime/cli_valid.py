"""Validation during ``nnfleet train``: a held-out set evaluated after every epoch.

``--valid-data V.npz`` names the set; ``--valid-split F`` holds out a fraction ``F`` of the
training data instead (chosen from ``--seed`` alone, never overlapping what trains; the
training rows keep their file order); an INI model's own ``[valid_set]`` is used when
neither is given. After each epoch (and after the last step of a ``--steps`` run that ends
inside an epoch) the model is evaluated in inference mode on the whole set: a line
``epoch E  train loss L  valid loss V  valid accuracy A`` (in ``--json``: ``"epochs"``, and
``valid_planned_bytes``, what its inference pools add to the working set).

Evaluation reads the weights and never writes them, and inference executors have layers
of their own (dropout counters, batch-norm statistics): training computes the same numbers
with or without it. It runs inside the guarded training window, so under ``--ram-cap`` its
memory counts: its batch is the largest (up to the training batch) whose inference pools fit
beside the training step, chosen before training; if none does, the run is refused before
it starts.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import ConfigError, DataError, MemoryCapExceeded

if TYPE_CHECKING:
    from .ini import IniModel
    from .model import Model

SPLIT_SALT = 0x76616C69  # "vali": the split's stream differs from the shuffle's (same seed)
EXECUTOR_SLACK = 256 * 1024  # Python objects and views of one inference executor, beside its pool


def add_arguments(p: argparse.ArgumentParser, fraction: Any) -> None:
    """``--valid-data`` and ``--valid-split`` on the ``train`` parser."""
    p.add_argument("--valid-data", metavar="V.npz",
                   help="validation set .npz (x, y), evaluated after every epoch "
                        "(None = the INI's [valid_set] if any, else no validation)")
    p.add_argument("--valid-split", type=fraction, metavar="F",
                   help="hold out this fraction of the training data for validation, "
                        "chosen from --seed and never trained on (None = no split)")


def split_indices(n: int, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train rows, validation rows)`` of ``n`` samples, both ascending, disjoint and
    together every row; ``round(frac * n)`` (at least 1) rows are held out, chosen by
    ``seed`` alone."""
    k = min(n - 1, max(1, round(frac * n)))
    if n < 2:
        raise DataError(f"--valid-split needs at least 2 samples, the data has {n}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, SPLIT_SALT]))
    held = np.zeros(n, dtype=bool)
    held[rng.permutation(n)[:k]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def _rows(a: Any, idx: np.ndarray) -> np.ndarray:
    return np.take(np.asarray(a), idx, axis=0)


def validation_set(args: argparse.Namespace, ini: IniModel | None, model: Model, x: Any,
                   y: np.ndarray) -> tuple[Any, np.ndarray, Any, Any]:
    """``(x, y, x_valid, y_valid)``: the training data (the rest of it with
    ``--valid-split``) and the validation set, or ``None`` for both without validation."""
    from .data import load_dataset

    if args.valid_data is not None and args.valid_split is not None:
        raise ConfigError("give --valid-data or --valid-split, not both")
    if args.valid_split is not None:
        tr, va = split_indices(len(x), args.valid_split, args.seed)
        return _rows(x, tr), _rows(y, tr), _rows(x, va), _rows(y, va)
    if args.valid_data is not None:
        xv, yv = load_dataset(args.valid_data)
        return x, y, xv, yv
    if ini is not None and "valid" in ini.datasets:  # the INI's own [valid_set]
        xv, yv = ini.load_data("valid", model)
        return x, y, xv, yv
    return x, y, None, None


@dataclass
class Validator:
    """Evaluates ``model`` on the prepared validation set at each epoch's end."""

    model: Model
    xs: np.ndarray
    ys: np.ndarray
    per_epoch: int  # training steps per epoch
    total: int  # training steps of the run
    quiet: bool  # --json: no lines, only the records
    batch: int = 0
    epochs: list[dict[str, float]] = field(default_factory=list)
    _losses: list[float] = field(default_factory=list)

    def warm_up(self) -> None:
        """Evaluate one sample, before compile: inference kernels are compiled (numba) and
        loaded now, into the baseline, not inside the training window."""
        self.model.evaluate(self.xs[:1], self.ys[:1], 1)

    def pick_batch(self, train_batch: int, headroom: int | None) -> int:
        """The largest batch up to ``train_batch`` whose inference pools fit ``headroom``
        bytes (no cap: ``None``); refuse before training if even batch 1 does not."""
        n = len(self.xs)
        b = min(train_batch, n)
        if headroom is None:
            self.batch = b
            return b
        while True:
            need = self.need(b)
            if need <= headroom:
                self.batch = b
                return b
            if b == 1:
                cap = self.model.ram_cap or 0
                raise MemoryCapExceeded(needed=cap - headroom + need, cap=cap,
                                        detail="validation does not fit beside the training "
                                        "step; raise the cap or drop --valid-data/--valid-split")
            b = max(1, b // 2)

    def need(self, b: int) -> int:
        """Bytes the evaluation at batch ``b`` adds: the inference pools it builds (batch
        ``b``, the last partial batch and the batch-1 probe ``evaluate`` makes)."""
        from .stepplan import StepPlan

        sizes = {b, len(self.xs) % b or b, 1}
        m = self.model
        return sum(StepPlan(m._graph(s, backward=False, with_loss=True), m.planner).plan.pool_bytes
                   + EXECUTOR_SLACK for s in sizes)

    def step(self, step: int, loss: float) -> None:
        """The training loop's callback: after step ``step`` (0-based) with ``loss``."""
        self._losses.append(loss)
        if (step + 1) % self.per_epoch and step + 1 != self.total:
            return
        res = self.model.evaluate(self.xs, self.ys, self.batch)
        rec = {"epoch": math.ceil((step + 1) / self.per_epoch), "steps": step + 1,
               "train_loss": float(np.mean(self._losses)), "valid_loss": float(res["loss"])}
        if "accuracy" in res:
            rec["valid_accuracy"] = float(res["accuracy"])
        self._losses.clear()
        self.epochs.append(rec)
        if not self.quiet:
            acc = f"  valid accuracy {rec['valid_accuracy']:.2%}" if "valid_accuracy" in rec else ""
            print(f"epoch {rec['epoch']:3d}  train loss {rec['train_loss']:.4f}  "
                  f"valid loss {rec['valid_loss']:.4f}{acc}", flush=True)

    def report(self) -> dict[str, Any]:
        """What ``--json`` adds: the per-epoch records and the set's size and batch."""
        return {"epochs": self.epochs, "valid_samples": len(self.xs),
                "valid_batch_size": self.batch,
                "valid_planned_bytes": self.need(self.batch) if self.batch else 0}


def make(model: Model, xv: Any, yv: Any, per_epoch: int, total: int,
         quiet: bool) -> Validator | None:
    """A :class:`Validator` for the raw validation set, prepared as training data is."""
    if xv is None:
        return None
    xs = model.prepare_x(xv, "valid x")
    ys, kind = model.prepare_y(yv, xs.shape[0])
    if kind != model.label_kind:
        what = {"index": "class ids", "dense": "float targets"}
        raise DataError(f"the validation labels are {what[kind]}, the training labels "
                        f"{what[model.label_kind]}")
    return Validator(model, xs, ys, max(1, per_epoch), total, quiet)
