"""Loss layers: the last node; they read the label tensor and start backward.

Losses reduce by mean as PyTorch does: cross-entropy over the batch (rows), MSE and
sigmoid cross-entropy over all elements.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from ..kernels import loss as K
from .base import CD, F, FinalizeContext, Layer, Shape

# A label's scalar type; an alias because a layer's ``type`` (its name) hides the builtin.
DType = type[np.generic]


class Loss(Layer):
    """Base class; ``label_kind`` is "index" (int64 class ids) or "dense" (float32)."""

    folds: ClassVar[str | None] = None  # trailing activation this loss computes itself
    label_kind = "dense"

    def __init__(self, name: str, props: dict | None = None) -> None:
        super().__init__(name, props)
        self.value = 0.0
        self.correct = -1  # number of correct argmax predictions, when labels are ids

    def label_shape(self, pred: Shape) -> tuple[Shape, DType]:
        return pred, np.float32

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        if ctx.label_kind is not None:
            self.label_kind = ctx.label_kind
        self.rows = int(math.prod(shape[:-1]))
        self.k = shape[-1]
        lshape, ldtype = self.label_shape(shape)
        self.request_tensor("label", lshape, {F, CD}, ldtype)
        return []

    @property
    def label(self) -> np.ndarray:
        return self.t["label"]


class MSE(Loss):
    type = "mse"

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        out = super().finalize(in_shapes, ctx)
        self.input_needed = frozenset({CD})
        return out

    def bind(self) -> None:
        self.p1 = self.io.x[0].reshape(-1)
        self.l1 = self.label.reshape(-1)
        dx = self.io.dx[0]
        self.dx1 = None if dx is None else dx.reshape(-1)

    def forward(self, training: bool) -> None:
        self.value = K.mse_fwd(self.p1, self.l1)

    def calc_derivative(self) -> None:
        if self.dx1 is not None:
            K.mse_bwd(self.p1, self.l1, self.dx1)


class CrossEntropySoftmax(Loss):
    """Softmax cross-entropy with class ids (int64) or probability targets (float32)."""

    type = "cross_softmax"
    folds = "softmax"
    label_kind = "index"

    def label_shape(self, pred: Shape) -> tuple[Shape, DType]:
        if self.label_kind == "index":
            return (self.rows,), np.int64
        return (self.rows, self.k), np.float32

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        out = super().finalize(in_shapes, ctx)
        self.request_tensor("probs", (self.rows, self.k), {F, CD})
        return out

    def bind(self) -> None:
        self.logits = self.io.x[0].reshape(self.rows, self.k)
        dx = self.io.dx[0]
        self.dx2 = None if dx is None else dx.reshape(self.rows, self.k)
        self.probs = self.t["probs"]

    def forward(self, training: bool) -> None:
        if self.label_kind == "index":
            self.value = K.softmax_xent_fwd_idx(self.logits, self.label, self.probs)
            self.correct = K.argmax_accuracy(self.logits, self.label)
        else:
            self.value = K.softmax_xent_fwd_soft(self.logits, self.label, self.probs)

    def calc_derivative(self) -> None:
        if self.dx2 is None:
            return
        if self.label_kind == "index":
            K.softmax_xent_bwd_idx(self.probs, self.label, self.dx2)
        else:
            K.softmax_xent_bwd_soft(self.probs, self.label, self.dx2)


class CrossEntropySigmoid(Loss):
    """Binary cross-entropy on logits (BCEWithLogits), mean over all elements."""

    type = "cross_sigmoid"
    folds = "sigmoid"

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        out = super().finalize(in_shapes, ctx)
        self.input_needed = frozenset({CD})
        return out

    def bind(self) -> None:
        self.x1 = self.io.x[0].reshape(-1)
        self.l1 = self.label.reshape(-1)
        dx = self.io.dx[0]
        self.dx1 = None if dx is None else dx.reshape(-1)

    def forward(self, training: bool) -> None:
        self.value = K.sigmoid_xent_fwd(self.x1, self.l1)

    def calc_derivative(self) -> None:
        if self.dx1 is not None:
            K.sigmoid_xent_bwd(self.x1, self.l1, self.dx1)


def apply_folded(act: str | None, out: np.ndarray) -> np.ndarray:
    """Apply to model outputs the activation a loss folded in (``Loss.folds``)."""
    if act == "softmax":
        z = out - out.max(axis=-1, keepdims=True)
        np.exp(z, out=z)
        return z / z.sum(axis=-1, keepdims=True)
    if act == "sigmoid":
        return 1.0 / (1.0 + np.exp(-out))
    return out


LOSSES = {"mse": MSE, "cross_softmax": CrossEntropySoftmax, "cross_sigmoid": CrossEntropySigmoid}
LOSS_ALIASES = {"cross_entropy": "cross_softmax", "cross_entropy_softmax": "cross_softmax",
                "cross_entropy_sigmoid": "cross_sigmoid", "bce": "cross_sigmoid",
                "softmax_cross_entropy": "cross_softmax"}
