"""Realize a layer list into a graph and give every node its execution orders.

Realization (after NNTrainer's realizers): ``activation=`` and ``flatten=`` properties
become nodes of their own, a multi-output node is inserted wherever one output feeds
several layers, and the loss is attached to the single output. Execution orders: forward
orders follow topological order; then, walking the graph in reverse, each node gets
calc-gradient (CG), calc-derivative (CD) and apply-gradient (AG) orders. CG before CD
lets a layer overwrite its output derivative in place during CD; AG after CD because CD
still needs the old weights. Frozen layers get no CG/AG, and no CD where nothing
upstream is trainable.
"""

from __future__ import annotations

import heapq
import re
from dataclasses import dataclass, field

from .errors import ModelError
from .layers import create_layer
from .layers.base import AG, CD, CG, F, FinalizeContext, Layer, Shape
from .layers.loss import Loss

_REF = re.compile(r"^\s*([^()\s]+)\s*(?:\(\s*(\d+)\s*\))?\s*$")


@dataclass
class Node:
    """One layer in the graph, with what the graph decided for it."""

    layer: Layer
    inputs: list[tuple[str, int]] = field(default_factory=list)  # (producer, output index)
    orders: dict[str, int] = field(default_factory=dict)  # phase -> execution order
    has_cg: bool = False  # computes weight gradients
    has_cd: bool = False  # computes input derivatives
    fused: bool = False  # applies its gradients block by block in CG (no AG)

    @property
    def name(self) -> str:
        return self.layer.name


class Graph:
    """A realized, finalized graph in topological order, with execution orders."""

    def __init__(self, layers: list[Layer], loss: Loss | None, ctx: FinalizeContext,
                 clip_grad: float | None = None, fuse_apply: bool = True) -> None:
        if not layers:
            raise ModelError("the model has no layers")
        if ctx.batch < 1:
            raise ModelError(f"batch size must be >= 1, got {ctx.batch}")
        self.context = ctx
        self.batch = ctx.batch
        self.backward = backward = ctx.training
        self.nodes = _realize(layers)
        self.folded_activation: str | None = None
        if loss is not None:
            self._attach_loss(loss)
        self.by_name = {n.name: n for n in self.nodes}
        self._finalize_shapes()
        self.clip_grad = clip_grad
        # Fused apply: a layer computes its gradients in blocks and applies each block at
        # once, so no full gradient ever exists. Not with clipping (needs every gradient).
        self.fuse_apply = bool(fuse_apply and backward and not clip_grad)
        self.num_orders = self._assign_orders()

    # ------------------------------------------------------------------ building
    def _attach_loss(self, loss: Loss) -> None:
        outs = self.outputs()
        if len(outs) != 1:
            names = ", ".join(f"{p}({i})" for p, i in outs)
            raise ModelError(f"a loss needs exactly one model output, found {len(outs)}: {names}")
        prod, idx = outs[0]
        last = next(n for n in self.nodes if n.name == prod)
        # A trailing softmax/sigmoid is folded into the matching cross-entropy (NNTrainer's
        # `loss = cross` does the same): the loss computes it stably from the logits.
        act = last.layer.activation_name()
        if loss.folds is not None and loss.folds == act and len(last.inputs) == 1 \
                and not self._consumers(prod):
            self.nodes.remove(last)
            self.folded_activation = act
            prod, idx = last.inputs[0]
        self.nodes.append(Node(loss, [(prod, idx)]))

    def outputs(self) -> list[tuple[str, int]]:
        """Outputs that no node consumes."""
        used = {ref for n in self.nodes for ref in n.inputs}
        return [(n.name, k) for n in self.nodes for k in range(n.layer.num_outputs)
                if (n.name, k) not in used and not isinstance(n.layer, Loss)]

    def _consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if any(p == name for p, _ in n.inputs)]

    def _finalize_shapes(self) -> None:
        shapes: dict[tuple[str, int], Shape] = {}
        for node in self.nodes:
            lay = node.layer
            missing = [ref for ref in node.inputs if ref not in shapes]
            if missing:
                p, k = missing[0]
                raise lay.fail(f"reads output {k} of '{p}', which has "
                               f"{self.by_name[p].layer.num_outputs} output(s)"
                               if p in self.by_name else f"reads '{p}', which is not a layer")
            in_shapes = [shapes[ref] for ref in node.inputs]
            if not (lay.min_inputs <= len(in_shapes) <= lay.max_inputs):
                raise lay.fail(f"takes {lay.min_inputs}..{lay.max_inputs} inputs, got "
                               f"{len(in_shapes)} ({[p for p, _ in node.inputs]})")
            for k, s in enumerate(lay.setup(in_shapes, self.context)):
                lay.check_output(s, in_shapes)
                shapes[(node.name, k)] = s

    def _assign_orders(self) -> int:
        # Which nodes need derivatives: any trainable node at or upstream of them.
        upstream_trainable: dict[str, bool] = {}
        for node in self.nodes:
            upstream_trainable[node.name] = any(
                upstream_trainable[p] or self.by_name[p].layer.has_trainable_weights
                for p, _ in node.inputs)
        for order, node in enumerate(self.nodes):
            node.orders = {F: order}
        k = len(self.nodes)
        for node in reversed(self.nodes):
            lay = node.layer
            node.has_cg = self.backward and lay.has_trainable_weights
            node.has_cd = self.backward and upstream_trainable[node.name]
            node.fused = bool(self.fuse_apply and node.has_cg and lay.enable_fused_apply())
            if node.fused:  # CD reads the old weights, so it comes before the fused CG
                if node.has_cd:
                    node.orders[CD] = k
                    k += 1
                node.orders[CG] = k
                k += 1
                continue
            if node.has_cg:
                node.orders[CG] = k
                k += 1
            if node.has_cd:
                node.orders[CD] = k
                k += 1
            if node.has_cg and not self.clip_grad:
                node.orders[AG] = k
                k += 1
        if self.clip_grad:  # global-norm clipping needs every gradient before any update
            for node in reversed(self.nodes):
                if node.has_cg:
                    node.orders[AG] = k
                    k += 1
        return k

    # ------------------------------------------------------------------ queries
    def ops(self) -> list[tuple[int, Node, str]]:
        """Every (order, node, phase), sorted by order."""
        return sorted((o, n, ph) for n in self.nodes for ph, o in n.orders.items())

    def consumers_of(self, ref: tuple[str, int]) -> list[tuple[Node, int]]:
        return [(n, i) for n in self.nodes for i, r in enumerate(n.inputs) if r == ref]


