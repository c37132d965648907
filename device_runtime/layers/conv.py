"""2-D convolution by im2col + BLAS matmul over chunks of samples.

Chunking is what keeps the im2col scratch small: columns of ``b`` samples at a time,
``b`` a divisor of the batch chosen so a chunk holds about ``NNFLEET_CONV_COLUMNS``
(default 1024) output positions. Small feature maps get big chunks, so the GEMMs stay
efficient; large ones go one sample at a time, straight into the output (no copy).
"""

from __future__ import annotations

import math

import numpy as np

from .. import switches
from ..kernels import conv as K
from ..kernels.bias import add_col_bias
from .base import CD, CG, F, FinalizeContext, Layer, Shape, parse_ints
from .core import GRAD_BLOCK_BYTES

CONV_COLUMNS = switches.integer("NNFLEET_CONV_COLUMNS")


def resolve_padding(layer: Layer, raw: object, size: tuple[int, int], kernel: tuple[int, int],
                    stride: tuple[int, int]) -> tuple[int, int, int, int]:
    """Padding -> (top, bottom, left, right) for 'same', 'valid' or explicit integers."""
    s = str(raw).strip().lower() if raw is not None else "valid"
    if s == "valid":
        return (0, 0, 0, 0)
    if s == "same":
        pads = []
        for n, k, st in zip(size, kernel, stride):
            total = max((math.ceil(n / st) - 1) * st + k - n, 0)
            pads += [total // 2, total - total // 2]
        return (pads[0], pads[1], pads[2], pads[3])
    p = parse_ints(layer.name, "padding", raw)
    if len(p) == 1:
        return (p[0],) * 4
    if len(p) == 2:
        return (p[0], p[0], p[1], p[1])
    if len(p) == 4:
        return (p[0], p[1], p[2], p[3])
    raise layer.fail(f"padding {raw!r} must be same, valid, or 1, 2 or 4 integers")


def out_size(n: int, k: int, s: int, p0: int, p1: int) -> int:
    return (n + p0 + p1 - k) // s + 1


def pick_chunk(batch: int, positions: int, columns: int = CONV_COLUMNS) -> int:
    """The largest divisor of ``batch`` whose chunk has at most ``columns`` positions."""
    best = 1
    for b in range(1, batch + 1):
        if batch % b == 0 and b * positions <= max(columns, positions):
            best = b
    return best


class Conv2D(Layer):
    type = "conv2d"
    keys = frozenset({"filters", "kernel_size", "stride", "padding", "dilation"})

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        if len(shape) != 4:
            raise self.fail(f"needs a (batch, channels, height, width) input, got {shape}")
        n, c, h, w = shape
        filters = parse_ints(self.name, "filters", self.prop("filters", 0))[0]
        if filters <= 0:
            raise self.fail(f"needs filters > 0, got {self.prop('filters')!r}")
        kh, kw = parse_ints(self.name, "kernel_size", self.prop("kernel_size", "3,3"), 2)
        sh, sw = parse_ints(self.name, "stride", self.prop("stride", "1,1"), 2)
        if str(self.prop("dilation", "1")).replace(",", "").strip("1 ") != "":
            raise self.fail(f"dilation {self.prop('dilation')!r} is not supported (only 1)")
        if min(kh, kw, sh, sw) <= 0:
            raise self.fail("kernel_size and stride must be positive")
        pt, pb, pl, pr = resolve_padding(self, self.prop("padding", "valid"), (h, w), (kh, kw),
                                         (sh, sw))
        oh, ow = out_size(h, kh, sh, pt, pb), out_size(w, kw, sw, pl, pr)
        if oh <= 0 or ow <= 0:
            raise self.fail(f"kernel {kh}x{kw} does not fit the {h}x{w} input with padding "
                            f"{(pt, pb, pl, pr)}")
        self.geom = (kh, kw, sh, sw, pt, pl, oh, ow)
        self.c, self.filters, self.hw = c, filters, oh * ow
        self.ckk = c * kh * kw
        self.use_bias = str(self.prop("disable_bias", "false")).lower() != "true"
        fan_in, fan_out = self.ckk, filters * kh * kw
        self.request_weight("weight", (filters, c, kh, kw),
                            self.prop("weight_initializer", "torch"),
                            fan_in, fan_out)
        if self.use_bias:
            self.request_weight("bias", (filters,), self.prop("bias_initializer", "torch"),
                                fan_in, fan_out)
        # 1x1, stride 1, no padding: the input already is its own im2col matrix.
        self.direct = (kh, kw, sh, sw, pt, pb, pl, pr) == (1, 1, 1, 1, 0, 0, 0, 0)
        self.b = pick_chunk(n, self.hw)
        ncol = self.b * self.hw
        if not self.direct or self.b > 1:
            self.request_tensor("col_f", (self.ckk, ncol), {F})
            self.request_tensor("col_g", (self.ckk, ncol), {CG})
        if self.b > 1:
            self.request_tensor("ych", (filters, ncol), {F})
            self.request_tensor("dych_g", (filters, ncol), {CG})
            self.request_tensor("dych_d", (filters, ncol), {CD})
        if n // self.b > 1:
            self.request_tensor("gtmp", (filters, self.ckk), {CG})
        self.request_tensor("dcol", (self.ckk, ncol), {CD})
        # dW is computed in blocks of output channels whether or not the blocks are
        # applied one by one (fused), so fusing never changes the numbers (BLAS rounds a
        # block product differently from a whole product).
        self.grows = self.filters
        if n // self.b == 1:
            self.grows = max(1, min(self.filters, GRAD_BLOCK_BYTES // (4 * self.ckk)))
        self.input_needed = frozenset({CG})
        # With no backward (a frozen conv, or inference), the output may overwrite the
        # input when sizes agree: each chunk of samples is unfolded into col (or copied
        # into it) before its outputs are written, and later chunks read other samples.
        # Not when a single sample's input is its own col (1x1 direct, chunk of 1).
        self.in_place_forward_only = not (self.direct and self.b == 1)
        return [(n, filters, oh, ow)]

    def enable_fused_apply(self) -> bool:
        # Fusing puts CD (which creates the input derivative) before CG; worth it only when
        # the whole gradient would cost more than that derivative being alive during CG.
        if self.filters * self.ckk <= math.prod(self.in_shapes[0]):
            return False
        # One chunk of samples: dW is computed in blocks of output channels, each applied
        # at once. Several chunks: dW accumulates over them (it is small then: only
        # large feature maps are chunked), and is applied whole.
        self.request_tensor("gblock", (self.grows, self.ckk), {CG})
        if self.use_bias:
            self.request_tensor("gbias", (self.filters,), {CG})
        return True

    def bind(self) -> None:
        x, y = self.io.x[0], self.io.y[0]
        dx, dy = self.io.dx[0], self.io.dy[0]
        n, b = x.shape[0], self.b
        self.w2 = self.w["weight"].reshape(self.filters, self.ckk)
        self.w2t = self.w2.T
        self.bias = self.w.get("bias")
        self.g2 = self.g["weight"].reshape(self.filters, self.ckk) if "weight" in self.g else None
        self.chunks = []
        for n0 in range(0, n, b):
            self.chunks.append((
                x[n0:n0 + b],
                y[n0:n0 + b].reshape(b, self.filters, self.hw),
                None if dx is None else dx[n0:n0 + b],
                None if dy is None else dy[n0:n0 + b].reshape(b, self.filters, self.hw),
                x[n0].reshape(self.c, self.hw) if self.direct else None,
            ))
        self.dy3 = None if dy is None else dy.reshape(n, self.filters, self.hw)

    def _col(self, name: str, xs: np.ndarray, xd: np.ndarray | None) -> np.ndarray:
        if self.direct and self.b == 1:
            return self.bound(xd, "x (direct view)")
        col = self.t[name]
        if self.direct:
            K.nchw_to_chunk(xs.reshape(self.b, self.c, self.hw), col)
        else:
            K.im2col(xs, col, *self.geom)
        return col

    def _dych(self, name: str, dys: np.ndarray) -> np.ndarray:
        if self.b == 1:
            return dys[0]
        K.nchw_to_chunk(dys, self.t[name])
        return self.t[name]

    def forward(self, training: bool) -> None:
        for xs, ys, _, _, xd in self.chunks:
            col = self._col("col_f", xs, xd)
            if self.b == 1:
                np.matmul(self.w2, col, out=ys[0])
                if self.bias is not None:
                    add_col_bias(ys[0], self.bias)
            else:
                np.matmul(self.w2, col, out=self.t["ych"])
                if self.bias is not None:
                    K.chunk_to_nchw_bias(self.t["ych"], ys, self.bias)
                else:
                    K.chunk_to_nchw(self.t["ych"], ys)

    def _weight_grad(self, out: np.ndarray) -> None:
        """dW (Cout, CKK) accumulated over the sample chunks into ``out``."""
        for i, (xs, _, _, dys, xd) in enumerate(self.chunks):
            col = self._col("col_g", xs, xd)
            dych = self._dych("dych_g", self.bound(dys, "dy"))
            if i == 0:
                np.matmul(dych, col.T, out=out)
            else:
                np.matmul(dych, col.T, out=self.t["gtmp"])
                np.add(out, self.t["gtmp"], out=out)

    def calc_gradient(self) -> None:
        fused = self.fused
        if self.grows == self.filters:
            g = self.t["gblock"] if fused else self.bound(self.g2, "weight gradient")
            self._weight_grad(g)
            if fused:
                self.apply("weight", 0, self.w2.reshape(-1), g.reshape(-1))
        else:
            xs, _, _, dys, xd = self.chunks[0]
            col = self._col("col_g", xs, xd)
            dych = self._dych("dych_g", self.bound(dys, "dy"))
            for o0 in range(0, self.filters, self.grows):
                o1 = min(self.filters, o0 + self.grows)
                if fused:
                    g = self.t["gblock"][:o1 - o0]
                else:
                    g = self.bound(self.g2, "weight gradient")[o0:o1]
                np.matmul(dych[o0:o1], col.T, out=g)
                if fused:
                    self.apply("weight", o0 * self.ckk, self.w2[o0:o1].reshape(-1), g.reshape(-1))
        if self.bias is not None:
            gbias = self.t["gbias"] if fused else self.g["bias"]
            K.bias_grad_nchw(self.bound(self.dy3, "dy"), gbias, False)
            if fused:
                self.apply("bias", 0, self.bias, gbias)

    def calc_derivative(self) -> None:
        if self.io.dx[0] is None:
            return
        dcol = self.t["dcol"]
        for _, _, dxs, dys, _ in self.chunks:
            dxs = self.bound(dxs, "dx")
            dych = self._dych("dych_d", self.bound(dys, "dy"))
            np.matmul(self.w2t, dych, out=dcol)
            if self.direct:
                if self.b == 1:
                    np.copyto(dxs[0].reshape(self.c, self.hw), dcol)
                else:
                    K.chunk_to_nchw(dcol, dxs.reshape(self.b, self.c, self.hw))
            else:
                K.col2im(dcol, dxs, *self.geom)
