"""Addition, concatenation and the multi-output node."""

from __future__ import annotations

import numpy as np

from .base import FinalizeContext, Layer, Shape
from .shape_ops import resolve_axis


class Addition(Layer):
    """y = sum of inputs; in place over the first input where nothing else reads it."""

    type = "addition"
    in_place = "modify"
    replayable = True
    min_inputs, max_inputs = 2, 64

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        first = in_shapes[0]
        for s in in_shapes[1:]:
            if s != first:
                raise self.fail(f"inputs must have one shape, got {in_shapes}")
        return [first]

    def forward(self, training: bool) -> None:
        x, y = self.io.x, self.io.y[0]
        np.add(x[0], x[1], out=y)
        for xi in x[2:]:
            np.add(y, xi, out=y)

    def replay(self) -> None:
        """Recompute the sum (the executor rebuilds a dropped output before backward)."""
        self.forward(True)

    def calc_derivative(self) -> None:
        dy = self.bound(self.io.dy[0], "dy")
        for dx in self.io.dx:
            if dx is not None and not np.shares_memory(dx, dy):
                np.copyto(dx, dy)


class Concat(Layer):
    """Concatenate along ``axis`` (NNTrainer numbering: 1=channel, 2=height, 3=width; on
    tensors of lower rank see :func:`shape_ops.resolve_axis`). NNTrainer's default on
    4-D inputs: width when the first input has several channels, else channel; on other
    ranks the last axis."""

    type = "concat"
    keys = frozenset({"axis"})
    min_inputs, max_inputs = 1, 64

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        rank = len(in_shapes[0])
        if rank < 2:
            raise self.fail(f"inputs {in_shapes} have no axis besides the batch")
        default = (3 if in_shapes[0][1] > 1 else 1) if rank == 4 else rank - 1
        axis = resolve_axis(self, "axis", self.prop("axis", default), rank)
        for s in in_shapes:
            if len(s) != rank or any(a != b for i, (a, b) in enumerate(zip(s, in_shapes[0]))
                                     if i != axis):
                raise self.fail(f"inputs differ outside axis {axis}: {in_shapes}")
        self.axis = axis
        out = list(in_shapes[0])
        out[axis] = sum(s[axis] for s in in_shapes)
        return [tuple(out)]

    def bind(self) -> None:
        y, dy = self.io.y[0], self.io.dy[0]
        self.parts, self.dparts = [], []
        start = 0
        for s in self.in_shapes:
            sl = [slice(None)] * len(s)
            sl[self.axis] = slice(start, start + s[self.axis])
            start += s[self.axis]
            self.parts.append(y[tuple(sl)])
            self.dparts.append(None if dy is None else dy[tuple(sl)])

    def forward(self, training: bool) -> None:
        for x, part in zip(self.io.x, self.parts):
            np.copyto(part, x)

    def calc_derivative(self) -> None:
        for dx, part in zip(self.io.dx, self.dparts):
            if dx is not None:
                np.copyto(dx, self.bound(part, "dy"))


class MultiOut(Layer):
    """One output read by several layers: outputs are views; derivatives are summed."""

    type = "multiout"
    keys = frozenset({"outputs"})
    in_place = "view"

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        n = int(self.prop("outputs", 2))
        return [in_shapes[0]] * n

    def forward(self, training: bool) -> None:
        pass

    def calc_derivative(self) -> None:
        dx = self.io.dx[0]
        if dx is None:
            return
        dys = self.io.dy
        dy0 = self.bound(dys[0], "dy")
        if not np.shares_memory(dx, dy0):
            np.copyto(dx, dy0)
        for d in dys[1:]:
            np.add(dx, self.bound(d, "dy"), out=dx)
