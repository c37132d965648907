"""The issue-5 layers against PyTorch: same weights, same data, same loss (MSE).

Each case is ``input -> fully_connected "pre" -> layer under test [-> ...]`` with an MSE
loss (embedding: ids in, a fully connected head after). The layer's own weight gradients
are compared directly; the derivative it passes upstream is compared through ``pre``'s
weight gradient (``x^T @ dx``), so a wrong ``calc_derivative`` shows up too. The forward
output is compared as well.

Tolerances (float32 on both sides; worst cases measured over this file in brackets):
outputs ``rtol=1e-5, atol=1e-6`` [2.7e-7 abs], loss ``rtol=1e-5`` [1e-7 rel], gradients
``rtol=1e-4, atol=1e-6`` [7.5e-8 abs, 6e-7 of the array's largest value]: only the
orders of summation differ (BLAS blocking, float64 accumulation in our kernels).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from device_runtime import Model, layer  # noqa: E402
from tests.helpers import GradCapture, loss_and_grads  # noqa: E402

torch.set_num_threads(1)
OUT_TOL = {"rtol": 1e-5, "atol": 1e-6}
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-6}
B, T, F, U = 3, 5, 4, 6


def _t(a: np.ndarray) -> Any:
    return torch.tensor(np.asarray(a, np.float32), requires_grad=True)


def _ours(specs: list, x: np.ndarray, y: np.ndarray) -> tuple[Model, float, dict, np.ndarray]:
    m = Model(specs, loss="mse", seed=3)
    m.compile(batch_size=x.shape[0], optimizer=GradCapture())
    loss, grads = loss_and_grads(m, x, y)
    out = m.predict(x)
    return m, loss, grads, out


def _compare(m: Model, loss: float, grads: dict, out: np.ndarray, t_out: Any, y: np.ndarray,
             t_params: dict[str, tuple[Any, Callable[[np.ndarray], np.ndarray]]]) -> None:
    """``t_params``: our key -> (torch leaf, function mapping torch's grad to our layout)."""
    t_loss = torch.nn.functional.mse_loss(t_out.reshape(y.shape), torch.tensor(y))
    t_loss.backward()
    np.testing.assert_allclose(out.reshape(-1), t_out.detach().numpy().reshape(-1), **OUT_TOL)
    np.testing.assert_allclose(loss, float(t_loss.detach()), rtol=1e-5)
    assert set(t_params) == set(grads), (sorted(t_params), sorted(grads))
    for key, (leaf, to_ours) in t_params.items():
        want = to_ours(leaf.grad.numpy())
        np.testing.assert_allclose(grads[key].reshape(want.shape), want, err_msg=key, **GRAD_TOL)


def _pre(m: Model) -> tuple[Any, Any]:
    w = m.get_weights()
    return _t(w["pre:weight"]), _t(w["pre:bias"])


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _data(seed: int, shape: tuple[int, ...], out: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape).astype(np.float32),
            rng.normal(size=(shape[0], out)).astype(np.float32))


def _gru_perm(u: int) -> np.ndarray:
    """Columns of our z, r, n layout in torch's r, z, n order."""
    return np.concatenate([np.arange(u, 2 * u), np.arange(u), np.arange(2 * u, 3 * u)])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("ret_seq", [True, False])
def test_recurrent_matches_torch(kind: str, ret_seq: bool) -> None:
    # Prepare
    x, y = _data(1, (B, 1, T, F), (T if ret_seq else 1) * U)
    specs = [layer("input", "in", input_shape=f"1:{T}:{F}"),
             layer("fully_connected", "pre", unit=F),
             layer(kind, "rec", unit=U, return_sequences=ret_seq)]
    m, loss, grads, out = _ours(specs, x, y)
    w = m.get_weights()
    mod = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind](
        F, U, batch_first=True)
    perm = _gru_perm(U) if kind == "gru" else np.arange(w["rec:bias_ih"].size)
    inv = np.argsort(perm)
    with torch.no_grad():
        mod.weight_ih_l0.copy_(torch.tensor(w["rec:weight_ih"][:, perm].T))
        mod.weight_hh_l0.copy_(torch.tensor(w["rec:weight_hh"][:, perm].T))
        mod.bias_ih_l0.copy_(torch.tensor(w["rec:bias_ih"][perm]))
        mod.bias_hh_l0.copy_(torch.tensor(w["rec:bias_hh"][perm]))
    pw, pb = _pre(m)
    # Execute
    h = torch.from_numpy(x.reshape(B, T, F)) @ pw + pb
    seq, _ = mod(h)
    t_out = seq if ret_seq else seq[:, -1]
    # Assert
    _compare(m, loss, grads, out, t_out, y, {
        "pre:weight": (pw, _same), "pre:bias": (pb, _same),
        "rec:weight_ih": (mod.weight_ih_l0, lambda g: g.T[:, inv]),
        "rec:weight_hh": (mod.weight_hh_l0, lambda g: g.T[:, inv]),
        "rec:bias_ih": (mod.bias_ih_l0, lambda g: g[inv]),
        "rec:bias_hh": (mod.bias_hh_l0, lambda g: g[inv]),
    })


