"""1-D convolution (NNTrainer ``conv1d``; torch.nn.Conv1d maths), im2col per sample.

Input ``(B, C, 1, W)`` as in NNTrainer, or ``(B, C, W)``; output likewise with
``filters`` channels. Weight ``(filters, C, kernel_size)`` as torch's, bias
``(filters,)``. ``padding``: ``valid``, ``same``, one integer or ``left,right``.
"""

from __future__ import annotations

import math

import numpy as np

from ..kernels import conv1d as K
from ..kernels.bias import add_col_bias
from .base import CD, CG, F, FinalizeContext, Layer, Shape, parse_bool, parse_ints


class Conv1D(Layer):
    type = "conv1d"
    keys = frozenset({"filters", "kernel_size", "stride", "padding", "dilation"})

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        if len(shape) == 4 and shape[2] == 1:
            n, c, _, w = shape
        elif len(shape) == 3:
            n, c, w = shape
        else:
            raise self.fail(f"needs a (batch, channels, 1, width) input, got {shape}")
        filters = parse_ints(self.name, "filters", self.prop("filters", 0))[0]
        k = parse_ints(self.name, "kernel_size", self.prop("kernel_size", 3))[-1]
        stride = parse_ints(self.name, "stride", self.prop("stride", 1))[-1]
        dil = parse_ints(self.name, "dilation", self.prop("dilation", 1))[-1]
        if min(filters, k, stride, dil) <= 0:
            raise self.fail("filters, kernel_size, stride and dilation must be positive")
        span = dil * (k - 1) + 1
        pl, pr = self._padding(w, span, stride)
        ow = (w + pl + pr - span) // stride + 1
        if ow <= 0:
            raise self.fail(f"kernel {k} (dilation {dil}) does not fit width {w} with padding "
                            f"{(pl, pr)}")
        self.geom = (k, stride, pl, dil)
        self.c, self.w_in, self.filters, self.ow = c, w, filters, ow
        self.use_bias = not parse_bool(self.name, "disable_bias", self.prop("disable_bias", False))
        init = self.prop("weight_initializer", "torch")
        self.request_weight("weight", (filters, c, k), init, c * k, filters * k)
        if self.use_bias:
            self.request_weight("bias", (filters,), self.prop("bias_initializer", "torch"),
                                c * k, filters * k)
        self.request_tensor("col_f", (c * k, ow), {F})
        self.request_tensor("col_g", (c * k, ow), {CG})
        self.request_tensor("gtmp", (filters, c * k), {CG})
        self.request_tensor("dcol", (c * k, ow), {CD})
        self.input_needed = frozenset({CG})
        return [(n, filters, 1, ow) if len(shape) == 4 else (n, filters, ow)]

    def _padding(self, w: int, span: int, stride: int) -> tuple[int, int]:
        raw = self.prop("padding", "valid")
        s = str(raw).strip().lower()
        if s == "valid":
            return 0, 0
        if s == "same":
            total = max((math.ceil(w / stride) - 1) * stride + span - w, 0)
            return total // 2, total - total // 2
        p = parse_ints(self.name, "padding", raw)
        if len(p) == 1:
            return p[0], p[0]
        if len(p) == 2:
            return p[0], p[1]
        raise self.fail(f"padding {raw!r} must be same, valid, or 1 or 2 integers")

    def bind(self) -> None:
        n = self.io.x[0].shape[0]
        self.x3 = self.io.x[0].reshape(n, self.c, self.w_in)
        self.y3 = self.io.y[0].reshape(n, self.filters, self.ow)
        dx, dy = self.io.dx[0], self.io.dy[0]
        self.dx3 = None if dx is None else dx.reshape(n, self.c, self.w_in)
        self.dy3 = None if dy is None else dy.reshape(n, self.filters, self.ow)
        self.w2 = self.w["weight"].reshape(self.filters, -1)

    def forward(self, training: bool) -> None:
        col = self.t["col_f"]
        for xs, ys in zip(self.x3, self.y3):
            K.im2col1d(xs, col, *self.geom)
            np.matmul(self.w2, col, out=ys)
            if self.use_bias:
                add_col_bias(ys, self.w["bias"])

    def calc_gradient(self) -> None:
        col, tmp = self.t["col_g"], self.t["gtmp"]
        g2 = self.g["weight"].reshape(self.filters, -1)
        dy3 = self.bound(self.dy3, "dy")
        for i, (xs, dys) in enumerate(zip(self.x3, dy3)):
            K.im2col1d(xs, col, *self.geom)
            np.matmul(dys, col.T, out=g2 if i == 0 else tmp)
            if i:
                np.add(g2, tmp, out=g2)
        if self.use_bias:
            np.sum(dy3, axis=(0, 2), out=self.g["bias"])

    def calc_derivative(self) -> None:
        if self.dx3 is None:
            return
        dcol = self.t["dcol"]
        for dxs, dys in zip(self.dx3, self.bound(self.dy3, "dy")):
            np.matmul(self.w2.T, dys, out=dcol)
            K.col2im1d(dcol, dxs, *self.geom)
