"""PyTorch reference: the same realized graph, the same weights, as a ``torch.nn.Module``.

:func:`to_torch` walks a model's realized graph (activations, flattens and multi-output
nodes already made explicit) and builds a small DAG executor over ``nn.Module``s and
functional ops, NCHW, with the model's current weights copied in. It is the independent
reference of the end-to-end tests and the torch side of the memory benchmark, so it is
written the way one would write the model in PyTorch by hand: intermediate values are
dropped after their last use, and ReLUs run in place where torchvision's models do.

This module imports torch; ``device_runtime`` never imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from device_runtime.layers.conv import resolve_padding
from device_runtime.layers.loss import Loss

Ref = tuple[str, int]

# Producers whose output nothing else needs for backward: a ReLU may overwrite it.
_INPLACE_OK = frozenset({"conv2d", "fully_connected", "batch_normalization", "addition"})


@dataclass
class _Step:
    name: str
    kind: str
    attr: str | None  # submodule attribute holding the weights, if any
    inputs: list[Ref]
    num_outputs: int
    fn: Callable[..., Any]  # (submodule or None, inputs) -> output(s); captures no module
    drop: list[Ref]  # values whose last reader is this step


class GraphModule(nn.Module):
    """A DAG of torch ops, one step per node of an nnfleet graph.

    ``param_map`` maps nnfleet keys (``"layer:param"``) to (submodule attribute,
    torch parameter/buffer name, transpose) so weights can be compared both ways.
    """

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[_Step] = []
        self.output_ref: Ref = ("", 0)
        self.input_shape: tuple[int, ...] = ()
        self.param_map: dict[str, tuple[str, str, bool]] = {}
        self.folded_activation: str | None = None
        self.loss_name = "cross_softmax"
        self.apply_folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vals: dict[Ref, torch.Tensor] = {}
        for st in self.steps:
            ins = [vals[r] for r in st.inputs]
            sub = getattr(self, st.attr) if st.attr is not None else None
            out = st.fn(x, ins) if st.kind == "input" else st.fn(sub, ins)
            outs = out if isinstance(out, (list, tuple)) else [out]
            for k in range(st.num_outputs):
                vals[(st.name, k)] = outs[k]
            for r in st.drop:  # as in hand-written code: no reference outlives its use
                vals.pop(r, None)
        y = vals[self.output_ref]
        if self.apply_folded and self.folded_activation == "softmax":
            y = torch.softmax(y, dim=-1)
        elif self.apply_folded and self.folded_activation == "sigmoid":
            y = torch.sigmoid(y)
        return y

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The model's loss on the module's output (logits where a softmax/sigmoid is folded)."""
        if self.loss_name == "cross_softmax":
            return F.cross_entropy(out.reshape(-1, out.shape[-1]),
                                   y if y.dtype == torch.int64 else y.reshape(-1, out.shape[-1]))
        if self.loss_name == "cross_sigmoid":
            return F.binary_cross_entropy_with_logits(out.reshape(-1), y.reshape(-1))
        return F.mse_loss(out.reshape(-1), y.reshape(-1))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _activation(act: str, slope: float, inplace: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    if act == "relu":
        return (lambda v: F.relu(v, inplace=True)) if inplace else F.relu
    table: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "leaky_relu": lambda v: F.leaky_relu(v, slope),
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "softmax": lambda v: torch.softmax(v, dim=-1),
        "gelu": F.gelu,  # exact (erf) form, like nnfleet's
        "swish": F.silu,
    }
    if act not in table:
        raise ValueError(f"activation '{act}' has no torch mapping "
                         f"(known: relu, {', '.join(table)})")
    return table[act]


def to_torch(model: Any, batch: int = 1, inplace: bool = True, logits: bool = True) -> GraphModule:
    """An equivalent ``torch.nn.Module`` of ``model`` with its current weights.

    Parameters
    ----------
    model : device_runtime.Model
    batch : the batch size used to realize the graph (the module accepts any batch).
    inplace : run ReLU in place where its input is a fresh conv/fc/bn/add output, as
        torchvision does; it changes memory only, never the numbers.
    logits : when True (default) a trailing softmax/sigmoid that nnfleet folds into its
        loss is left out, so ``module.loss(out, y)`` matches nnfleet's loss; when False
        it is applied, so outputs match ``model.predict``.
    """
    g = model._graph(batch, backward=False, with_loss=True)
    nodes = [n for n in g.nodes if not isinstance(n.layer, Loss)]
    loss_node = g.nodes[-1]
    mod = GraphModule()
    mod.folded_activation = g.folded_activation
    mod.loss_name = loss_node.layer.type
    mod.apply_folded = not logits
    mod.output_ref = loss_node.inputs[0]
    # Who reads what, to drop values after their last reader (and to allow in-place ReLU).
    readers: dict[Ref, list[int]] = {}
    for i, n in enumerate(nodes):
        for r in n.inputs:
            readers.setdefault(r, []).append(i)
    kinds = {n.name: n.layer.type for n in nodes}
    for i, node in enumerate(nodes):
        lay = node.layer
        attr = f"m{i}"
        fn, sub = _convert(node, mod, attr, kinds, readers, inplace)
        if sub is not None:
            mod.add_module(attr, sub)
        drop = [r for r in node.inputs if max(readers[r]) == i and r != mod.output_ref]
        mod.steps.append(_Step(node.name, lay.type, attr if sub is not None else None,
                               list(node.inputs), len(lay.out_shapes), fn, drop))
    # Weights and running statistics, in nnfleet's layout converted to torch's.
    with torch.no_grad():
        for key, (attr, pname, transpose) in mod.param_map.items():
            a = model.weights.get(key)
            t = getattr(getattr(mod, attr), pname)
            t.copy_(_t(a.T if transpose else a))
    return mod


