"""Input, fully connected, flatten, reshape, identity and dropout."""

from __future__ import annotations

import math

import numpy as np

from .. import switches
from ..kernels import dropout as kdrop
from ..kernels.bias import add_row_bias
from .base import CD, CG, F, FinalizeContext, Layer, Shape, parse_float, parse_ints

# Bytes of gradient a fused layer computes before handing it to the optimizer.
GRAD_BLOCK_BYTES = switches.integer("NNFLEET_GRAD_BLOCK")


def feature_count(shape: Shape) -> int:
    return int(math.prod(shape[1:]))


class Input(Layer):
    """The data entry point; the executor copies each batch into its output."""

    type = "input"
    keys = frozenset({"normalization", "standardization"})
    min_inputs = max_inputs = 0

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        raw = self.prop("input_shape")
        if raw is None:
            raise self.fail("needs input_shape (for example 1:28:28 or 784)")
        shape = parse_ints(self.name, "input_shape", raw)
        if any(d <= 0 for d in shape):
            raise self.fail(f"input_shape {raw!r} has a non-positive dimension")
        return [(ctx.batch, *shape)]

    def bind(self) -> None:
        # NNTrainer: normalization scales each sample to [0, 1], standardization to zero
        # mean and unit variance; done in place on the fed batch.
        from .base import parse_bool

        self.normalize = parse_bool(self.name, "normalization", self.prop("normalization", False))
        self.standardize = parse_bool(self.name, "standardization",
                                      self.prop("standardization", False))
        y = self.io.y[0]
        self.rows = y.reshape(y.shape[0], -1)
        self.a = np.empty((y.shape[0], 1), np.float32)  # per-sample statistics (tiny)
        self.b = np.empty((y.shape[0], 1), np.float32)

    def forward(self, training: bool) -> None:
        r, a, b = self.rows, self.a, self.b  # data was copied in by the executor
        if self.normalize:
            np.min(r, axis=1, keepdims=True, out=a)
            np.max(r, axis=1, keepdims=True, out=b)
            np.subtract(b, a, out=b)
            np.maximum(b, np.float32(1e-12), out=b)
            np.subtract(r, a, out=r)
            np.divide(r, b, out=r)
        if self.standardize:
            np.mean(r, axis=1, keepdims=True, out=a)
            np.subtract(r, a, out=r)
            np.std(r, axis=1, keepdims=True, out=b)
            np.maximum(b, np.float32(1e-12), out=b)
            np.divide(r, b, out=r)