def parse_ref(text: str) -> tuple[str, int]:
    """``"conv1"`` -> ("conv1", 0); ``"split(1)"`` -> ("split", 1)."""
    m = _REF.match(text)
    if not m:
        raise ModelError(f"bad input_layers entry {text!r} (expected NAME or NAME(INDEX))")
    return m.group(1), int(m.group(2) or 0)


def _realize(layers: list[Layer]) -> list[Node]:
    seen: set[str] = set()
    for lay in layers:
        key = lay.name.lower()
        if key in seen:
            raise ModelError(f"two layers are named '{lay.name}'")
        seen.add(key)
    nodes: list[Node] = []
    rename: dict[str, str] = {}  # layer name -> name of the node that now carries its output
    prev: str | None = None
    realized: set[str] = set()  # inserted nodes: their inputs are already final
    for lay in layers:
        if lay.input_layers is None:
            refs = [] if lay.type == "input" else ([(prev, 0)] if prev else [])
            if lay.type != "input" and prev is None:
                raise lay.fail("is the first layer but is not an input layer and has no "
                               "input_layers")
        else:
            refs = [parse_ref(s) for s in lay.input_layers]
        if lay.type == "input" and refs:
            raise lay.fail("an input layer takes no input_layers")
        nodes.append(Node(lay, refs))
        tail = lay.name
        act = lay.props.get("activation")
        if act not in (None, "", "none") and lay.type != "activation":
            a = create_layer("activation", f"{lay.name}/activation_realized",
                             {"activation": act, "trainable": lay.props.get("trainable", True)})
            nodes.append(Node(a, [(tail, 0)]))
            realized.add(a.name)
            tail = a.name
        if lay.props.get("flatten") is not None and str(lay.props["flatten"]).lower() == "true":
            fl = create_layer("flatten", f"{lay.name}/flatten_realized", {})
            nodes.append(Node(fl, [(tail, 0)]))
            realized.add(fl.name)
            tail = fl.name
        rename[lay.name] = tail
        prev = lay.name
    # Map references by lower-case names (NNTrainer names are case-insensitive).
    canon = {n.name.lower(): n.name for n in nodes}
    for n in nodes:
        fixed = []
        for p, i in n.inputs:
            target = p if n.name in realized else rename.get(
                canon.get(p.lower(), p), canon.get(p.lower(), p))
            if target.lower() not in canon:
                raise n.layer.fail(f"input_layers names '{p}', which is not a layer of the model")
            fixed.append((canon[target.lower()], i))
        n.inputs = fixed
    nodes = _toposort(nodes)
    return _insert_multiout(nodes)


def _toposort(nodes: list[Node]) -> list[Node]:
    """Stable topological order (file order where the file order is valid)."""
    for n in nodes:
        for p, _ in n.inputs:
            if p == n.name:
                raise n.layer.fail("takes its own output as input (a cycle)")
    # Kahn's algorithm, always taking the ready node that comes first in the file (a heap
    # of file positions): the order the file gives where it is valid, in O(n log n)
    waiting = [len(n.inputs) for n in nodes]  # inputs not placed yet, per node
    users: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for p, _ in n.inputs:
            users.setdefault(p, []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[Node] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for u in users.get(nodes[i].name, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(nodes):
        placed = {n.name for n in order}
        stuck = [n for n in nodes if n.name not in placed]
        names = ", ".join(n.name for n in stuck[:5])
        raise ModelError(f"the layer graph has a cycle through: {names}")
    return order


def _insert_multiout(nodes: list[Node]) -> list[Node]:
    out: list[Node] = []
    # who reads each output, in node and input order (one pass: linear in the graph)
    readers: dict[tuple[str, int], list[tuple[Node, int]]] = {}
    for m in nodes:
        for j, r in enumerate(m.inputs):
            readers.setdefault(r, []).append((m, j))
    for n in nodes:
        out.append(n)
        # outputs are only known after finalize; a layer may announce its count earlier
        for k in range(n.layer.declared_outputs):
            users = readers.get((n.name, k), [])
            if len(users) <= 1:
                continue
            mo = create_layer("multiout", f"{n.name}/multiout" + (f"({k})" if k else ""),
                              {"outputs": len(users)})
            out.append(Node(mo, [(n.name, k)]))
            for idx, (m, j) in enumerate(users):
                m.inputs[j] = (mo.name, idx)
    return out