def _convert(node: Any, mod: GraphModule, attr: str, kinds: dict[str, str],
             readers: dict[Ref, list[int]], inplace: bool
             ) -> tuple[Callable[..., Any], nn.Module | None]:
    lay = node.layer
    t = lay.type
    name = node.name
    if t == "input":
        shape = tuple(lay.out_shapes[0][1:])
        mod.input_shape = shape
        return (lambda x, ins: x.reshape(-1, *shape)), None
    if t in ("flatten", "reshape"):
        shape = tuple(lay.out_shapes[0][1:])
        return (lambda _, ins: ins[0].reshape(-1, *shape)), None
    if t == "identity":
        return (lambda _, ins: ins[0]), None
    if t == "multiout":
        n_out = len(lay.out_shapes)
        return (lambda _, ins: [ins[0]] * n_out), None
    if t == "fully_connected":
        sub: nn.Module = nn.Linear(lay.fin, lay.units, bias=lay.use_bias)
        mod.param_map[f"{name}:weight"] = (attr, "weight", True)
        if lay.use_bias:
            mod.param_map[f"{name}:bias"] = (attr, "bias", False)
        _freeze(sub, lay)
        return _call, sub
    if t == "conv2d":
        kh, kw, sh, sw, _, _, _, _ = lay.geom
        _, _, h, w = lay.in_shapes[0]
        pt, pb, pl, pr = resolve_padding(lay, lay.prop("padding", "valid"), (h, w), (kh, kw),
                                         (sh, sw))
        sym = pt == pb and pl == pr
        sub = nn.Conv2d(lay.c, lay.filters, (kh, kw), (sh, sw), (pt, pl) if sym else 0,
                        bias=lay.use_bias)
        mod.param_map[f"{name}:weight"] = (attr, "weight", False)
        if lay.use_bias:
            mod.param_map[f"{name}:bias"] = (attr, "bias", False)
        _freeze(sub, lay)
        if sym:
            return _call, sub
        return (lambda s, ins: s(F.pad(ins[0], (pl, pr, pt, pb)))), sub
    if t == "pooling2d":
        return _pool(lay), None
    if t == "batch_normalization":
        c, s = lay.c, lay.s
        four_d = len(lay.in_shapes[0]) == 4 and lay.in_shapes[0][1] == c
        cls = nn.BatchNorm2d if four_d else nn.BatchNorm1d
        # NNTrainer's momentum is the weight of the old running value; torch's the new one.
        sub = cls(c, eps=lay.eps, momentum=1.0 - lay.momentum)
        for p, tp in (("gamma", "weight"), ("beta", "bias"), ("moving_mean", "running_mean"),
                      ("moving_variance", "running_var")):
            mod.param_map[f"{name}:{p}"] = (attr, tp, False)
        _freeze(sub, lay)
        if four_d:
            return _call, sub
        return (lambda m, ins: m(ins[0].reshape(ins[0].shape[0], c, s)).reshape(ins[0].shape)), sub
    if t == "activation":
        src = node.inputs[0]
        ok = inplace and lay.act == "relu" and len(readers.get(src, [])) == 1 \
            and kinds.get(src[0]) in _INPLACE_OK
        f = _activation(lay.act, getattr(lay, "slope", 0.01), ok)
        return (lambda _, ins: f(ins[0])), None
    if t == "dropout":
        return _call, nn.Dropout(lay.rate)
    if t == "addition":
        def add(_: Any, ins: list[torch.Tensor]) -> torch.Tensor:
            y = ins[0] + ins[1]
            for v in ins[2:]:
                y = y + v
            return y
        return add, None
    if t == "concat":
        axis = lay.axis
        return (lambda _, ins: torch.cat(ins, dim=axis)), None
    raise ValueError(f"layer '{name}' of type {t} has no torch mapping")


