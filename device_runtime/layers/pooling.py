"""2-D pooling: max, average, global max, global average."""

from __future__ import annotations

import numpy as np

from .. import switches
from ..kernels import pool as K
from .base import CD, F, FinalizeContext, Layer, Shape, parse_ints
from .conv import out_size, resolve_padding

POOLINGS = ("max", "average", "global_max", "global_average")
# Max pooling keeps each window's argmax (a byte per output for windows up to 255
# elements) for backward instead of its whole input; the numbers are the same bits.
# NNFLEET_POOL_ARGMAX=0 keeps the input and recomputes the argmax in backward instead.
KEEP_ARGMAX = switches.text("NNFLEET_POOL_ARGMAX") != "0"


def argmax_dtype(window: int) -> type:
    """The smallest unsigned type that holds every offset of a ``window``-element window
    and, as its largest value, "no element" (a window wholly in the padding)."""
    return next(t for t in (np.uint8, np.uint16, np.uint32) if window <= np.iinfo(t).max)


class Pooling2D(Layer):
    type = "pooling2d"
    keys = frozenset({"pooling", "pool_size", "stride", "padding"})

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        if len(shape) != 4:
            raise self.fail(f"needs a (batch, channels, height, width) input, got {shape}")
        n, c, h, w = shape
        kind = str(self.prop("pooling", "max")).strip().lower()
        if kind not in POOLINGS:
            raise self.fail(f"unknown pooling '{kind}' (known: {', '.join(POOLINGS)})")
        self.kind = kind
        if kind.startswith("global"):
            kh, kw, sh, sw, pads = h, w, 1, 1, (0, 0, 0, 0)
        else:
            kh, kw = parse_ints(self.name, "pool_size", self.prop("pool_size", "2,2"), 2)
            # NNTrainer's default stride is 1 (PyTorch's is the pool size).
            sh, sw = parse_ints(self.name, "stride", self.prop("stride", "1,1"), 2)
            if min(kh, kw, sh, sw) <= 0:
                raise self.fail("pool_size and stride must be positive")
            pads = resolve_padding(self, self.prop("padding", "valid"), (h, w), (kh, kw), (sh, sw))
        oh, ow = out_size(h, kh, sh, pads[0], pads[1]), out_size(w, kw, sw, pads[2], pads[3])
        if oh <= 0 or ow <= 0:
            raise self.fail(f"pool {kh}x{kw} does not fit the {h}x{w} input")
        self.geom = (kh, kw, sh, sw, pads[0], pads[2])
        self.is_max = kind in ("max", "global_max")
        self.keep_arg = self.is_max and ctx.training and KEEP_ARGMAX
        if self.keep_arg:
            dtype = argmax_dtype(kh * kw)
            self.none = int(np.iinfo(dtype).max)
            self.request_tensor("argmax", (n, c, oh, ow), {F, CD}, dtype)
        elif self.is_max:  # the argmax is recomputed from the input in backward
            self.input_needed = frozenset({CD})
        return [(n, c, oh, ow)]

    def forward(self, training: bool) -> None:
        if self.keep_arg and self.has_cd and "argmax" in self.t:  # no backward: no argmax
            K.maxpool2d_fwd_arg(self.io.x[0], self.io.y[0], self.t["argmax"], self.none,
                                *self.geom)
            return
        f = K.maxpool2d_fwd if self.is_max else K.avgpool2d_fwd
        f(self.io.x[0], self.io.y[0], *self.geom)

    def calc_derivative(self) -> None:
        dx = self.io.dx[0]
        if dx is None:
            return
        if self.keep_arg:
            K.maxpool2d_bwd_arg(self.t["argmax"], self.io.dy[0], dx, self.none, *self.geom)
        elif self.is_max:
            K.maxpool2d_bwd(self.io.x[0], self.io.dy[0], dx, *self.geom)
        else:
            K.avgpool2d_bwd(self.io.dy[0], dx, *self.geom)
