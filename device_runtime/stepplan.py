"""The tensors of a training step and where they live: records, in-place groups,
recomputed and swapped blocks, and the pool layout.

Every tensor of a step (layer outputs, their derivatives, weight gradients, scratch and
labels) is a record whose uses are execution orders. In-place layers make their output
a view of their input (and their input derivative a view of their output derivative):
such records form a group, planned as one block whose stretches cover all of its members.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import planner as P
from .graph import Graph, Node
from .layers.base import AG, CD, CG, F
from .swap import PAGE, SwapSlot, find_slots, stretches

# Layers that declare ``in_place_forward_only`` (conv, batch norm) write their output over
# their input when they run no backward (frozen, inference). Off only to test that it
# changes no number.
FORWARD_ONLY_IN_PLACE = True


@dataclass
class Record:
    """One tensor of the step."""

    name: str
    shape: tuple[int, ...]
    dtype: Any
    kind: str  # output | derivative | gradient | scratch | label
    uses: set[int] = field(default_factory=set)

    @property
    def nbytes(self) -> int:
        return int(math.prod(self.shape)) * np.dtype(self.dtype).itemsize


class StepPlan:
    """Records, groups and the planned layout of one graph (no memory allocated).

    ``swap`` is "off" (no block swapped) or "on" (every candidate); :meth:`use` lays the
    step out with another set of swapped blocks (the cap fit tries several). ``remat``
    names layers (``rematerializable``: convolutions) whose output blocks are rebuilt
    before backward where the plan allows, at the cost of a replay (the cap fit picks them).
    """

    def __init__(self, graph: Graph, planner: str = P.DEFAULT_STRATEGY, swap: str = "off",
                 lookahead: int = 3, min_swap_bytes: int = 64 * 1024,
                 remat: Collection[str] = ()) -> None:
        assert swap in ("off", "on"), f"swap must be off or on, got {swap!r}"
        self.graph = graph
        self.remat = frozenset(remat)
        self.training = graph.backward
        self.strategy = planner
        self.lookahead = lookahead
        self.records: list[Record] = []
        self._parent: list[int] = []
        self._collect()
        self._alias_in_place()
        self._groups()
        self._find_recompute()
        self.candidates = self.swap_candidates(min_swap_bytes) if self.training else []
        self.unswapped_lower_bound = P.lower_bound(self.sizes, self.hulls)
        self.naive_bytes = sum(P.align(s) for s in self.sizes)
        self.use(self.candidates if swap == "on" else [])

    def use(self, slots: list[SwapSlot],
            laid_out: tuple[P.Plan, list[Any]] | None = None) -> StepPlan:
        """Swap exactly ``slots`` (candidates of this plan) and lay the step out for them;
        ``laid_out`` is what :meth:`layout` returned for them, when already computed."""
        self.slots = list(slots)
        self.plan, self.intervals = laid_out or self.layout(self.slots)
        self.alignment = PAGE if self.slots else 64
        self.lower_bound = P.lower_bound(self.sizes, self.intervals, self.alignment)
        return self

    def group(self, i: int) -> int:
        """The block (alias group) record ``i`` lives in."""
        return self.group_of[self._find(i)]

    def _new(self, name: str, shape: tuple[int, ...], dtype: Any, kind: str,
             uses: set[int]) -> int:
        self.records.append(Record(name, tuple(shape), np.dtype(dtype), kind, set(uses)))
        self._parent.append(len(self._parent))
        return len(self.records) - 1

    def _collect(self) -> None:
        self.out_rec: dict[tuple[str, int], int] = {}
        self.dout_rec: dict[tuple[str, int], int | None] = {}
        self.grad_rec: dict[tuple[str, str], int] = {}
        self.own_rec: dict[tuple[str, str], int] = {}
        self.zero_douts: dict[str, list[int]] = {}
        for node in self.graph.nodes:
            lay, o = node.layer, node.orders
            later = {o[ph] for ph in lay.output_needed if ph in o}
            for k, shape in enumerate(lay.out_shapes):
                self.out_rec[(node.name, k)] = self._new(f"{node.name}:out{k}", shape, np.float32,
                                                         "output", {o[F]} | later)
                needs_d = node.has_cg or node.has_cd
                self.dout_rec[(node.name, k)] = self._new(
                    f"{node.name}:dout{k}", shape, np.float32, "derivative",
                    {o[ph] for ph in (CG, CD) if ph in o}) if needs_d else None
            reads = {o[F]} | {o[ph] for ph in lay.input_needed if ph in o}
            for ref in node.inputs:
                self.records[self.out_rec[ref]].uses |= reads
                d = self.dout_rec[ref]
                if d is not None:
                    assert CD in o, f"{node.name} must write a derivative but has no CD order"
                    self.records[d].uses.add(o[CD])
            if node.has_cg and not node.fused:  # fused layers hold only gradient blocks
                for w in lay.weights:
                    if w.trainable:
                        self.grad_rec[(node.name, w.name)] = self._new(
                            f"{node.name}:{w.name}:grad", w.shape, np.float32, "gradient",
                            {o[CG], o[AG]})
            for t in lay.tensors:
                uses = {o[ph] for ph in t.phases if ph in o}
                if uses:
                    kind = "label" if t.name == "label" else "scratch"
                    self.own_rec[(node.name, t.name)] = self._new(
                        f"{node.name}:{t.name}", t.shape, t.dtype, kind, uses)

        # An output nobody reads still needs a derivative (zeros) for its own backward.
        consumed = {ref for n in self.graph.nodes for ref in n.inputs}
        for (name, k), d in self.dout_rec.items():
            if d is not None and (name, k) not in consumed:
                self.zero_douts.setdefault(name, []).append(d)

    # ------------------------------------------------------------------ aliasing
    def _find(self, i: int) -> int:
        while self._parent[i] != i:
            self._parent[i] = self._parent[self._parent[i]]
            i = self._parent[i]
        return i

    def _union(self, a: int, b: int) -> None:
        ra, rb = self._find(a), self._find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def _group_uses(self, i: int) -> set[int]:
        r = self._find(i)
        out: set[int] = set()
        for j, rec in enumerate(self.records):
            if self._find(j) == r:
                out |= rec.uses
        return out

    def _alias_in_place(self) -> None:
        for node in self.graph.nodes:
            lay = node.layer
            if lay.in_place == "no" and lay.grad_in_place and node.inputs:
                # output kept apart, but the input derivative may overwrite the output's
                dx, dy = self.dout_rec[node.inputs[0]], self.dout_rec[(node.name, 0)]
                if dx is not None and dy is not None and \
                        self.records[dx].nbytes == self.records[dy].nbytes:
                    self._union(dx, dy)
            mode = lay.in_place
            if mode == "no" and FORWARD_ONLY_IN_PLACE and not (node.has_cg or node.has_cd) and \
                    lay.in_place_forward_only:
                mode = "modify"  # e.g. a frozen conv: it may write over its own input
            if mode == "no" or not node.inputs:
                continue
            xi = self.out_rec[node.inputs[0]]
            xrec = self.records[xi]
            outs = [self.out_rec[(node.name, k)] for k in range(len(lay.out_shapes))]
            if any(self.records[y].nbytes != xrec.nbytes for y in outs):
                continue
            # Overwriting the input is only safe when no one reads its data later.
            if mode == "modify" and max(self._group_uses(xi)) > node.orders[F]:
                continue
            for y in outs:
                self._union(y, xi)
            dx, dy = self.dout_rec[node.inputs[0]], self.dout_rec[(node.name, 0)]
            if dx is not None and dy is not None:
                self._union(dx, dy)

    # ------------------------------------------------------------------ planning
    def _groups(self) -> None:
        """Blocks to plan: one per alias group, with every order at which it is used."""
        roots = sorted({self._find(i) for i in range(len(self.records))})
        self.group_of = {r: g for g, r in enumerate(roots)}
        self.sizes = [0] * len(roots)
        uses: list[set[int]] = [set() for _ in roots]
        for i, rec in enumerate(self.records):
            g = self.group_of[self._find(i)]
            self.sizes[g] = max(self.sizes[g], rec.nbytes)
            uses[g] |= rec.uses
        self.group_uses = [sorted(u) for u in uses]
        self.hulls = [(u[0], u[-1] + 1) for u in self.group_uses]

    def _find_recompute(self) -> None:
        """Blocks rebuilt before backward instead of kept: a batch-norm output (from its
        kept input and batch statistics) and the in-place layers on it (activation,
        addition). Such a block lives in two stretches: its forward uses, and from its
        first backward use on, when its layers replay. A replay reads other blocks; those
        must be in memory then (a rebuilt one is rebuilt earlier, a kept one counts the
        replay as a use, so it is neither planned away nor swapped out)."""
        self.recomputed: dict[int, tuple[int, list[Any], list[tuple[int, int]]]] = {}
        self.split: dict[int, list[tuple[int, int]]] = {}  # forward scratch used again
        if not self.training:
            return
        n_fwd = len(self.graph.nodes)

        def gof(ref: tuple[str, int]) -> int:
            return self.group_of[self._find(self.out_rec[ref])]

        writers: dict[int, list[Node]] = {}
        for node in self.graph.nodes:  # topological order: a block's writers in run order
            for k in range(len(node.layer.out_shapes)):
                writers.setdefault(gof((node.name, k)), []).append(node)
        cands: dict[int, list[Any]] = {}
        for g, nodes in writers.items():
            first = nodes[0]
            chosen = first.layer.rematerializable and first.name in self.remat
            if not ((first.layer.recompute or chosen) and first.layer.replayable):
                continue
            chain = [n for n in nodes if n.layer.in_place != "view"]
            if not all(n.layer.replayable for n in chain):
                continue
            if chosen and not first.layer.recompute and \
                    self.sizes[g] <= self._forward_scratch_bytes(chain):
                continue  # its replay's scratch would cost more than the block saves
            uses = self.group_uses[g]
            fwd = [u for u in uses if u < n_fwd]
            bwd = [u for u in uses if u >= n_fwd]
            if fwd and bwd and bwd[0] > fwd[-1] + 1:
                cands[g] = [bwd[0], chain, fwd[-1] + 1]
        # a replay may read only what is in memory then: a kept block alive at that order,
        # or a rebuilt one already rebuilt. Where a rebuilt block is needed by another's
        # replay before its own rebuild and either is costly (a chosen conv's), it is
        # rebuilt earlier, at that replay (conv -> batch norm: the conv's output first,
        # then the norm's); between cheap ones (batch norms) the later is kept instead
        # (pulling rebuilds earlier would cascade down a whole residual stage)
        costly = {g for g, c in cands.items() if not c[1][0].layer.recompute}

        def blocker(g: int) -> int | None:
            need = cands[g][0]
            for node in cands[g][1]:
                for p in sorted({gof(r) for r in node.inputs} - {g}):
                    alive = cands[p][0] <= need if p in cands else \
                        self.hulls[p][0] <= need < self.hulls[p][1]
                    if not alive:
                        return p
            return None

        changed = True
        while changed:
            changed = False
            for g in list(cands):
                p = blocker(g) if g in cands else None
                if p is None:
                    continue
                changed = True
                if p in cands and (p in costly or g in costly) and cands[g][0] > cands[p][2]:
                    cands[p][0] = cands[g][0]
                else:
                    del cands[p if p in costly and g not in costly else g]
        for g, (need, chain, fwd_end) in cands.items():
            if need <= fwd_end:
                continue
            for node in chain:
                for p in {gof(r) for r in node.inputs} - {g} - set(cands):
                    if need not in self.group_uses[p]:
                        self.group_uses[p] = sorted([*self.group_uses[p], need])
            self._replay_scratch(chain, need)
            first_use = self.group_uses[g][0]
            self.recomputed[g] = (need, [n.layer for n in chain],
                                  [(first_use, fwd_end), (need, self.group_uses[g][-1] + 1)])

    def _forward_scratch(self, chain: list[Node]) -> list[tuple[int, int]]:
        """``(forward order, record)`` of each own tensor of ``chain`` its forward uses."""
        out = []
        for node in chain:
            at = node.orders[F]
            for t in node.layer.tensors:
                r = self.own_rec.get((node.name, t.name))
                if r is not None and at in self.records[r].uses:
                    out.append((at, r))
        return out

    def _replay_scratch(self, chain: list[Node], need: int) -> None:
        """A replay runs forward code again at ``need``: the forward scratch of its layers
        lives again then (a stretch of its own when only the forward uses it: nothing is
        kept in between), and scratch kept for backward (a ReLU's mask, written again with
        the same bits) is in memory then: never swapped out across it."""
        for at, r in self._forward_scratch(chain):
            s = self.group(r)
            if self.group_uses[s] == [at]:
                self.split[s] = [(at, at + 1), (need, need + 1)]
            elif need not in self.group_uses[s]:
                self.group_uses[s] = sorted([*self.group_uses[s], need])

    def _forward_scratch_bytes(self, chain: list[Node]) -> int:
        """Bytes of the scratch only the forward of ``chain`` uses (live again at a replay)."""
        return sum(self.records[r].nbytes for at, r in self._forward_scratch(chain)
                   if self.records[r].uses == {at})

    def remat_ranking(self) -> list[str]:
        """Layers whose blocks this plan rebuilds at a cost (named in ``remat``), best
        first: bytes times idle orders freed per FLOP of replay."""
        score = {}
        for g, (need, chain, iv) in self.recomputed.items():
            head = chain[0]
            if head.name in self.remat:
                score[head.name] = self.sizes[g] * (need - iv[0][1]) / max(1, head.replay_flops())
        return sorted(score, key=lambda name: -score[name])

    def swap_candidates(self, min_bytes: int = 64 * 1024) -> list[SwapSlot]:
        """Blocks worth swapping, most bytes x idle orders first."""
        out = []
        for g, u in enumerate(self.group_uses):
            if self.sizes[g] >= min_bytes and g not in self.recomputed and g not in self.split:
                out.extend(find_slots(g, u, self.lookahead))
        out.sort(key=lambda s: -(s.read_at - s.write_done) * self.sizes[s.group])
        return out

    def layout(self, slots: list[SwapSlot]) -> tuple[P.Plan, list[Any]]:
        """Plan with these blocks swapped (two stretches each, page-aligned for O_DIRECT)."""
        by_group: dict[int, list[SwapSlot]] = {}
        for slot in slots:
            by_group.setdefault(slot.group, []).append(slot)
        intervals = [self.recomputed[g][2] if g in self.recomputed else self.split[g]
                     if g in self.split else stretches(u, by_group.get(g, []))
                     for g, u in enumerate(self.group_uses)]
        alignment = PAGE if slots else 64
        return P.plan_layout(self.sizes, intervals, self.strategy, alignment), intervals
