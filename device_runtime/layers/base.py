"""The layer contract: layers *declare* memory, the graph and the pool own it.

A layer is finalized once with its input shapes (batch first) and a
:class:`FinalizeContext` (batch size, training or not, ...). In ``finalize`` it
requests weights (persistent, outside the step pool) and step tensors (scratch or saved,
inside the pool) with the phases in which it uses them; it also says which of its inputs
and outputs must still hold forward data during backward. From that and the execution
orders the graph derives every tensor's validity interval; the memory planner places
them; then the layer receives one :class:`Binding` (views ``x``, ``y``, ``dx``, ``dy``,
``w``, ``g``, ``t`` and the phases it runs) and :meth:`Layer.bind` prepares reshaped views
so that the hot path creates nothing.

Every optional capability a layer may have (in-place modes, replay before backward, run
state kept in checkpoints, ...) is declared on :class:`Layer` with its default: the graph
and the planner read them plainly and never probe a layer for attributes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import ModelError

# no tensor of a step may have more elements than this (2^40: 4 TiB of float32), so the
# planner's byte arithmetic stays far inside int64 whatever a model file says
MAX_ELEMENTS = 1 << 40

# The four phases of a node, after NNTrainer's four execution orders.
F, CG, CD, AG = "F", "CG", "CD", "AG"

Shape = tuple[int, ...]

# Properties every layer accepts (NNTrainer spellings).
COMMON_KEYS = frozenset(
    {"name", "type", "input_layers", "input_shape", "activation", "flatten", "trainable",
     "weight_initializer", "bias_initializer", "weight_decay", "bias_decay",
     "weight_regularizer", "weight_regularizer_constant", "disable_bias"}
)


@dataclass
class WeightSpec:
    """A persistent parameter: lives in the weight store, its gradient in the pool."""

    name: str
    shape: Shape
    init: str  # initializer name, see device_runtime.init
    fan_in: int
    fan_out: int
    trainable: bool = True


@dataclass
class TensorSpec:
    """A step tensor the layer itself uses (scratch or saved), with its phases."""

    name: str
    shape: Shape
    phases: frozenset[str]
    dtype: Any = np.float32


@dataclass(frozen=True)
class FinalizeContext:
    """What a layer's ``finalize`` may know besides its input shapes (one per graph)."""

    batch: int  # samples per step: the input layer shapes its output with it
    training: bool  # the graph runs backward (False: inference or a forward-only probe)
    recompute: bool = False  # may rebuild cheap outputs before backward (batch-norm)
    label_kind: str | None = None  # a loss's labels: "index" or "dense" (None: its default)
    # bytes of im2col scratch a convolution's backward may hold per tile of input channels
    # (0: whole layers); chosen by the cap fit, it never changes the numbers (layers/conv.py)
    conv_tile: int = 0


ApplyFn = Callable[[str, int, np.ndarray, np.ndarray], None]


@dataclass
class Binding:
    """What the executor hands a layer after planning: views into the pool (``x``, ``y``,
    ``dx``, ``dy``, gradients ``g``, own tensors ``t``) and the weight store (``w``), the
    phases its node runs, and for fused layers the optimizer's block ``apply``."""

    x: list[np.ndarray] = field(default_factory=list)
    y: list[np.ndarray] = field(default_factory=list)
    dx: list[np.ndarray | None] = field(default_factory=list)
    dy: list[np.ndarray | None] = field(default_factory=list)
    w: dict[str, np.ndarray] = field(default_factory=dict)
    g: dict[str, np.ndarray] = field(default_factory=dict)
    t: dict[str, np.ndarray] = field(default_factory=dict)
    has_cg: bool = False  # the node computes weight gradients
    has_cd: bool = False  # the node computes input derivatives
    fused: bool = False  # the node applies its gradients block by block in CG
    apply: ApplyFn | None = None


