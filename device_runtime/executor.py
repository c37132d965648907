"""Turn a graph into tensors with intervals, plan them into one pool, and run steps.

Every tensor of a step (layer outputs, their derivatives, weight gradients, scratch and
labels) is a view into one preallocated pool. A tensor's validity interval is the
half-open range ``[first order it is used, last order + 1)``. In-place layers make their
output a view of their input (and their input derivative a view of their output
derivative): such tensors are grouped, and a group is planned as one block whose
interval covers all of its members.
"""

from __future__ import annotations

import math
import mmap
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import planner as P
from .graph import Graph
from .kernels import optim as KO
from .layers.base import AG, CD, CG, F
from .layers.core import Input
from .layers.loss import Loss
from .stepplan import Record, StepPlan
from .swap import PAGE, SwapDevice
from .errors import MemoryCapExceeded
from .weights import WeightStore, memory_available
from . import switches

POISON = switches.flag("NNFLEET_POISON")

__all__ = ["Executor", "Record"]


class Executor(StepPlan):
    """A planned, bound graph for one batch size and mode (training or inference)."""

    def __init__(self, graph: Graph, weights: WeightStore, planner: str = P.DEFAULT_STRATEGY,
                 optimizer: Any = None, poison: bool = POISON, swap: Any = "off",
                 lookahead: int = 3, swap_dir: str | None = None,
                 min_swap_bytes: int = 64 * 1024, allocate: bool = True) -> None:
        super().__init__(graph, planner, swap, lookahead, min_swap_bytes)
        self.weights = weights
        self.optimizer = optimizer
        self.swap_device: SwapDevice | None = None
        self.guard: Any = None
        if not allocate:
            return
        self._allocate(poison)
        if self.slots:
            off = 0
            for slot in self.slots:
                slot.nbytes = P.align(self.sizes[slot.group], PAGE)
                slot.file_offset = off
                off += slot.nbytes
            self.swap_device = SwapDevice(off, swap_dir)
        self._bind()
        self._build_program()

    def _allocate(self, poison: bool) -> None:
        # An anonymous mapping of its own: page-aligned, untouched until used (so RSS
        # shows what a step really touches), and given back to the OS when freed, never
        # served from heap memory that malloc already holds.
        n = self.plan.pool_bytes
        avail = memory_available()
        if n > avail:  # refuse before mapping: a touched pool beyond it ends in the OOM killer
            raise MemoryCapExceeded(n, avail, "the step's pool does not fit this machine "
                                    "(a smaller batch?)", limit="the memory available")
        self._mmap = mmap.mmap(-1, max(n, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.pool = np.frombuffer(self._mmap, dtype=np.uint8, count=n)
        if poison:  # NaN for floats, -1 for ints: reading an unwritten tensor shows up
            self.pool.fill(0xFF)

    def view(self, i: int) -> np.ndarray:
        rec = self.records[i]
        off = self.plan.offsets[self.group_of[self._find(i)]]
        return self.pool[off:off + rec.nbytes].view(rec.dtype).reshape(rec.shape)

    # ------------------------------------------------------------------ binding
    def _bind(self) -> None:
        for node in self.graph.nodes:
            lay = node.layer
            io = lay.io
            io.x = [self.view(self.out_rec[r]) for r in node.inputs]
            io.dx = [None if self.dout_rec[r] is None or not lay.has_cd
                     else self.view(self.dout_rec[r]) for r in node.inputs]
            io.y = [self.view(self.out_rec[(node.name, k)]) for k in range(len(lay.out_shapes))]
            io.dy = [None if self.dout_rec[(node.name, k)] is None
                     else self.view(self.dout_rec[(node.name, k)])
                     for k in range(len(lay.out_shapes))]
            lay.w = {w.name: self.weights.get(f"{lay.name}:{w.name}") for w in lay.weights}
            lay.g = {wn: self.view(i) for (nn, wn), i in self.grad_rec.items() if nn == node.name}
            lay.t = {tn: self.view(i) for (nn, tn), i in self.own_rec.items() if nn == node.name}
            if lay.fused:
                lay.apply = self._applier(lay)  # type: ignore[method-assign]
            lay.bind()
        self.inputs = [n.layer for n in self.graph.nodes if isinstance(n.layer, Input)]
        losses = [n.layer for n in self.graph.nodes if isinstance(n.layer, Loss)]
        self.loss: Loss | None = losses[0] if losses else None
        ref = self.graph.nodes[-1].inputs[0] if self.loss is not None else self.graph.outputs()[0]
        self.output = self.view(self.out_rec[ref])

    def _build_program(self) -> None:
        prog: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        first_ag = True
        zeroed: set[str] = set()
        pre: dict[int, list[tuple[int, Callable[..., None], tuple[Any, ...]]]] = {}
        post: dict[int, list[tuple[Callable[..., None], tuple[Any, ...]]]] = {}
        dev = self.swap_device
        for slot in self.slots:
            # the whole page-rounded slot moves, so O_DIRECT sees aligned lengths
            off = self.plan.offsets[slot.group]
            view = self.pool[off:off + slot.nbytes]
            wdone, rdone = threading.Event(), threading.Event()
            wdone.set()
            rdone.set()
            post.setdefault(slot.out_after, []).append((dev.submit, ("w", view, slot.file_offset, wdone)))
            # before an order's op: finish writes whose bytes are reused now (0), start the
            # reads due now (1), then wait for the reads it needs (2); with lookahead 0 the
            # same read is started and awaited at one order, so this order matters
            pre.setdefault(slot.write_done, []).append((0, dev.wait, (wdone,)))
            pre.setdefault(slot.read_at, []).append((1, dev.submit, ("r", view, slot.file_offset, rdone)))
            pre.setdefault(slot.need_at, []).append((2, dev.wait, (rdone,)))
        for need, chain, _ in sorted(self.recomputed.values(), key=lambda r: r[2][0][0]):
            pre.setdefault(need, []).extend((3, lay.replay, ()) for lay in chain)
        pre_ops = {o: [(fn, args) for _, fn, args in sorted(ops, key=lambda op: op[0])]
                   for o, ops in pre.items()}
        last = -1
        for order, node, phase in self.graph.ops():
            lay = node.layer
            if order != last:
                prog.extend(post.get(last, []))
                prog.extend(pre_ops.get(order, []))
                last = order
            if phase in (CG, CD) and node.name in self.zero_douts and node.name not in zeroed:
                zeroed.add(node.name)
                for d in self.zero_douts[node.name]:
                    prog.append((self.view(d).fill, (0.0,)))
            if phase == F:
                if isinstance(lay, Input):
                    prog.append((self._feed_input, (lay,)))
                elif lay is self.loss:
                    prog.append((self._feed_label, ()))
                prog.append((lay.forward, (self.training,)))
            elif phase == CG:
                prog.append((lay.calc_gradient, ()))
            elif phase == CD:
                prog.append((lay.calc_derivative, ()))
            elif phase == AG:
                if first_ag and self.graph.clip_grad:
                    prog.append((self._clip, ()))
                first_ag = False
                for w in lay.weights:
                    if w.trainable:
                        key = f"{lay.name}:{w.name}"
                        prog.append((self.optimizer.apply,
                                     (key, lay.w[w.name].reshape(-1), lay.g[w.name].reshape(-1))))
        prog.extend(post.get(last, []))
        self.program = prog
        self.all_grads = [self.view(i).reshape(-1) for i in self.grad_rec.values()]

    def _applier(self, lay: Any) -> Callable[[str, int, np.ndarray, np.ndarray], None]:
        opt, prefix = self.optimizer, lay.name + ":"

        def apply(wname: str, start: int, w: np.ndarray, g: np.ndarray) -> None:
            opt.apply(prefix + wname, w, g, start)
        return apply

    # ------------------------------------------------------------------ running
    def _feed_input(self, lay: Input) -> None:
        # mode="clip": with the default "raise", numpy buffers `out` (a hidden temporary);
        # indices come from our own batching and are always in range.
        np.take(self._x, self._idx, axis=0, out=self._x_dst[lay.name], mode="clip")

    def _feed_label(self) -> None:
        assert self.loss is not None
        np.take(self._y, self._idx, axis=0, out=self._y_dst, mode="clip")

    def _clip(self) -> None:
        # torch.nn.utils.clip_grad_norm_: scale by min(max_norm / (norm + 1e-6), 1).
        total = 0.0
        for g in self.all_grads:
            total += KO.global_sq_norm(g)
        norm = math.sqrt(total)
        self.last_grad_norm = norm
        coef = min(self.graph.clip_grad / (norm + 1e-6), 1.0)
        for g in self.all_grads:
            KO.scale_inplace(g, coef)

    def set_source(self, x: np.ndarray, y: np.ndarray | None) -> None:
        """Point the feeders at a data set: ``x`` (N, features) float32, ``y`` labels."""
        self._x = x
        self._y = y
        b = self.graph.batch
        self._x_dst = {lay.name: lay.io.y[0].reshape(b, x.shape[1]) for lay in self.inputs}
        if y is not None and self.loss is not None:
            self._y_dst = self.loss.label.reshape((b,) + y.shape[1:])

    def run(self, idx: np.ndarray) -> float:
        """One step (training: forward+backward+updates; inference: forward) on rows ``idx``."""
        self._idx = idx
        guard = self.guard
        if guard is None:
            for fn, args in self.program:
                fn(*args)
        else:  # under a RAM cap: stop between operations once the sampler saw it crossed
            for fn, args in self.program:
                fn(*args)
                if guard.exceeded:
                    guard.check()
        return self.loss.value if self.loss is not None else 0.0

    # ------------------------------------------------------------------ reporting
    def table(self) -> list[dict[str, Any]]:
        rows = []
        swapped = {s.group for s in self.slots}
        rebuilt = set(self.recomputed)
        for i, rec in enumerate(self.records):
            g = self.group_of[self._find(i)]
            iv = self.intervals[g]
            rows.append({"name": rec.name, "kind": rec.kind, "shape": list(rec.shape),
                         "dtype": str(rec.dtype), "bytes": rec.nbytes,
                         "interval": [iv[0][0], iv[-1][1]], "stretches": [list(p) for p in iv],
                         "offset": self.plan.offsets[g], "group": g, "swapped": g in swapped,
                         "recomputed": g in rebuilt})
        return rows

    def close(self) -> None:
        """Release the swap file and its thread."""
        if self.swap_device is not None:
            self.swap_device.close()