@pytest.mark.parametrize("inputs", [1, 3])
def test_multi_head_attention_matches_torch(inputs: int) -> None:
    # Prepare: E = 8 split over 2 heads; three inputs get distinct projections of x
    E, H = 8, 2
    x, y = _data(2, (B, 1, T, E), T * E)
    pres = ["pre", "pre2", "pre3"][:inputs]
    specs = [layer("input", "in", input_shape=f"1:{T}:{E}"),
             *[layer("fully_connected", p, unit=E, input_layers="in") for p in pres],
             layer("multi_head_attention", "mha", num_heads=H, input_layers=",".join(pres))]
    m, loss, grads, out = _ours(specs, x, y)
    w = m.get_weights()
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.tensor(np.concatenate(
            [w[f"mha:{p}_fc_weight"].T for p in ("query", "key", "value")])))
        mha.in_proj_bias.copy_(torch.tensor(np.concatenate(
            [w[f"mha:{p}_fc_bias"] for p in ("query", "key", "value")])))
        mha.out_proj.weight.copy_(torch.tensor(w["mha:fc_weight"].T))
        mha.out_proj.bias.copy_(torch.tensor(w["mha:fc_bias"]))
    xt = torch.from_numpy(x.reshape(B, T, E))
    leaves = {p: (_t(w[f"{p}:weight"]), _t(w[f"{p}:bias"])) for p in pres}
    hs = [xt @ leaves[p][0] + leaves[p][1] for p in pres]
    q, k, v = (hs * 3)[:3] if inputs == 1 else hs
    # Execute
    t_out, _ = mha(q, k, v, need_weights=False)
    # Assert
    params: dict[str, tuple[Any, Callable[[np.ndarray], np.ndarray]]] = {
        "mha:fc_weight": (mha.out_proj.weight, lambda g: g.T),
        "mha:fc_bias": (mha.out_proj.bias, _same)}
    for i, p in enumerate(("query", "key", "value")):
        sl = slice(i * E, (i + 1) * E)
        params[f"mha:{p}_fc_weight"] = (mha.in_proj_weight, lambda g, sl=sl: g[sl].T)
        params[f"mha:{p}_fc_bias"] = (mha.in_proj_bias, lambda g, sl=sl: g[sl])
    for p in pres:
        params[f"{p}:weight"] = (leaves[p][0], _same)
        params[f"{p}:bias"] = (leaves[p][1], _same)
    _compare(m, loss, grads, out, t_out, y, params)


def test_layer_normalization_matches_torch() -> None:
    x, y = _data(3, (B, 2, 3, F), 2 * 3 * F)
    specs = [layer("input", "in", input_shape=f"2:3:{F}"),
             layer("fully_connected", "pre", unit=F),
             layer("layer_normalization", "ln", axis="2,3", epsilon=1e-5)]
    m, loss, grads, out = _ours(specs, x, y)
    rng = np.random.default_rng(0)  # non-trivial affine parameters
    m.weights.get("ln:gamma")[...] = rng.normal(size=(3, F))
    m.weights.get("ln:beta")[...] = rng.normal(size=(3, F))
    loss, grads = loss_and_grads(m, x, y)
    out = m.predict(x)
    w = m.get_weights()
    ln = torch.nn.LayerNorm((3, F), eps=1e-5)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor(w["ln:gamma"]))
        ln.bias.copy_(torch.tensor(w["ln:beta"]))
    pw, pb = _pre(m)
    t_out = ln(torch.from_numpy(x) @ pw + pb)
    _compare(m, loss, grads, out, t_out, y, {
        "pre:weight": (pw, _same), "pre:bias": (pb, _same),
        "ln:gamma": (ln.weight, _same), "ln:beta": (ln.bias, _same)})


