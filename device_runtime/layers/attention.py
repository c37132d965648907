"""Dot-product attention and multi-head attention (NNTrainer names, PyTorch maths).

``attention`` (no weights): inputs ``query, value[, key]`` (key defaults to value),
``softmax(q k^T [/ sqrt(d)]) v``; properties ``scaled_dot_product``, ``causal_mask``.

``multi_head_attention``: inputs ``query, key, value`` (two inputs: ``query, value``
with key = value; one input: self-attention). Weights ``query_fc_weight (Dq, H*P)``,
``key_fc_weight``, ``value_fc_weight (Dv, H*Pv)``, ``fc_weight (H*Pv, output_shape)``
and their biases, P = ``projected_key_dim`` (default Dq / H); scale 1/sqrt(P). With
P = Pv = Dq/H this is ``torch.nn.MultiheadAttention`` (in_proj = the three fc weights
transposed). Sequences are ``(B, 1, T, D)`` as in NNTrainer, or ``(B, T, D)``.
"""

from __future__ import annotations

import math

import numpy as np

from ..kernels import attention as K
from ..kernels.bias import add_row_bias
from .base import CD, CG, F, FinalizeContext, Layer, Shape, parse_bool, parse_float, parse_ints
from .sequence import sequence_dims


class Attention(Layer):
    type = "attention"
    keys = frozenset({"scaled_dot_product", "causal_mask"})
    min_inputs, max_inputs = 2, 3

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        q, v = in_shapes[0], in_shapes[1]
        k = in_shapes[2] if len(in_shapes) == 3 else v
        (tq, dq), (tk, dk), (tv, dv) = (sequence_dims(self, s) for s in (q, k, v))
        if dq != dk or tk != tv or q[0] != k[0] or k[0] != v[0]:
            raise self.fail(f"query {q}, key {k} and value {v} do not fit (query and key "
                            "widths, key and value lengths must agree)")
        self.dims = (q[0], tq, tk, dq, dv)
        scaled = parse_bool(self.name, "scaled_dot_product", self.prop("scaled_dot_product", False))
        self.scale = 1.0 / math.sqrt(dk) if scaled else 1.0
        self.causal = parse_bool(self.name, "causal_mask", self.prop("causal_mask", False))
        b = q[0]
        self.request_tensor("attn", (b, 1, tq, tk), {F, CD})
        self.request_tensor("ds", (tq, tk), {CD}, np.float64)
        for name, t, d in (("sq", tq, dq), ("sk", tk, dk), ("sv", tk, dv)):
            self.request_tensor(name, (b, t, d), {CD})  # for derivatives nobody takes
        self.input_needed = frozenset({CD})
        return [(*q[:-1], dv)]

    def bind(self) -> None:
        b, tq, tk, dq, dv = self.dims
        x, dx = self.io.x, self.io.dx
        self.q = x[0].reshape(b, tq, dq)
        self.v = x[1].reshape(b, tk, dv)
        self.k = x[2].reshape(b, tk, dq) if len(x) == 3 else self.v.reshape(b, tk, dq)
        self.y = self.io.y[0].reshape(b, tq, dv)
        dy = self.io.dy[0]
        self.dy = None if dy is None else dy.reshape(b, tq, dv)
        t = self.t
        self.dq = dx[0].reshape(b, tq, dq) if dx[0] is not None else t.get("sq")
        self.dv = dx[1].reshape(b, tk, dv) if dx[1] is not None else t.get("sv")
        dk = dx[2] if len(dx) == 3 else None  # two inputs: the key is the value
        self.dk = dk.reshape(b, tk, dq) if dk is not None else t.get("sk")
        self.key_is_value = len(x) == 2

    def forward(self, training: bool) -> None:
        K.attention_fwd(self.q, self.k, self.v, self.t["attn"], self.y, self.scale, self.causal)

    def calc_derivative(self) -> None:
        if all(d is None for d in self.io.dx):
            return
        # an input that takes no derivative has a scratch in its place: all three exist
        dq, dk, dv = self.bound(self.dq, "dq"), self.bound(self.dk, "dk"), self.bound(self.dv, "dv")
        K.attention_bwd(self.bound(self.dy, "dy"), self.t["attn"], self.q, self.k, self.v, dq, dk,
                        dv, self.scale, self.t["ds"])
        if self.key_is_value:
            np.add(dv, dk, out=dv)


_PARAMS = ("query", "key", "value")
_DPROJ = ("dpq", "dpk", "dpv")  # the derivatives of their projections