def _call(sub: nn.Module, ins: list[torch.Tensor]) -> torch.Tensor:
    return sub(ins[0])


def _pool(lay: Any) -> Callable[..., torch.Tensor]:
    if lay.kind == "global_max":
        return lambda _, ins: torch.amax(ins[0], dim=(2, 3), keepdim=True)
    if lay.kind == "global_average":
        return lambda _, ins: torch.mean(ins[0], dim=(2, 3), keepdim=True)
    kh, kw, sh, sw, _, _ = lay.geom
    _, _, h, w = lay.in_shapes[0]
    pt, pb, pl, pr = resolve_padding(lay, lay.prop("padding", "valid"), (h, w), (kh, kw), (sh, sw))
    padded = (pt, pb, pl, pr) != (0, 0, 0, 0)
    if lay.is_max:
        # -inf padding, then no padding in the pool: any (asymmetric) padding works.
        def mx(_: Any, ins: list[torch.Tensor]) -> torch.Tensor:
            v = F.pad(ins[0], (pl, pr, pt, pb), value=-math.inf) if padded else ins[0]
            return F.max_pool2d(v, (kh, kw), (sh, sw))
        return mx

    # count_include_pad=True: zero padding counted in the divisor, like nnfleet.
    def avg(_: Any, ins: list[torch.Tensor]) -> torch.Tensor:
        v = F.pad(ins[0], (pl, pr, pt, pb)) if padded else ins[0]
        return F.avg_pool2d(v, (kh, kw), (sh, sw))
    return avg


def _freeze(sub: nn.Module, lay: Any) -> None:
    trainable = {w.name for w in lay.weights if w.trainable}
    if not trainable:
        for p in sub.parameters():
            p.requires_grad_(False)


def torch_weights_to_dict(module: GraphModule) -> dict[str, np.ndarray]:
    """The module's parameters and BN buffers in nnfleet's ``"layer:param"`` layout."""
    out = {}
    for key, (attr, pname, transpose) in module.param_map.items():
        a = getattr(getattr(module, attr), pname).detach().cpu().numpy()
        out[key] = np.array(a.T if transpose else a, dtype=np.float32, order="C", copy=True)
    return out


def make_torch_optimizer(name: str, params: Any, **hp: Any) -> torch.optim.Optimizer:
    """torch.optim.SGD/Adam/AdamW from nnfleet's optimizer name and hyper-parameters.

    nnfleet names: ``lr``, ``momentum``, ``nesterov``, ``weight_decay`` (SGD);
    ``lr``, ``beta1``, ``beta2``, ``epsilon``, ``weight_decay`` (Adam, AdamW). The
    defaults are nnfleet's (AdamW's weight decay 0.01 is also torch's).
    """
    key = str(name).strip().lower()
    hp = dict(hp)
    schedule = hp.pop("schedule", None)
    if schedule is not None and getattr(schedule, "kind", "constant") != "constant":
        raise ValueError(f"schedule '{schedule.kind}' has no mapping here: pair the optimizer "
                         "with a torch.optim.lr_scheduler yourself")
    if key == "sgd":
        known = {"lr", "momentum", "weight_decay", "nesterov"}
        _check(key, hp, known)
        return torch.optim.SGD(params, lr=hp.get("lr", 0.01), momentum=hp.get("momentum", 0.0),
                               weight_decay=hp.get("weight_decay", 0.0),
                               nesterov=bool(hp.get("nesterov", False)), foreach=False)
    if key in ("adam", "adamw"):
        _check(key, hp, {"lr", "beta1", "beta2", "epsilon", "weight_decay"})
        cls = torch.optim.Adam if key == "adam" else torch.optim.AdamW
        wd = hp.get("weight_decay", 0.0 if key == "adam" else 0.01)
        return cls(params, lr=hp.get("lr", 0.001),
                   betas=(hp.get("beta1", 0.9), hp.get("beta2", 0.999)),
                   eps=hp.get("epsilon", 1e-8), weight_decay=wd, foreach=False)
    raise ValueError(f"unknown optimizer '{name}' (known: sgd, adam, adamw)")


def torch_step(module: GraphModule, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, clip_grad_norm: float | None = None) -> float:
    """One ordinary training step (forward, loss, backward, clip, step, zero_grad); the loss."""
    loss = module.loss(module(x), y)
    loss.backward()
    if clip_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip_grad_norm, foreach=False)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.item())


def _check(name: str, hp: dict[str, Any], known: set[str]) -> None:
    bad = sorted(set(hp) - known)
    if bad:
        raise ValueError(f"optimizer '{name}': unknown hyper-parameter '{bad[0]}' "
                         f"(known: {', '.join(sorted(known))})")


__all__ = ["GraphModule", "make_torch_optimizer", "to_torch", "torch_step", "torch_weights_to_dict"]
