"""Layer normalisation (NNTrainer ``layer_normalization``, torch.nn.LayerNorm maths).

``axis`` lists the normalised axes in NNTrainer's numbering (see
:func:`shape_ops.resolve_axes`); they must be trailing axes (``3``, ``2,3`` or ``1,2,3``
for a 4-D tensor), as torch's ``normalized_shape``. Default: the last axis.
``gamma``/``beta`` have the normalised shape. The output overwrites the input where no
one else reads it: backward needs only the saved ``xhat`` and ``invstd``.
"""

from __future__ import annotations

import math

from ..kernels import layer_norm as K
from .base import CD, CG, F, FinalizeContext, Layer, Shape, parse_float
from .shape_ops import resolve_axes


class LayerNormalization(Layer):
    type = "layer_normalization"
    keys = frozenset({"axis", "epsilon", "gamma_initializer", "beta_initializer"})
    in_place = "modify"

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        rank = len(shape)
        raw = self.prop("axis")
        axes = [rank - 1] if raw is None else resolve_axes(self, "axis", raw, rank)
        first = min(axes)
        if sorted(set(axes)) != list(range(first, rank)):
            raise self.fail(f"axis={raw!r} must be trailing axes of the {shape} input "
                            f"(for example {rank - 1} or {first},...,{rank - 1})")
        self.eps = parse_float(self.name, "epsilon", self.prop("epsilon", 1e-5))
        if not self.eps > 0:
            raise self.fail(f"needs epsilon > 0, got {self.eps}")
        norm = shape[first:]
        self.n = math.prod(norm)
        self.rows = math.prod(shape[:first])
        self.request_weight("gamma", norm, self.prop("gamma_initializer", "ones"))
        self.request_weight("beta", norm, self.prop("beta_initializer", "zeros"))
        self.request_tensor("xhat", (self.rows, self.n), {F, CG, CD})
        self.request_tensor("invstd", (self.rows,), {F, CD})
        return [shape]

    def bind(self) -> None:
        v = (self.rows, self.n)
        self.x2, self.y2 = self.io.x[0].reshape(v), self.io.y[0].reshape(v)
        dx, dy = self.io.dx[0], self.io.dy[0]
        self.dx2 = None if dx is None else dx.reshape(v)
        self.dy2 = None if dy is None else dy.reshape(v)
        self.gamma = self.w["gamma"].reshape(-1)
        self.beta = self.w["beta"].reshape(-1)

    def forward(self, training: bool) -> None:
        K.ln_fwd(self.x2, self.y2, self.t["xhat"], self.t["invstd"], self.gamma, self.beta,
                 self.eps)

    def calc_gradient(self) -> None:
        K.ln_param_grad(self.dy2, self.t["xhat"], self.g["gamma"].reshape(-1),
                        self.g["beta"].reshape(-1))

    def calc_derivative(self) -> None:
        if self.dx2 is not None:
            K.ln_bwd(self.dy2, self.t["xhat"], self.t["invstd"], self.gamma, self.dx2)
