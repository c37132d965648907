"""Activation layers. Those whose backward needs only the output run in place."""

from __future__ import annotations

import math

import numpy as np

from .. import switches
from ..kernels import activation as K
from ..kernels import bitmask as KB
from .base import CD, F, FinalizeContext, Layer, Shape, parse_float

# name -> (forward, backward, backward reads "out" or "in")
_ACTS = {
    "relu": ("relu", "out"),
    "leaky_relu": ("leaky_relu", "out"),
    "sigmoid": ("sigmoid", "out"),
    "tanh": ("tanh", "out"),
    "softmax": ("softmax", "out"),
    "gelu": ("gelu", "in"),
    "swish": ("swish", "in"),
}
ALIASES = {"silu": "swish", "lrelu": "leaky_relu", "leakyrelu": "leaky_relu"}
ACTIVATIONS = tuple(sorted(_ACTS))
# (leaky) ReLU keeps a 1-bit mask for backward instead of its output; results are the
# same bits either way. NNFLEET_RELU_MASK=0 keeps the output instead.
MASK_BITS = switches.text("NNFLEET_RELU_MASK") != "0"


class Activation(Layer):
    type = "activation"
    keys = frozenset({"negative_slope"})
    replayable = True

    def __init__(self, name: str, props: dict | None = None) -> None:
        super().__init__(name, props)
        raw = str(self.prop("activation", "")).strip().lower()
        act = ALIASES.get(raw, raw)
        if act not in _ACTS:
            raise self.fail(f"unknown activation '{raw}' (known: {', '.join(ACTIVATIONS)})")
        self.act = act
        self.reads = _ACTS[act][1]
        # In place only where backward needs the output, not the input.
        self.in_place = "modify" if self.reads == "out" else "no"

    def activation_name(self) -> str | None:
        return self.act

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        self.slope = parse_float(self.name, "negative_slope", self.prop("negative_slope", 0.01))
        self.bits = self.act in ("relu", "leaky_relu") and MASK_BITS
        if self.bits:  # backward needs only the sign: keep it as bits, not the output
            n = math.prod(shape)
            self.request_tensor("mask", ((n + 7) // 8,), {F, CD}, np.uint8)
        elif self.reads == "out":
            self.output_needed = frozenset({CD})
        else:
            self.input_needed = frozenset({CD})
        return [shape]

    def bind(self) -> None:
        x, y = self.io.x[0], self.io.y[0]
        dx, dy = self.io.dx[0], self.io.dy[0]
        rows: Shape = (-1, x.shape[-1]) if self.act == "softmax" else (-1,)  # softmax: last axis
        self.xv, self.yv = x.reshape(rows), y.reshape(rows)
        self.dxv = None if dx is None else dx.reshape(rows)
        self.dyv = None if dy is None else dy.reshape(rows)
        self._slope = self.slope if self.act == "leaky_relu" else 0.0
        self._fwd = getattr(K, f"{self.act}_fwd")
        self._bwd = getattr(K, f"{self.act}_bwd")

    def forward(self, training: bool) -> None:
        if self.bits and self.has_cd and "mask" in self.t:  # no backward: no mask
            KB.relu_mask_fwd(self.xv, self.yv, self.t["mask"], self._slope)
            return
        if self.act == "leaky_relu":
            self._fwd(self.xv, self.yv, self.slope)
        else:
            self._fwd(self.xv, self.yv)

    def replay(self) -> None:
        """Recompute the output from the input (used when the executor drops and
        rebuilds this output before backward instead of keeping it)."""
        self.forward(True)

    def calc_derivative(self) -> None:
        if self.dxv is None:
            return
        dyv = self.bound(self.dyv, "dy")
        if self.bits:
            KB.relu_mask_bwd(self.t["mask"], dyv, self.dxv, self._slope)
            return
        src = self.yv if self.reads == "out" else self.xv
        if self.act == "leaky_relu":
            self._bwd(src, dyv, self.dxv, self.slope)
        else:
            self._bwd(src, dyv, self.dxv)