class MultiHeadAttention(Layer):
    type = "multi_head_attention"
    keys = frozenset({"num_heads", "projected_key_dim", "projected_value_dim", "output_shape",
                      "dropout_rate", "return_attention_weight", "average_attention_weight",
                      "max_timestep"})
    min_inputs, max_inputs = 1, 3

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        q = in_shapes[0]
        v = in_shapes[-1]
        k = in_shapes[1] if len(in_shapes) == 3 else v
        (tq, dq), (tk, dk), (tv, dv) = (sequence_dims(self, s) for s in (q, k, v))
        if tk != tv or not q[0] == k[0] == v[0]:
            raise self.fail(f"key {k} and value {v} must have the same length")
        heads = parse_ints(self.name, "num_heads", self.prop("num_heads", 0))[0]
        if heads <= 0:
            raise self.fail(f"needs num_heads > 0, got {self.prop('num_heads')!r}")
        if self.prop("projected_key_dim") is None and dq % heads:
            raise self.fail(f"query width {dq} is not divisible by num_heads={heads}")
        p = parse_ints(self.name, "projected_key_dim",
                       self.prop("projected_key_dim", dq // heads))[0]
        pv = parse_ints(self.name, "projected_value_dim", self.prop("projected_value_dim", p))[0]
        out = parse_ints(self.name, "output_shape", self.prop("output_shape", dq))[0]
        if min(p, pv, out) <= 0:
            raise self.fail("projected_key_dim, projected_value_dim and output_shape must be > 0")
        if parse_float(self.name, "dropout_rate", self.prop("dropout_rate", 0.0)) > 0.0:
            raise self.fail("dropout_rate > 0 is not supported")
        if str(self.prop("return_attention_weight", "none")).strip().lower() != "none":
            raise self.fail("return_attention_weight is not supported (only none)")
        b = q[0]
        self.dims = (b, tq, tk, dq, dk, dv, heads, p, pv, out)
        self.scale = 1.0 / math.sqrt(p)
        self.use_bias = not parse_bool(self.name, "disable_bias", self.prop("disable_bias", False))
        winit = self.prop("weight_initializer", "xavier_uniform")
        binit = self.prop("bias_initializer", "zeros")
        for name, din, dout in (("query", dq, heads * p), ("key", dk, heads * p),
                                ("value", dv, heads * pv), ("", heads * pv, out)):
            pre = f"{name}_fc" if name else "fc"
            self.request_weight(f"{pre}_weight", (din, dout), winit, din, dout)
            if self.use_bias:
                self.request_weight(f"{pre}_bias", (dout,), binit, din, dout)
        saved = {F, CG, CD}
        for name, t, w in (("pq", tq, heads * p), ("pk", tk, heads * p), ("pv", tk, heads * pv)):
            self.request_tensor(name, (b, t, w), saved)
            self.request_tensor("d" + name, (b, t, w), {CG, CD})
        self.request_tensor("attn", (b, heads, tq, tk), saved)
        self.request_tensor("ao", (b, tq, heads * pv), {F, CG})
        self.request_tensor("dao", (b, tq, heads * pv), {CG, CD})
        self.request_tensor("ds", (tq, tk), {CG, CD}, np.float64)
        if len(in_shapes) < 3:  # shared inputs: derivatives are summed through a scratch
            self.request_tensor("dtmp", (b * tk, max(dk, dv)), {CD})
        self.input_needed = frozenset({CG})
        return [(*q[:-1], out)]

    def bind(self) -> None:
        b, tq, tk, dq, dk, dv, _, _, _, out = self.dims
        x, dx = self.io.x, self.io.dx
        n = len(x)
        self.src = [0, 1 if n == 3 else n - 1, n - 1]  # input index of query, key, value
        rows = (b * tq, b * tk, b * tk)
        widths = (dq, dk, dv)
        self.x2 = [x[s].reshape(r, w) for s, r, w in zip(self.src, rows, widths)]
        self.p2 = [self.t[f"p{c}"].reshape(r, -1) for c, r in zip("qkv", rows)]
        self.dp2 = [self.t[f"dp{c}"].reshape(r, -1) if f"dp{c}" in self.t else None
                    for c, r in zip("qkv", rows)]
        self.dx2 = [None if d is None else d.reshape(rows[0] if i == 0 else b * tk, -1)
                    for i, d in enumerate(dx)]
        self.ao2 = self.t["ao"].reshape(b * tq, -1)
        self.y2 = self.io.y[0].reshape(b * tq, out)
        dy = self.io.dy[0]
        self.dy2 = None if dy is None else dy.reshape(b * tq, out)

    def forward(self, training: bool) -> None:
        w = self.w
        for i, name in enumerate(_PARAMS):
            np.matmul(self.x2[i], w[f"{name}_fc_weight"], out=self.p2[i])
            if self.use_bias:
                add_row_bias(self.p2[i], w[f"{name}_fc_bias"])
        t = self.t
        K.attention_fwd(t["pq"], t["pk"], t["pv"], t["attn"], t["ao"], self.scale, False)
        np.matmul(self.ao2, w["fc_weight"], out=self.y2)
        if self.use_bias:
            add_row_bias(self.y2, w["fc_bias"])

    def _backward_core(self) -> None:
        t = self.t
        np.matmul(self.bound(self.dy2, "dy"), self.w["fc_weight"].T,
                  out=t["dao"].reshape(self.y2.shape[0], -1))
        K.attention_bwd(t["dao"], t["attn"], t["pq"], t["pk"], t["pv"], t["dpq"], t["dpk"],
                        t["dpv"], self.scale, t["ds"])

    def calc_gradient(self) -> None:
        self._backward_core()
        g, dy2 = self.g, self.bound(self.dy2, "dy")
        np.matmul(self.ao2.T, dy2, out=g["fc_weight"])
        if self.use_bias:
            np.sum(dy2, axis=0, out=g["fc_bias"])
        for i, name in enumerate(_PARAMS):
            dp2 = self.bound(self.dp2[i], _DPROJ[i])
            np.matmul(self.x2[i].T, dp2, out=g[f"{name}_fc_weight"])
            if self.use_bias:
                np.sum(dp2, axis=0, out=g[f"{name}_fc_bias"])

    def calc_derivative(self) -> None:
        if all(d is None for d in self.io.dx):
            return
        if not self.has_cg:
            self._backward_core()
        written: set[int] = set()
        for i, name in enumerate(_PARAMS):
            dst = self.dx2[self.src[i]]
            if dst is None:
                continue
            wt, dp2 = self.w[f"{name}_fc_weight"].T, self.bound(self.dp2[i], _DPROJ[i])
            if self.src[i] in written:  # a shared input: add this projection's share
                tmp = self.t["dtmp"][:, :dst.shape[1]]
                np.matmul(dp2, wt, out=tmp)
                np.add(dst, tmp, out=dst)
            else:
                np.matmul(dp2, wt, out=dst)
                written.add(self.src[i])
