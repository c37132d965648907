"""Run a planned step: one pool for every tensor, views bound to the layers, a program.

The :class:`~device_runtime.stepplan.StepPlan` says where every tensor of a step lives
(records, blocks, swapped and rebuilt blocks, offsets); the executor holds that plan,
maps the pool, hands each layer its views, and turns the execution orders into a flat
list of calls (with swap I/O and replays at their orders).
"""

from __future__ import annotations

import math
import mmap
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from . import planner as P
from . import switches
from .errors import MemoryCapExceeded
from .kernels import optim as KO
from .layers.base import AG, CD, CG, Binding, F
from .layers.core import Input
from .layers.loss import Loss
from .stepplan import Record, StepPlan
from .swap import PAGE, SwapDevice
from .weights import WeightStore, memory_available

POISON = switches.flag("NNFLEET_POISON")

__all__ = ["Executor", "Record"]


class Executor:
    """A planned, bound graph for one batch size and mode (training or inference): runs
    exactly the :class:`StepPlan` it is given (the executor takes it over: its layers are
    bound to this executor's pool). ``poison`` defaults to ``NNFLEET_POISON``; swap files
    go to ``swap_dir`` (default: see :func:`swap.default_swap_dir`)."""

    def __init__(self, step: StepPlan, weights: WeightStore, optimizer: Any = None,
                 poison: bool | None = None, swap_dir: str | None = None,
                 pool: np.ndarray | None = None, swap_device: SwapDevice | None = None) -> None:
        # ``pool``/``swap_device``: another executor's, for a step laid out inside its plan
        # (device_runtime.tail: the last partial batch); they stay that executor's
        self.step = step
        self.graph = step.graph
        self.training = step.training
        self.slots = step.slots
        self.weights = weights
        self.optimizer = optimizer
        self.swap_device: SwapDevice | None = None
        self.guard: Any = None
        self.last_grad_norm: float | None = None
        self._owns_swap = swap_device is None
        self.tails: dict[int, Executor] = {}  # device_runtime.tail: partial batches, this pool
        self.runs = 0  # steps run (a fresh executor's pool is still untouched)
        if pool is None:
            self._allocate(POISON if poison is None else poison)
        else:
            assert pool.size >= step.plan.pool_bytes, "a shared pool must hold the plan"
            self.pool = pool
        if self.slots:
            off = 0
            for slot in self.slots:
                slot.nbytes = P.align(step.sizes[slot.group], PAGE)
                slot.file_offset = off
                off += slot.nbytes
            self.swap_device = swap_device or SwapDevice(off, swap_dir)
        self._bind()
        self._build_program()

    def _allocate(self, poison: bool) -> None:
        # An anonymous mapping of its own: page-aligned, untouched until used (so RSS
        # shows what a step really touches), and given back to the OS when freed, never
        # served from heap memory that malloc already holds.
        n = self.step.plan.pool_bytes
        avail = memory_available()
        if n > avail:  # refuse before mapping: a touched pool beyond it ends in the OOM killer
            raise MemoryCapExceeded(n, avail, "the step's pool does not fit this machine "
                                    "(a smaller batch?)", limit="the memory available")
        self._mmap = mmap.mmap(-1, max(n, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.pool = np.frombuffer(self._mmap, dtype=np.uint8, count=n)
        if poison:  # NaN for floats, -1 for ints: reading an unwritten tensor shows up
            self.pool.fill(0xFF)

    def view(self, i: int) -> np.ndarray:
        """Record ``i`` of the step plan as an array in the pool."""
        rec = self.step.records[i]
        off = self.step.plan.offsets[self.step.group(i)]
        return self.pool[off:off + rec.nbytes].view(rec.dtype).reshape(rec.shape)

    def _maybe_view(self, i: int | None) -> np.ndarray | None:
        return None if i is None else self.view(i)

    # ------------------------------------------------------------------ binding
    def _bind(self) -> None:
        st = self.step
        for node in self.graph.nodes:
            lay = node.layer
            outs = [(node.name, k) for k in range(len(lay.out_shapes))]
            lay.attach(Binding(
                x=[self.view(st.out_rec[r]) for r in node.inputs],
                dx=[self._maybe_view(st.dout_rec[r]) if node.has_cd else None
                    for r in node.inputs],
                y=[self.view(st.out_rec[ref]) for ref in outs],
                dy=[self._maybe_view(st.dout_rec[ref]) for ref in outs],
                w={w.name: self.weights.get(f"{lay.name}:{w.name}") for w in lay.weights},
                g={wn: self.view(i) for (nn, wn), i in st.grad_rec.items() if nn == node.name},
                t={tn: self.view(i) for (nn, tn), i in st.own_rec.items() if nn == node.name},
                has_cg=node.has_cg, has_cd=node.has_cd, fused=node.fused,
                apply=self._applier(lay.name) if node.fused else None))
        self.inputs = [n.layer for n in self.graph.nodes if isinstance(n.layer, Input)]
        losses = [n.layer for n in self.graph.nodes if isinstance(n.layer, Loss)]
        self.loss: Loss | None = losses[0] if losses else None
        ref = self.graph.nodes[-1].inputs[0] if self.loss is not None else self.graph.outputs()[0]
        self.output = self.view(st.out_rec[ref])

    def _build_program(self) -> None:
        prog: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        first_ag = True
        zeroed: set[str] = set()
        pre: dict[int, list[tuple[int, Callable[..., None], tuple[Any, ...]]]] = {}
        post: dict[int, list[tuple[Callable[..., None], tuple[Any, ...]]]] = {}
        dev = self.swap_device
        st = self.step
        for slot in self.slots:
            assert dev is not None  # slots exist only with a swap device
            # the whole page-rounded slot moves, so O_DIRECT sees aligned lengths
            off = st.plan.offsets[slot.group]
            view = self.pool[off:off + slot.nbytes]
            wdone, rdone = threading.Event(), threading.Event()
            wdone.set()
            rdone.set()
            post.setdefault(slot.out_after, []).append(
                (dev.submit, ("w", view, slot.file_offset, wdone)))
            # before an order's op: finish writes whose bytes are reused now (0), start the
            # reads due now (1), then wait for the reads it needs (2); with lookahead 0 the
            # same read is started and awaited at one order, so this order matters
            pre.setdefault(slot.write_done, []).append((0, dev.wait, (wdone,)))
            pre.setdefault(slot.read_at, []).append(
                (1, dev.submit, ("r", view, slot.file_offset, rdone)))
            pre.setdefault(slot.need_at, []).append((2, dev.wait, (rdone,)))
        for need, chain, _ in sorted(st.recomputed.values(), key=lambda r: r[2][0][0]):
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
            if phase in (CG, CD) and node.name in st.zero_douts and node.name not in zeroed:
                zeroed.add(node.name)
                for d in st.zero_douts[node.name]:
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
        self.all_grads = [self.view(i).reshape(-1) for i in st.grad_rec.values()]

    def _applier(self, layer_name: str) -> Callable[[str, int, np.ndarray, np.ndarray], None]:
        opt, prefix = self.optimizer, layer_name + ":"

        def apply(wname: str, start: int, w: np.ndarray, g: np.ndarray) -> None:
            opt.apply(prefix + wname, w, g, start)
        return apply

    # ------------------------------------------------------------------ running
    def _feed_input(self, lay: Input) -> None:
        # mode="clip": with the default "raise", numpy buffers `out` (a hidden temporary);
        # indices come from our own batching and are always in range.
        np.take(self._x, self._idx, axis=0, out=self._x_dst[lay.name], mode="clip")

    def _feed_label(self) -> None:
        assert self.loss is not None and self._y is not None
        np.take(self._y, self._idx, axis=0, out=self._y_dst, mode="clip")

    def _clip(self) -> None:
        # torch.nn.utils.clip_grad_norm_: scale by min(max_norm / (norm + 1e-6), 1).
        total = 0.0
        for g in self.all_grads:
            total += KO.global_sq_norm(g)
        norm = math.sqrt(total)
        self.last_grad_norm = norm
        assert self.graph.clip_grad is not None  # only scheduled when set
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
        self.runs += 1
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
        """One row per tensor of the step: kind, shape, bytes, interval, offset, block."""
        st = self.step
        rows = []
        swapped = {s.group for s in self.slots}
        rebuilt = set(st.recomputed)
        for i, rec in enumerate(st.records):
            g = st.group(i)
            iv = st.intervals[g]
            rows.append({"name": rec.name, "kind": rec.kind, "shape": list(rec.shape),
                         "dtype": str(rec.dtype), "bytes": rec.nbytes,
                         "interval": [iv[0][0], iv[-1][1]], "stretches": [list(p) for p in iv],
                         "offset": st.plan.offsets[g], "group": g, "swapped": g in swapped,
                         "recomputed": g in rebuilt})
        return rows

    def close(self) -> None:
        """Release the swap file and its thread (and a swapped accumulator's file)."""
        if self.swap_device is not None and self._owns_swap:
            self.swap_device.close()
        close = getattr(self.optimizer, "close", None)
        if close is not None:
            close()
