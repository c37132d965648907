"""Recurrent layers: lstm, gru, rnn (NNTrainer's property names, PyTorch's maths).

Input ``(B, 1, T, F)`` as in NNTrainer (also ``(B, T, F)``, or ``(B, F)`` for T = 1);
output ``(..., T, unit)`` with ``return_sequences`` else ``(..., 1, unit)``.
Weights: ``weight_ih (F, G*unit)``, ``weight_hh (unit, G*unit)``, ``bias_ih``/``bias_hh``
(or one ``bias_h`` with ``integrate_bias``), gate order LSTM ``i,f,g,o``, GRU ``z,r,n``.

Forward keeps the per-step state time-major, ``(T, B, ...)``, so every step reads and
writes contiguous rows: the input projections of all steps are one GEMM, then each step
is one ``h @ W_hh`` GEMM and an elementwise kernel. The activated gates, cell states
and hidden states are saved for backpropagation through time, which runs in
``calc_gradient`` (CG comes before CD) or, for a frozen layer, in ``calc_derivative``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..kernels import sequence as K
from ..kernels.bias import add_row_bias
from .base import CD, CG, F, FinalizeContext, Layer, Shape, parse_bool, parse_float, parse_ints


def sequence_dims(layer: Layer, shape: Shape) -> tuple[int, int]:
    """(T, F) of a ``(B, [1, ...,] T, F)`` input; ``(B, F)`` is one time step."""
    if len(shape) == 2:
        return 1, shape[1]
    if any(d != 1 for d in shape[1:-2]):
        raise layer.fail(f"needs a (batch, 1, time, features) input, got {shape}")
    return shape[-2], shape[-1]


class Recurrent(Layer):
    """Shared machinery; subclasses set the gate count and the step kernels."""

    keys = frozenset({"unit", "return_sequences", "hidden_state_activation",
                      "recurrent_activation", "integrate_bias", "dropout", "dropout_rate",
                      "bidirectional", "max_timestep", "reset_after"})
    gates: ClassVar[int] = 1  # G: projections per unit
    saved: ClassVar[int] = 0  # saved gate values per unit and step
    cell: ClassVar[bool] = False  # LSTM keeps a cell state

    def finalize(self, in_shapes: list[Shape], ctx: FinalizeContext) -> list[Shape]:
        (shape,) = in_shapes
        b = shape[0]
        t, f = sequence_dims(self, shape)
        u = parse_ints(self.name, "unit", self.prop("unit", 0))[0]
        if u <= 0:
            raise self.fail(f"needs unit > 0, got {self.prop('unit')!r}")
        self.B, self.T, self.F, self.U = b, t, f, u
        self.ret_seq = parse_bool(self.name, "return_sequences",
                                  self.prop("return_sequences", False))
        self.act = self._act_code("hidden_state_activation", "tanh")
        self.ract = self._act_code("recurrent_activation", "sigmoid")
        for key in ("dropout", "dropout_rate"):
            if parse_float(self.name, key, self.prop(key, 0.0)) > 0.0:
                raise self.fail(f"{key} > 0 is not supported in recurrent layers")
        if parse_bool(self.name, "bidirectional", self.prop("bidirectional", False)):
            raise self.fail("bidirectional=true is not supported")
        if not parse_bool(self.name, "reset_after", self.prop("reset_after", True)):
            raise self.fail("reset_after=false is not supported (PyTorch's form only)")
        gu = self.gates * u
        self.integrate = parse_bool(self.name, "integrate_bias", self.prop("integrate_bias", False))
        self.use_bias = not parse_bool(self.name, "disable_bias", self.prop("disable_bias", False))
        winit = str(self.prop("weight_initializer", "torch"))
        binit = str(self.prop("bias_initializer", "torch"))
        # "torch" init is U(+-1/sqrt(unit)) for every parameter, as torch.nn.LSTM does.
        fan = (lambda n: u) if winit.lower() == "torch" else (lambda n: n)
        self.request_weight("weight_ih", (f, gu), winit, fan(f), gu)
        self.request_weight("weight_hh", (u, gu), winit, u, gu)
        if self.use_bias:
            names = ("bias_h",) if self.integrate else ("bias_ih", "bias_hh")
            for n in names:
                self.request_weight(n, (gu,), binit, u, gu)
        self.request_tensor("hbuf", (t + 1, b, u), {F, CG, CD})  # hbuf[0] = h_{-1} = 0
        if self.cell:
            self.request_tensor("cbuf", (t + 1, b, u), {F, CG, CD})
        if self.saved:
            self.request_tensor("gates", (t, b, self.saved * u), {F, CG, CD})
        self.request_tensor("gh", (b, gu), {F})
        if t > 1:  # a time-major copy of the input: the input itself is not kept
            self.request_tensor("xt", (t, b, f), {F, CG})
        else:
            self.input_needed = frozenset({CG})
        self.request_tensor("dgx", (t, b, gu), {CG, CD})
        self.request_tensor("dh", (b, u), {CG, CD})
        self._request_backward_scratch()
        head = shape[:-2] if len(shape) > 2 else (b,)
        if len(shape) == 2:
            return [(b, t * u if self.ret_seq else u)]
        return [(*head, t if self.ret_seq else 1, u)]

    def _act_code(self, key: str, default: str) -> int:
        name = str(self.prop(key, default)).strip().lower()
        if name not in K.ACT_CODES:
            raise self.fail(f"{key}={name!r} is not supported (known: {', '.join(K.ACT_CODES)})")
        return K.ACT_CODES[name]

    def _request_backward_scratch(self) -> None:
        """Extra backward tensors of a subclass."""

    # ------------------------------------------------------------------ binding
    def bind(self) -> None:
        b, t, f, u = self.B, self.T, self.F, self.U
        x = self.io.x[0]
        self.x3 = x.reshape(b, t, f)
        self.xt = self.t["xt"] if t > 1 else x.reshape(1, b, f)
        self.xt2 = self.xt.reshape(t * b, f)
        self.hbuf = self.t["hbuf"]
        self.hprev2 = self.hbuf[:t].reshape(t * b, u)
        y, dy, dx = self.io.y[0], self.io.dy[0], self.io.dx[0]
        self.yv = y.reshape(b, t, u) if self.ret_seq else y.reshape(b, u)
        self.dyv = None if dy is None else dy.reshape(self.yv.shape)
        self.dx3 = None if dx is None else dx.reshape(b, t, f)
        self.dgx = self.t.get("dgx")
        self.dgx2 = None if self.dgx is None else self.dgx.reshape(t * b, -1)
        self.pre2 = self._pre2()
        self.whh_t = self.w["weight_hh"].T
        self.wih_t = self.w["weight_ih"].T

    def _pre2(self) -> np.ndarray:
        """Where the input projections of all steps go, (T*B, G*U)."""
        return self.t["gates"].reshape(self.T * self.B, -1)

    # ------------------------------------------------------------------ forward
    def forward(self, training: bool) -> None:
        if self.T > 1:
            np.copyto(self.xt, self.x3.transpose(1, 0, 2))
        np.matmul(self.xt2, self.w["weight_ih"], out=self.pre2)
        if self.use_bias:
            add_row_bias(self.pre2, self.w["bias_h" if self.integrate else "bias_ih"])
        self.hbuf[0].fill(0.0)
        gh, whh = self.t["gh"], self.w["weight_hh"]
        bhh = self.w["bias_hh"] if self.use_bias and not self.integrate else None
        for t in range(self.T):
            np.matmul(self.hbuf[t], whh, out=gh)
            if bhh is not None:
                add_row_bias(gh, bhh)
            self._step(t, gh)
        if self.ret_seq:
            np.copyto(self.yv, self.hbuf[1:].transpose(1, 0, 2))
        else:
            np.copyto(self.yv, self.hbuf[self.T])

    def _step(self, t: int, gh: np.ndarray) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------ backward
    def _bptt(self) -> None:
        """Fill ``dgx`` (and ``dgh``) for every step, last to first."""
        dh, dy = self.t["dh"], self.bound(self.dyv, "dy")
        dgx = self.bound(self.dgx, "dgx")
        dh.fill(0.0)
        self._reset_backward()
        for t in range(self.T - 1, -1, -1):
            if self.ret_seq:
                np.add(dh, dy[:, t], out=dh)
            elif t == self.T - 1:
                np.add(dh, dy, out=dh)
            self._step_back(t, dh, dgx[t])

    def _reset_backward(self) -> None:
        pass

    def _step_back(self, t: int, dh: np.ndarray, dgx: np.ndarray) -> None:
        """Step ``t`` of backpropagation through time; ``dgx`` is ``dgx[t]``."""
        raise NotImplementedError

    def _dgh2(self) -> np.ndarray:
        return self.bound(self.dgx2, "dgx")

    def calc_gradient(self) -> None:
        self._bptt()
        g, dgx2, dgh2 = self.g, self.bound(self.dgx2, "dgx"), self._dgh2()
        np.matmul(self.xt2.T, dgx2, out=g["weight_ih"])
        np.matmul(self.hprev2.T, dgh2, out=g["weight_hh"])
        if self.use_bias:
            if self.integrate:
                np.sum(dgx2, axis=0, out=g["bias_h"])
            else:
                np.sum(dgx2, axis=0, out=g["bias_ih"])
                np.sum(dgh2, axis=0, out=g["bias_hh"])

    def calc_derivative(self) -> None:
        if self.dx3 is None:
            return
        if not self.has_cg:
            self._bptt()
        dgx = self.bound(self.dgx, "dgx")
        for t in range(self.T):
            np.matmul(dgx[t], self.wih_t, out=self.dx3[:, t, :])


class LSTM(Recurrent):
    type = "lstm"
    gates, saved, cell = 4, 4, True

    def _request_backward_scratch(self) -> None:
        self.request_tensor("dc", (self.B, self.U), {CG, CD})

    def _step(self, t: int, gh: np.ndarray) -> None:
        c = self.t["cbuf"]
        if t == 0:
            c[0].fill(0.0)
        g = self.t["gates"][t]
        K.lstm_fwd_step(g, gh, c[t], g, c[t + 1], self.hbuf[t + 1], self.act, self.ract)

    def _reset_backward(self) -> None:
        self.t["dc"].fill(0.0)

    def _step_back(self, t: int, dh: np.ndarray, dgx: np.ndarray) -> None:
        c = self.t["cbuf"]
        K.lstm_bwd_step(self.t["gates"][t], c[t + 1], c[t], dh, self.t["dc"], dgx,
                        self.act, self.ract)
        if t > 0:
            np.matmul(dgx, self.whh_t, out=dh)


class GRU(Recurrent):
    type = "gru"
    gates, saved = 3, 4  # saved: z, r, n and h W_hn + b_hn

    def _request_backward_scratch(self) -> None:
        self.request_tensor("dgh", (self.T, self.B, 3 * self.U), {CG, CD})
        self.request_tensor("dhtmp", (self.B, self.U), {CG, CD})

    def _pre2(self) -> np.ndarray:
        return self.t["gates"].reshape(self.T * self.B, 4 * self.U)[:, :3 * self.U]

    def _dgh2(self) -> np.ndarray:
        return self.t["dgh"].reshape(self.T * self.B, 3 * self.U)

    def _step(self, t: int, gh: np.ndarray) -> None:
        K.gru_fwd_step(self.t["gates"][t], gh, self.hbuf[t], self.hbuf[t + 1], self.act, self.ract)

    def _step_back(self, t: int, dh: np.ndarray, dgx: np.ndarray) -> None:
        dgh = self.t["dgh"][t]
        K.gru_bwd_step(self.t["gates"][t], self.hbuf[t], dh, dgx, dgh, self.act, self.ract)
        if t > 0:  # dh already holds its direct part dh * z
            tmp = self.t["dhtmp"]
            np.matmul(dgh, self.whh_t, out=tmp)
            np.add(dh, tmp, out=dh)


class RNN(Recurrent):
    type = "rnn"
    gates, saved = 1, 0

    def _pre2(self) -> np.ndarray:
        return self.hbuf[1:].reshape(self.T * self.B, self.U)

    def _step(self, t: int, gh: np.ndarray) -> None:
        K.rnn_fwd_step(self.hbuf[t + 1], gh, self.act)

    def _step_back(self, t: int, dh: np.ndarray, dgx: np.ndarray) -> None:
        K.rnn_bwd_step(self.hbuf[t + 1], dh, dgx, self.act)
        if t > 0:
            np.matmul(dgx, self.whh_t, out=dh)
