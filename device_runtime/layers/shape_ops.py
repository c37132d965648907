"""Data-movement layers: split, permute, upsample2d; NNTrainer axis numbering.

NNTrainer numbers the axes of its 4-D tensors ``(batch, channel, height, width)`` 1..3.
nnfleet tensors may have fewer axes (``flatten`` gives ``(B, F)``): an axis below the
tensor's rank is taken as is; an axis at or above it is NNTrainer's and is shifted onto
the trailing axes (``axis = 3`` on ``(B, F)`` is axis 1), which moves the same bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..kernels import upsample as K
from .base import FinalizeContext, Layer, Shape, parse_ints

# Without split_number the output count is the input's size along the axis, known only
# at finalize; the graph looks for readers of this many outputs before that.
MAX_SPLIT_OUTPUTS = 64


def resolve_axes(layer: Layer, key: str, raw: Any, rank: int) -> list[int]:
    """NNTrainer axes -> axes of a rank-``rank`` tensor (see the module docstring)."""
    axes = list(parse_ints(layer.name, key, raw))
    if any(a < 1 or a > 3 and a >= rank for a in axes):
        raise layer.fail(f"{key}={raw!r} is out of range: axes are 1..{max(rank - 1, 3)} "
                         "(0 is the batch)")
    if all(a < rank for a in axes):
        return axes
    shift = 4 - rank
    out = sorted({a - shift for a in axes if a - shift >= 1})  # size-1 axes drop out
    if not out:
        raise layer.fail(f"{key}={raw!r} names only size-1 axes of a rank-{rank} tensor")
    return out


def resolve_axis(layer: Layer, key: str, raw: Any, rank: int) -> int:
    axes = resolve_axes(layer, key, raw, rank)
    if len(axes) != 1:
        raise layer.fail(f"{key}={raw!r} must name one axis")
    return axes[0]


def axis_slices(shape: Shape, axis: int, sizes: list[int]) -> list[tuple[slice, ...]]:
    """Index tuples cutting ``shape`` along ``axis`` into consecutive parts of ``sizes``."""
    out, start = [], 0
    for n in sizes:
        sl = [slice(None)] * len(shape)
        sl[axis] = slice(start, start + n)
        out.append(tuple(sl))
        start += n
    return out


class Split(Layer):
    """Equal parts along ``axis`` (default: size-1 parts, one per index, as NNTrainer)."""

    type = "split"
    keys = frozenset({"axis", "split_number"})

    def __init__(self, name: str, props: dict[str, Any] | None = None) -> None:
        super().__init__(name, props)
        n = self.prop("split_number")
        self.declared_outputs = parse_ints(name, "split_number", n)[0] if n else MAX_SPLIT_OUTPUTS

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        rank = len(shape)
        self.axis = resolve_axis(self, "axis", self.prop("axis", rank - 1), rank)
        size = shape[self.axis]
        n = parse_ints(self.name, "split_number", self.prop("split_number", size))[0]
        if n <= 0 or size % n:
            raise self.fail(f"cannot split size {size} of axis {self.axis} into {n} equal parts")
        part = list(shape)
        part[self.axis] = size // n
        self.slices = axis_slices(shape, self.axis, [size // n] * n)
        return [tuple(part)] * n

    def bind(self) -> None:
        x, dx = self.io.x[0], self.io.dx[0]
        self.parts = [x[s] for s in self.slices]
        self.dparts = None if dx is None else [dx[s] for s in self.slices]

    def forward(self, training: bool) -> None:
        for part, y in zip(self.parts, self.io.y):
            np.copyto(y, part)

    def calc_derivative(self) -> None:
        if self.dparts is None:
            return
        for part, dy in zip(self.dparts, self.io.dy):
            if dy is None:
                part.fill(0.0)
            else:
                np.copyto(part, dy)


class Permute(Layer):
    """Transpose the non-batch axes: ``direction`` is a permutation of 1..3 (NNTrainer)."""

    type = "permute"
    keys = frozenset({"direction"})

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        d = list(parse_ints(self.name, "direction", self.prop("direction", "")))
        src = shape
        if len(d) != len(shape) - 1 and len(d) == 3 and len(shape) < 4:
            src = (shape[0], *([1] * (4 - len(shape))), *shape[1:])  # NNTrainer's 4-D view
        if sorted(d) != list(range(1, len(src))):
            raise self.fail(f"direction={self.prop('direction')!r} is not a permutation of "
                            f"1..{len(src) - 1} for the input {shape}")
        self.src = src
        self.perm = (0, *d)
        self.inv = tuple(int(i) for i in np.argsort(self.perm))
        return [tuple(src[p] for p in self.perm)]

    def bind(self) -> None:
        self.xp = self.io.x[0].reshape(self.src).transpose(self.perm)
        dx, dy = self.io.dx[0], self.io.dy[0]
        self.dx = None if dx is None else dx.reshape(self.src)
        self.dyp = None if dy is None else dy.transpose(self.inv)

    def forward(self, training: bool) -> None:
        np.copyto(self.io.y[0], self.xp)

    def calc_derivative(self) -> None:
        if self.dx is not None:
            np.copyto(self.dx, self.bound(self.dyp, "dy"))


class Upsample2D(Layer):
    """Nearest or bilinear upsampling by integer factors ``kernel_size`` (h, w)."""

    type = "upsample2d"
    keys = frozenset({"upsample", "kernel_size"})

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        if len(shape) != 4:
            raise self.fail(f"needs a (batch, channels, height, width) input, got {shape}")
        self.sh, self.sw = parse_ints(self.name, "kernel_size", self.prop("kernel_size", "2,2"), 2)
        if min(self.sh, self.sw) <= 0:
            raise self.fail("kernel_size must be positive")
        mode = str(self.prop("upsample", "nearest")).strip().lower()
        if mode not in ("nearest", "bilinear"):
            raise self.fail(f"upsample={mode!r} is not supported (nearest, bilinear)")
        self.mode = mode
        n, c, h, w = shape
        return [(n, c, h * self.sh, w * self.sw)]

    def forward(self, training: bool) -> None:
        f = K.nearest_fwd if self.mode == "nearest" else K.bilinear_fwd
        f(self.io.x[0], self.io.y[0], self.sh, self.sw)

    def calc_derivative(self) -> None:
        dx = self.io.dx[0]
        if dx is not None:
            f = K.nearest_bwd if self.mode == "nearest" else K.bilinear_bwd
            f(self.io.dy[0], dx, self.sh, self.sw)