@pytest.mark.parametrize("k,stride,pad,dil", [(3, 1, 1, 1), (3, 2, 0, 1), (2, 1, 2, 2)])
def test_conv1d_matches_torch(k: int, stride: int, pad: int, dil: int) -> None:
    C, W, Fo = 3, 11, 4
    x, y = _data(4, (B, C, 1, W), 0)
    ow = (W + 2 * pad - dil * (k - 1) - 1) // stride + 1
    y = np.random.default_rng(5).normal(size=(B, Fo * ow)).astype(np.float32)
    specs = [layer("input", "in", input_shape=f"{C}:1:{W}"),
             layer("fully_connected", "pre", unit=W),
             layer("conv1d", "conv", filters=Fo, kernel_size=k, stride=stride, padding=pad,
                   dilation=dil)]
    m, loss, grads, out = _ours(specs, x, y)
    w = m.get_weights()
    conv = torch.nn.Conv1d(C, Fo, k, stride=stride, padding=pad, dilation=dil)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(w["conv:weight"]))
        conv.bias.copy_(torch.tensor(w["conv:bias"]))
    pw, pb = _pre(m)
    t_out = conv((torch.from_numpy(x) @ pw + pb).reshape(B, C, W))
    _compare(m, loss, grads, out, t_out, y, {
        "pre:weight": (pw, _same), "pre:bias": (pb, _same),
        "conv:weight": (conv.weight, _same), "conv:bias": (conv.bias, _same)})


def test_embedding_matches_torch() -> None:
    V, D, L = 7, 5, 4
    rng = np.random.default_rng(6)
    ids = rng.integers(0, V, (B, 1, 1, L))
    ids[0, 0, 0, :2] = 3  # a repeated id: its gradient rows must add up
    x = ids.astype(np.float32)
    y = rng.normal(size=(B, 3)).astype(np.float32)
    specs = [layer("input", "in", input_shape=f"1:1:{L}"),
             layer("embedding", "emb", in_dim=V, out_dim=D, flatten=True),
             layer("fully_connected", "head", unit=3)]
    m, loss, grads, out = _ours(specs, x, y)
    w = m.get_weights()
    emb = torch.nn.Embedding(V, D)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor(w["emb:weight"]))
    hw, hb = _t(w["head:weight"]), _t(w["head:bias"])
    t_out = emb(torch.from_numpy(ids.reshape(B, L))).reshape(B, L * D) @ hw + hb
    _compare(m, loss, grads, out, t_out, y, {
        "emb:weight": (emb.weight, _same), "head:weight": (hw, _same), "head:bias": (hb, _same)})


@pytest.mark.parametrize("scaled,causal", [(False, False), (True, True)])
def test_attention_matches_torch(scaled: bool, causal: bool) -> None:
    E = 4
    x, y = _data(7, (B, 1, T, E), T * E)
    specs = [layer("input", "in", input_shape=f"1:{T}:{E}"),
             layer("fully_connected", "pre", unit=E),
             layer("fully_connected", "pre2", unit=E, input_layers="in"),
             layer("attention", "att", input_layers="pre,pre2", scaled_dot_product=scaled,
                   causal_mask=causal)]
    m, loss, grads, out = _ours(specs, x, y)
    w = m.get_weights()
    pw, pb = _pre(m)
    vw, vb = _t(w["pre2:weight"]), _t(w["pre2:bias"])
    xt = torch.from_numpy(x.reshape(B, T, E))
    q, v = xt @ pw + pb, xt @ vw + vb
    t_out = torch.nn.functional.scaled_dot_product_attention(
        q, v, v, is_causal=causal, scale=None if scaled else 1.0)
    _compare(m, loss, grads, out, t_out, y, {
        "pre:weight": (pw, _same), "pre:bias": (pb, _same),
        "pre2:weight": (vw, _same), "pre2:bias": (vb, _same)})


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample2d_matches_torch(mode: str) -> None:
    x, _ = _data(8, (B, 2, 3, 4), 0)
    y = np.random.default_rng(9).normal(size=(B, 2 * 6 * 12)).astype(np.float32)
    specs = [layer("input", "in", input_shape="2:3:4"),
             layer("fully_connected", "pre", unit=4),
             layer("upsample2d", "up", upsample=mode, kernel_size="2,3")]
    m, loss, grads, out = _ours(specs, x, y)
    pw, pb = _pre(m)
    h = torch.from_numpy(x) @ pw + pb
    kw = {} if mode == "nearest" else {"align_corners": False}
    t_out = torch.nn.functional.interpolate(h, scale_factor=(2, 3), mode=mode, **kw)
    _compare(m, loss, grads, out, t_out, y, {"pre:weight": (pw, _same), "pre:bias": (pb, _same)})