class FullyConnected(Layer):
    """y = x @ W + b over the last axis (NNTrainer and torch.nn.Linear semantics).

    W is (in_features, out_features) as in the weight file layout of DESIGN.md.
    """

    type = "fully_connected"
    keys = frozenset({"unit"})

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        units = parse_ints(self.name, "unit", self.prop("unit", 0))[0]
        if units <= 0:
            raise self.fail(f"needs unit > 0, got {self.prop('unit')!r}")
        fin = shape[-1]
        self.units, self.fin = units, fin
        self.rows = int(math.prod(shape[:-1]))
        self.use_bias = str(self.prop("disable_bias", "false")).lower() != "true"
        self.request_weight("weight", (fin, units), self.prop("weight_initializer", "torch"),
                            fin, units)
        if self.use_bias:
            self.request_weight("bias", (units,), self.prop("bias_initializer", "torch"),
                                fin, units)
        self.input_needed = frozenset({CG})
        # dW rows r0:r1 = x[:, r0:r1]^T @ dy, in blocks of input rows, fused or not (so
        # that applying blocks one by one never changes the numbers).
        self.block = max(1, min(self.fin, GRAD_BLOCK_BYTES // (4 * self.units)))
        return [(*shape[:-1], units)]

    def enable_fused_apply(self) -> bool:
        # Worth it only when the whole gradient would cost more than the input derivative
        # that fusing keeps alive during CG (CD comes first).
        if self.fin * self.units <= math.prod(self.in_shapes[0]):
            return False
        self.request_tensor("gblock", (self.block, self.units), {CG})
        if self.use_bias:
            self.request_tensor("gbias", (self.units,), {CG})
        return True

    def bind(self) -> None:
        self.x2 = self.io.x[0].reshape(self.rows, self.fin)
        self.y2 = self.io.y[0].reshape(self.rows, self.units)
        dy = self.io.dy[0]
        self.dy2 = None if dy is None else dy.reshape(self.rows, self.units)
        dx = self.io.dx[0]
        self.dx2 = None if dx is None else dx.reshape(self.rows, self.fin)
        self.blocks = []
        if self.has_cg:
            w, u = self.w["weight"], self.units
            for r0 in range(0, self.fin, self.block):
                r1 = min(self.fin, r0 + self.block)
                g = self.t["gblock"][:r1 - r0] if self.fused else self.g["weight"][r0:r1]
                self.blocks.append((self.x2[:, r0:r1].T, g, w[r0:r1].reshape(-1), r0 * u,
                                    g.reshape(-1)))

    def forward(self, training: bool) -> None:
        np.matmul(self.x2, self.w["weight"], out=self.y2)
        if self.use_bias:
            add_row_bias(self.y2, self.w["bias"])

    def calc_gradient(self) -> None:
        fused, dy2 = self.fused, self.bound(self.dy2, "dy")
        for xt, g, wv, start, gflat in self.blocks:
            np.matmul(xt, dy2, out=g)
            if fused:
                self.apply("weight", start, wv, gflat)
        if self.use_bias:
            gb = self.t["gbias"] if fused else self.g["bias"]
            np.sum(dy2, axis=0, out=gb)
            if fused:
                self.apply("bias", 0, self.w["bias"], gb)

    def calc_derivative(self) -> None:
        if self.dx2 is not None:
            np.matmul(self.bound(self.dy2, "dy"), self.w["weight"].T, out=self.dx2)


class _View(Layer):
    """A layer whose output is its input seen with another shape: no work at all."""

    in_place = "view"

    def forward(self, training: bool) -> None:
        pass

    def calc_derivative(self) -> None:
        pass


class Flatten(_View):
    type = "flatten"

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        # NNTrainer flattens to (b, 1, 1, c*h*w); we keep (b, c*h*w), the same memory.
        return [(shape[0], feature_count(shape))]


class Reshape(_View):
    type = "reshape"
    keys = frozenset({"target_shape"})

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        target = parse_ints(self.name, "target_shape", self.prop("target_shape", ""))
        if math.prod(target) != feature_count(shape):
            raise self.fail(f"target_shape {target} has {math.prod(target)} elements, "
                            f"the input {shape[1:]} has {feature_count(shape)}")
        return [(shape[0], *target)]


class Identity(_View):
    type = "identity"

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        return [in_shapes[0]]


class Dropout(Layer):
    """Inverted dropout; the mask is a uint8 tensor saved for backward."""

    type = "dropout"
    keys = frozenset({"dropout_rate", "seed"})
    in_place = "modify"

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        self.rate = parse_float(self.name, "dropout_rate", self.prop("dropout_rate", 0.5))
        if not 0.0 <= self.rate < 1.0:
            raise self.fail(f"dropout_rate must be in [0, 1), got {self.rate}")
        self.seed = int(self.prop("seed", 0)) & 0xFFFFFFFF
        self.calls = 0
        if self.rate > 0:
            self.request_tensor("mask", shape, {F, CD}, np.uint8)
        return [shape]

    def bind(self) -> None:
        self.x1 = self.io.x[0].reshape(-1)
        self.y1 = self.io.y[0].reshape(-1)
        dx, dy = self.io.dx[0], self.io.dy[0]
        self.dx1 = None if dx is None else dx.reshape(-1)
        self.dy1 = None if dy is None else dy.reshape(-1)
        self.m1 = self.t["mask"].reshape(-1) if "mask" in self.t else None

    def forward(self, training: bool) -> None:
        if not training or self.rate == 0.0:
            if self.y1 is not self.x1 and not np.shares_memory(self.y1, self.x1):
                np.copyto(self.y1, self.x1)
            return
        # Counter-based random numbers: the same mask whatever the memory layout.
        m1 = self.bound(self.m1, "mask")
        kdrop.dropout_fwd(self.x1, self.y1, m1, self.rate, self.seed, self.calls)
        self.calls += 1

    def run_state(self) -> dict[str, int]:
        # the mask of a call depends on the call count: a resumed run must continue it
        return {"calls": int(self.calls)}

    def load_run_state(self, state: dict[str, int]) -> None:
        self.calls = int(state["calls"])

    def calc_derivative(self) -> None:
        if self.dx1 is None:
            return
        dy1 = self.bound(self.dy1, "dy")
        if self.rate == 0.0:
            if not np.shares_memory(self.dx1, dy1):
                np.copyto(self.dx1, dy1)
            return
        kdrop.dropout_bwd(dy1, self.bound(self.m1, "mask"), self.dx1, self.rate)
