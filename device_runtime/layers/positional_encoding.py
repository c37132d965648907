"""Positional encoding (NNTrainer ``positional_encoding``): y = x + sinusoidal table.

Input ``(B, 1, T, D)`` or ``(B, T, D)``; ``max_timestep`` (optional) bounds T. The table
is computed on the fly (no memory); the output overwrites the input where no one else
reads it, and the derivative passes through unchanged.
"""

from __future__ import annotations

import numpy as np

from ..kernels import positional as K
from .base import FinalizeContext, Layer, Shape, parse_ints
from .sequence import sequence_dims


class PositionalEncoding(Layer):
    type = "positional_encoding"
    keys = frozenset({"max_timestep"})
    in_place = "modify"

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        self.T, self.D = sequence_dims(self, shape)
        limit = self.prop("max_timestep")
        if limit is not None and self.T > parse_ints(self.name, "max_timestep", limit)[0]:
            raise self.fail(f"sequence length {self.T} exceeds max_timestep={limit}")
        return [shape]

    def bind(self) -> None:
        b = self.io.x[0].shape[0]
        self.x3 = self.io.x[0].reshape(b, self.T, self.D)
        self.y3 = self.io.y[0].reshape(b, self.T, self.D)

    def forward(self, training: bool) -> None:
        K.pe_add(self.x3, self.y3)

    def calc_derivative(self) -> None:
        dx, dy = self.io.dx[0], self.bound(self.io.dy[0], "dy")
        if dx is not None and not np.shares_memory(dx, dy):
            np.copyto(dx, dy)