def parse_bool(layer: str, key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("true", "1", "yes", "on"):
        return True
    if s in ("false", "0", "no", "off"):
        return False
    raise ModelError(f"layer '{layer}': property {key}={value!r} is not a boolean (use true/false)")


def parse_ints(layer: str, key: str, value: Any, n: int | None = None) -> tuple[int, ...]:
    """Parse ``3``, ``"3,3"``, ``(3, 3)`` into ints; with ``n``, a single value is repeated."""
    if isinstance(value, (int, np.integer)):
        vals: list[Any] = [int(value)]
    elif isinstance(value, (tuple, list)):
        vals = list(value)
    else:
        vals = [v for v in str(value).replace(":", ",").split(",") if v.strip() != ""]
    try:
        out = tuple(int(str(v).strip()) for v in vals)
    except ValueError:
        raise ModelError(f"layer '{layer}': property {key}={value!r} must be integers") from None
    if n is not None and len(out) == 1:
        out = out * n
    if n is not None and len(out) != n or not out:
        raise ModelError(f"layer '{layer}': property {key}={value!r} needs {n or 'some'} integers")
    return out


def parse_float(layer: str, key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ModelError(f"layer '{layer}': property {key}={value!r} is not a number") from None


class Layer:
    """Base class of every node in the graph.

    Optional capabilities have a default here; a layer overrides only what it has.
    """

    type: ClassVar[str] = ""
    keys: ClassVar[frozenset[str]] = frozenset()  # layer-specific property names
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int] = 1
    # "no": output is its own tensor; "view": output is the input, data untouched
    # (flatten, reshape, multiout); "modify": output overwrites the input when the graph
    # finds no later reader of the input's data. A layer may choose it in finalize.
    in_place: str = "no"
    # With in_place "no": the input derivative may still overwrite the output derivative
    # (batch-norm that keeps its input). Set in finalize.
    grad_in_place: bool = False
    # With no backward at all (frozen, inference) the output may overwrite the input
    # (conv, batch-norm). Set in finalize.
    in_place_forward_only: bool = False
    # This layer keeps what it needs to rebuild its output, so the plan may drop the output
    # after forward and call replay() before backward (batch-norm under ctx.recompute).
    recompute: bool = False
    # replay() recomputes the training output from the inputs (it may run again, on an
    # output rebuilt before backward, after the layer that heads the rebuilt block).
    replayable: ClassVar[bool] = False
    # The plan may also drop this layer's output and replay it at a cost it chooses by
    # (convolutions: replay_flops); cheap ones above are rebuilt whenever possible.
    rematerializable: ClassVar[bool] = False
    # How many outputs the layer announces before finalize (the graph inserts multi-output
    # nodes before shapes are known); the true count is what finalize returns.
    declared_outputs: int = 1

    def __init__(self, name: str, props: dict[str, Any] | None = None) -> None:
        self.name = name
        props = {str(k).strip().lower(): v for k, v in (props or {}).items()}
        unknown = sorted(set(props) - COMMON_KEYS - self.keys)
        if unknown:
            known = ", ".join(sorted(self.keys)) or "none besides the common ones"
            raise ModelError(
                f"layer '{name}' ({self.type}): unknown property '{unknown[0]}' (known: {known})"
            )
        self.props = props
        il = props.get("input_layers")
        if il is None or il == "":
            self.input_layers: list[str] | None = None
        elif isinstance(il, (list, tuple)):
            self.input_layers = [str(s).strip() for s in il]
        else:
            self.input_layers = [s.strip() for s in str(il).split(",") if s.strip()]
        self.trainable = parse_bool(name, "trainable", props.get("trainable", True))
        self.weights: list[WeightSpec] = []
        self.tensors: list[TensorSpec] = []
        # Phases (CG, CD) in which the inputs / outputs must still hold forward data.
        self.input_needed: frozenset[str] = frozenset()
        self.output_needed: frozenset[str] = frozenset()
        self.num_outputs = 1
        # Set by setup() and attach(), the two calls through which a layer is built.
        self.in_shapes: list[Shape] = []
        self.out_shapes: list[Shape] = []
        self.io = Binding()
        self.w: dict[str, np.ndarray] = {}
        self.g: dict[str, np.ndarray] = {}
        self.t: dict[str, np.ndarray] = {}

    # ----------------------------------------------------------------- declaring
    def prop(self, key: str, default: Any = None) -> Any:
        """A property as given (lower-case key), or ``default``."""
        return self.props.get(key, default)

    def request_weight(self, name: str, shape: Shape, init: str, fan_in: int = 1,
                       fan_out: int = 1, trainable: bool = True) -> None:
        """Declare a parameter; ``trainable=False`` for state such as running statistics."""
        self.weights.append(WeightSpec(name, tuple(int(s) for s in shape), init, fan_in, fan_out,
                                       self.trainable and trainable))

    def request_tensor(self, name: str, shape: Shape, phases: set[str] | frozenset[str],
                       dtype: Any = np.float32) -> None:
        """Declare a step tensor of this layer, used in ``phases``."""
        dims = tuple(int(s) for s in shape)
        self.tensors.append(TensorSpec(name, dims, frozenset(phases), dtype))

    @property
    def has_trainable_weights(self) -> bool:
        return any(w.trainable for w in self.weights)

    def setup(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        """Called once by the graph: record the input shapes, finalize, record outputs."""
        self.in_shapes = list(in_shapes)
        outs = self.finalize(self.in_shapes, ctx)
        self.out_shapes = [tuple(int(d) for d in s) for s in outs]
        self.num_outputs = len(outs)
        return self.out_shapes

    def check_output(self, shape: Shape, in_shapes: list[Shape]) -> None:
        """A ModelError naming this layer unless ``shape`` is a tensor a step can hold
        (a layer that sizes scratch from its output shape calls it before sizing)."""
        if any(d <= 0 for d in shape):
            raise self.fail(f"output shape {shape} has a non-positive dimension "
                            f"(input shapes {in_shapes})")
        if math.prod(shape) > MAX_ELEMENTS:
            raise self.fail(f"output shape {shape} has more than {MAX_ELEMENTS:,} elements "
                            f"(input shapes {in_shapes})")

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        """Check input shapes, request weights and tensors, return output shapes."""
        raise NotImplementedError

    def enable_fused_apply(self) -> bool:
        """Request block scratch and return True if this layer applies its own gradients
        block by block in ``calc_gradient`` (through ``self.apply``); False otherwise."""
        return False

    def activation_name(self) -> str | None:
        """The activation this layer is, when it is nothing else: a loss that computes
        that activation itself (softmax, sigmoid) folds such a trailing layer."""
        return None

    # ----------------------------------------------------------------- running
    def attach(self, io: Binding) -> None:
        """Called by the executor once views exist: keep them, then :meth:`bind`."""
        self.io = io
        self.w, self.g, self.t = io.w, io.g, io.t
        self.bind()

    @property
    def has_cg(self) -> bool:
        """The node computes weight gradients (known once attached)."""
        return self.io.has_cg

    @property
    def has_cd(self) -> bool:
        """The node computes input derivatives (known once attached)."""
        return self.io.has_cd

    @property
    def fused(self) -> bool:
        """The node applies its gradients block by block in CG (known once attached)."""
        return self.io.fused

    def apply(self, wname: str, start: int, w: np.ndarray, g: np.ndarray) -> None:
        """Hand a block of gradient to the optimizer (fused layers, from calc_gradient)."""
        if self.io.apply is None:
            raise AssertionError("apply() called on a layer without fused gradients")
        self.io.apply(wname, start, w, g)

    def bind(self) -> None:
        """Views are assigned: prepare reshaped views so the hot path allocates nothing."""

    def bound(self, a: np.ndarray | None, what: str) -> np.ndarray:
        """``a`` narrowed to an array. A derivative or optional tensor is ``None`` where
        the plan gives this node none; a layer calls this where the tensor must exist
        (once per tensor and step, never per element), so a missing one fails clearly."""
        if a is None:
            raise AssertionError(f"layer '{self.name}' ({self.type}): {what} used before it is "
                                 "bound (the plan gave this node none)")
        return a

    def forward(self, training: bool) -> None:
        raise NotImplementedError

    def replay_flops(self) -> int:
        """Floating-point operations of one replay (what rematerializing costs)."""
        return 0

    def replay(self) -> None:
        """Recompute the training output before backward (only when ``replayable``)."""
        raise NotImplementedError(f"{self.type} cannot replay its forward")

    def calc_gradient(self) -> None:
        """Write this layer's weight gradients into ``self.g`` (only when trainable)."""

    def calc_derivative(self) -> None:
        """Write the derivatives w.r.t. the inputs into ``self.io.dx`` from ``self.io.dy``."""
        raise NotImplementedError(f"{self.type} has no backward")

    def run_state(self) -> dict[str, int]:
        """Run-time state that changes the numbers of later steps (saved in checkpoints,
        e.g. dropout's call counter); empty for most layers."""
        return {}

    def load_run_state(self, state: dict[str, int]) -> None:
        """Restore what :meth:`run_state` returned."""

    def describe(self) -> str:
        return f"{self.name} ({self.type}) {self.in_shapes} -> {self.out_shapes}"

    def fail(self, msg: str) -> ModelError:
        return ModelError(f"layer '{self.name}' ({self.type}): {msg}")
