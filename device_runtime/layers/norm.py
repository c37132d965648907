"""Batch normalisation: batch statistics in training, running statistics in inference.

In training the output overwrites the input (the producing layer never needs its own
output), and ``xhat`` is saved for backward; running statistics follow PyTorch (unbiased
variance). ``momentum`` keeps NNTrainer's meaning, the weight of the old running value:
the default 0.9 equals PyTorch's momentum=0.1.
"""

from __future__ import annotations

import math

import numpy as np

from ..kernels import norm as K
from .base import CD, CG, F, FinalizeContext, Layer, Shape, parse_float


class BatchNormalization(Layer):
    type = "batch_normalization"
    keys = frozenset({"epsilon", "momentum", "axis", "moving_mean_initializer",
                      "moving_variance_initializer", "gamma_initializer", "beta_initializer",
                      "beta_regularizer", "gamma_regularizer"})
    in_place = "modify"
    replayable = True

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        feat = shape[1:]
        if len(feat) >= 3 and feat[0] == 1 and feat[1] == 1:
            c, s = feat[2], math.prod(feat[3:])  # NNTrainer's (1, 1, features)
        else:
            c, s = feat[0], math.prod(feat[1:])
        self.c, self.s = c, s
        self.eps = parse_float(self.name, "epsilon", self.prop("epsilon", 1e-5))
        self.momentum = parse_float(self.name, "momentum", self.prop("momentum", 0.9))
        if not (self.eps > 0 and 0.0 <= self.momentum <= 1.0):
            raise self.fail(f"needs epsilon > 0 and momentum in [0, 1], got {self.eps}, "
                            f"{self.momentum}")
        self.request_weight("gamma", (c,), self.prop("gamma_initializer", "ones"))
        self.request_weight("beta", (c,), self.prop("beta_initializer", "zeros"))
        self.request_weight("moving_mean", (c,), self.prop("moving_mean_initializer", "zeros"),
                            trainable=False)
        self.request_weight("moving_variance", (c,),
                            self.prop("moving_variance_initializer", "ones"), trainable=False)
        # Two ways to have xhat in backward, bit-identical (kernels/norm.py): keep the input
        # and recompute xhat (and, when the executor chooses, recompute the output before
        # backward instead of keeping it); or write the output over the input and keep xhat.
        self.recompute = ctx.recompute
        # with no backward at all (frozen, inference) the output overwrites the input
        self.in_place_forward_only = True
        if self.recompute:
            self.in_place = "no"
            self.grad_in_place = True  # dx still overwrites dy (the kernel allows it)
            self.input_needed = frozenset({CD})
            self.request_tensor("mean", (c,), {F, CG, CD})
        else:
            self.request_tensor("xhat", shape, {F, CG, CD})
            self.request_tensor("mean", (c,), {F})
        self.request_tensor("var", (c,), {F})
        self.request_tensor("invstd", (c,), {F, CG, CD})
        if not self.has_trainable_weights:  # frozen: the kernel still wants somewhere to sum
            self.request_tensor("dparams", (2, c), {CG, CD})
        return [shape]

    def bind(self) -> None:
        n = self.io.x[0].shape[0]
        v = (n, self.c, self.s)
        self.x3, self.y3 = self.io.x[0].reshape(v), self.io.y[0].reshape(v)
        dx, dy = self.io.dx[0], self.io.dy[0]
        self.dx3 = None if dx is None else dx.reshape(v)
        self.dy3 = None if dy is None else dy.reshape(v)
        self.xhat3 = self.t["xhat"].reshape(v) if "xhat" in self.t else None
        self.count = n * self.s
        self.zeros = np.zeros(self.c, np.float32)
        self.ones = np.ones(self.c, np.float32)
        if "gamma" in self.g:
            self.dgamma, self.dbeta = self.g["gamma"], self.g["beta"]
        elif "dparams" in self.t:
            self.dgamma, self.dbeta = self.t["dparams"][0], self.t["dparams"][1]

    def forward(self, training: bool) -> None:
        w = self.w
        if not training:
            K.bn_infer_fwd(self.x3, self.y3, w["moving_mean"], w["moving_variance"],
                           w["gamma"], w["beta"], self.eps)
            return
        t = self.t
        K.bn_stats(self.x3, t["mean"], t["var"], t["invstd"], self.eps)
        if self.recompute:
            K.bn_affine(self.x3, t["mean"], t["invstd"], w["gamma"], w["beta"], self.y3)
        else:
            K.bn_normalize(self.x3, t["mean"], t["invstd"], self.xhat3)
            K.bn_affine(self.xhat3, self.zeros, self.ones, w["gamma"], w["beta"], self.y3)
        K.bn_update_running(w["moving_mean"], w["moving_variance"], t["mean"], t["var"],
                            1.0 - self.momentum, self.count)

    def replay(self) -> None:
        """Recompute the training output from the kept input and batch statistics."""
        t, w = self.t, self.w
        K.bn_affine(self.x3, t["mean"], t["invstd"], w["gamma"], w["beta"], self.y3)

    def _backward(self) -> None:
        # One pass gives dgamma, dbeta and dx (they share the channel sums); with no
        # derivative to produce, dx overwrites dy, which nothing reads afterwards.
        dx = self.dx3 if self.dx3 is not None else self.dy3
        t = self.t
        if self.recompute:
            K.bn_backward(self.dy3, self.x3, t["mean"], t["invstd"], t["invstd"],
                          self.w["gamma"], dx, self.dgamma, self.dbeta)
        else:
            K.bn_backward(self.dy3, self.xhat3, self.zeros, self.ones, t["invstd"],
                          self.w["gamma"], dx, self.dgamma, self.dbeta)

    def calc_gradient(self) -> None:
        if not self.has_cd:
            self._backward()

    def calc_derivative(self) -> None:
        self._backward()
