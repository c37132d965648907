"""Embedding: integer ids (carried as float32, as NNTrainer does) -> vectors.

Input ``(B, 1, 1, L)`` (or ``(B, L)``): L ids per sample; output ``(B, 1, L, out_dim)``
(or ``(B, L, out_dim)``), like NNTrainer. The weight ``(in_dim, out_dim)`` is the
lookup table, as ``torch.nn.Embedding.weight``; its gradient is a scatter-add of the
output derivative rows. Ids have no derivative: an upstream layer receives zeros.
"""

from __future__ import annotations

from ..errors import DataError
from ..kernels import embedding as K
from .base import CG, FinalizeContext, Layer, Shape, parse_ints


class Embedding(Layer):
    type = "embedding"
    keys = frozenset({"in_dim", "out_dim", "zero_idx_mask"})

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        if any(d != 1 for d in shape[1:-1]):
            raise self.fail(f"needs a (batch, 1, 1, ids) input, got {shape}")
        vocab = parse_ints(self.name, "in_dim", self.prop("in_dim", 0))[0]
        dim = parse_ints(self.name, "out_dim", self.prop("out_dim", 0))[0]
        if vocab <= 0 or dim <= 0:
            raise self.fail(f"needs in_dim > 0 and out_dim > 0, got {vocab}, {dim}")
        mask = self.prop("zero_idx_mask")
        self.mask_id = -1 if mask is None else parse_ints(self.name, "zero_idx_mask", mask)[0]
        self.vocab, self.dim, self.L = vocab, dim, shape[-1]
        init = self.prop("weight_initializer", "xavier_uniform")  # NNTrainer's default
        self.request_weight("weight", (vocab, dim), init, vocab, dim)
        self.input_needed = frozenset({CG})
        if len(shape) == 2:
            return [(shape[0], self.L, dim)]
        return [(*shape[:-2], self.L, dim)]

    def bind(self) -> None:
        rows = self.io.x[0].shape[0] * self.L
        self.ids = self.io.x[0].reshape(rows)
        self.y2 = self.io.y[0].reshape(rows, self.dim)
        dy = self.io.dy[0]
        self.dy2 = None if dy is None else dy.reshape(rows, self.dim)

    def forward(self, training: bool) -> None:
        bad = K.embedding_fwd(self.ids, self.w["weight"], self.y2, self.mask_id)
        if bad:
            raise DataError(f"layer '{self.name}' (embedding): {bad} input ids are not integers in "
                            f"[0, in_dim={self.vocab})")

    def calc_gradient(self) -> None:
        K.embedding_bwd(self.ids, self.dy2, self.g["weight"], self.mask_id)

    def calc_derivative(self) -> None:
        dx = self.io.dx[0]
        if dx is not None:
            dx.fill(0.0)
