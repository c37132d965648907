"""Numerical gradient checks for the issue-5 layers, through the planned executor.

As in test_layers_gradcheck.py, each layer sits between trainable layers, so the check
covers its weight gradients (CG) and the derivative it passes upstream (CD).
"""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime import DataError, Model, ModelError, layer
from tests.helpers import GradCapture, numerical_grad_check


def _check(specs, in_shape, classes=3, batch=3, x=None, seed=0, **kw):
    m = Model(specs, loss="cross_softmax", seed=seed)
    m.compile(batch_size=batch, optimizer=GradCapture())
    rng = np.random.default_rng(seed)
    if x is None:
        x = rng.normal(size=(batch, *in_shape)).astype(np.float32)
    y = rng.integers(0, classes, batch)
    assert numerical_grad_check(m, x, y, **kw) > 0
    return m


def _seq(*middle, shape="1:4:5", head=3):
    return [layer("input", "in", input_shape=shape),
            layer("fully_connected", "pre", unit=int(shape.split(":")[-1])),
            *middle, layer("flatten", "flat"), layer("fully_connected", "head", unit=head)]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("ret_seq", [False, True])
def test_recurrent(kind, ret_seq):
    _check(_seq(layer(kind, "r", unit=4, return_sequences=ret_seq)), (1, 4, 5))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_recurrent_frozen_still_passes_derivative(kind):
    # frozen: no CG, so backpropagation through time runs in CD
    _check(_seq(layer(kind, "r", unit=4, return_sequences=True, trainable=False)), (1, 4, 5))


def test_recurrent_options():
    _check(_seq(layer("lstm", "r", unit=3, integrate_bias=True, hidden_state_activation="sigmoid",
                      recurrent_activation="tanh")), (1, 4, 5))
    _check(_seq(layer("gru", "r", unit=3, disable_bias=True)), (1, 4, 5))
    _check(_seq(layer("rnn", "r", unit=3, hidden_state_activation="relu")), (1, 4, 5))
    _check(_seq(layer("lstm", "r", unit=4), shape="1:1:5"), (1, 1, 5))  # one step


def test_stacked_lstm_on_3d_input():
    _check([layer("input", "in", input_shape="3:2"),
            layer("lstm", "l1", unit=4, return_sequences=True),
            layer("lstm", "l2", unit=3, flatten=True),
            layer("fully_connected", "head", unit=3)], (3, 2))


def test_layer_normalization():
    _check(_seq(layer("layer_normalization", "ln", axis="2,3"), shape="2:3:4"), (2, 3, 4))
    _check(_seq(layer("layer_normalization", "ln", epsilon=1e-3), shape="2:3:4"), (2, 3, 4))


@pytest.mark.parametrize("pad,stride,dil", [("valid", 1, 1), ("same", 2, 1), ("2,1", 1, 2)])
def test_conv1d(pad, stride, dil):
    _check([layer("input", "in", input_shape="2:1:9"),
            layer("conv1d", "pre", filters=3, kernel_size=3, padding=1),
            layer("conv1d", "c", filters=4, kernel_size=3, stride=stride, padding=pad,
                  dilation=dil),
            layer("flatten", "flat"), layer("fully_connected", "head", unit=3)], (2, 1, 9))


def test_attention_query_value():
    # two inputs: the key is the value, so the value's derivative gathers both shares
    _check([layer("input", "in", input_shape="1:4:6"),
            layer("fully_connected", "q", unit=6),
            layer("fully_connected", "v", unit=6, input_layers="in"),
            layer("attention", "att", input_layers="q,v"),
            layer("flatten", "flat"), layer("fully_connected", "head", unit=3)], (1, 4, 6))


def test_attention_query_value_key_scaled_causal():
    _check([layer("input", "in", input_shape="1:4:6"),
            layer("fully_connected", "q", unit=6),
            layer("fully_connected", "v", unit=5, input_layers="in"),
            layer("fully_connected", "k", unit=6, input_layers="in"),
            layer("attention", "att", input_layers="q,v,k", scaled_dot_product=True,
                  causal_mask=True),
            layer("flatten", "flat"), layer("fully_connected", "head", unit=3)], (1, 4, 6))


@pytest.mark.parametrize("n", [1, 2, 3])
def test_multi_head_attention(n):
    pres = ["p1", "p2", "p3"][:n]
    _check([layer("input", "in", input_shape="1:4:6"),
            *[layer("fully_connected", p, unit=6, input_layers="in") for p in pres],
            layer("multi_head_attention", "mha", input_layers=",".join(pres), num_heads=2),
            layer("flatten", "flat"), layer("fully_connected", "head", unit=3)], (1, 4, 6))


def test_multi_head_attention_projection_sizes():
    _check(_seq(layer("multi_head_attention", "mha", num_heads=3, projected_key_dim=2,
                      projected_value_dim=3, output_shape=4), shape="1:3:5"), (1, 3, 5))


def test_positional_encoding():
    _check(_seq(layer("positional_encoding", "pe", max_timestep=8), shape="1:4:6"), (1, 4, 6))


def test_split_concat_permute():
    _check([layer("input", "in", input_shape="2:3:4"),
            layer("fully_connected", "pre", unit=4),
            layer("split", "sp", axis=3),
            layer("fully_connected", "a", unit=2, input_layers="sp(0)"),
            layer("fully_connected", "b", unit=2, input_layers="sp(3)"),
            layer("concat", "cat", input_layers="a,b,sp(1)"),  # sp(2) is read by nobody
            layer("permute", "pm", direction="3,1,2"),
            layer("flatten", "flat"), layer("fully_connected", "head", unit=3)], (2, 3, 4))


@pytest.mark.parametrize("axis", [1, 2, 3])
def test_concat_every_axis_and_split_number(axis):
    _check([layer("input", "in", input_shape="2:4:4"),
            layer("fully_connected", "pre", unit=4),
            layer("split", "sp", axis=axis, split_number=2),
            layer("fully_connected", "a", unit=4, input_layers="sp(0)"),
            layer("concat", "cat", input_layers="a,sp(1)", axis=axis),
            layer("flatten", "flat"), layer("fully_connected", "head", unit=3)], (2, 4, 4))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample2d(mode):
    _check([layer("input", "in", input_shape="2:3:4"),
            layer("conv2d", "pre", filters=2, kernel_size=1),
            layer("upsample2d", "up", upsample=mode, kernel_size="2,3"),
            layer("conv2d", "post", filters=2, kernel_size=3, flatten=True),
            layer("fully_connected", "head", unit=3)], (2, 3, 4))


def test_embedding_and_identity():
    x = np.random.default_rng(0).integers(0, 5, (3, 1, 1, 3)).astype(np.float32)
    _check([layer("input", "in", input_shape="1:1:3"),
            layer("embedding", "emb", in_dim=5, out_dim=4),
            layer("identity", "same"),
            layer("flatten", "flat"), layer("fully_connected", "head", unit=3)], (1, 1, 3), x=x)


def test_embedding_rejects_ids_out_of_range():
    m = Model([layer("input", "in", input_shape="2"),
               layer("embedding", "emb", in_dim=4, out_dim=2, flatten=True),
               layer("fully_connected", "head", unit=2)], seed=0)
    m.compile(batch_size=2, optimizer="sgd")
    with pytest.raises(DataError, match=r"emb.*2 input ids.*\[0, in_dim=4\)"):
        m.fit(np.array([[0, 4], [1, -1]], np.float32), np.array([0, 1]), steps=1)


@pytest.mark.parametrize("spec,msg", [
    (layer("lstm", "r", unit=3, bidirectional=True), "bidirectional"),
    (layer("gru", "r", unit=3, dropout=0.2), "dropout"),
    (layer("lstm", "r", unit=0), "unit > 0"),
    (layer("rnn", "r", unit=2, hidden_state_activation="softmax"), "hidden_state_activation"),
    (layer("multi_head_attention", "m", num_heads=4), "divisible"),
    (layer("layer_normalization", "ln", axis="1"), "trailing"),
    (layer("permute", "p", direction="1,1,2"), "permutation"),
    (layer("split", "s", axis=3, split_number=4), "equal parts"),
])
def test_unsupported_or_bad_properties_fail_in_one_line(spec, msg):
    with pytest.raises(ModelError, match=msg) as e:
        Model([layer("input", "in", input_shape="1:4:6"), spec], loss="mse")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("shape,axis,want", [
    ("2:3:4", None, (2, 3, 8)),   # NNTrainer: several channels -> width
    ("1:3:4", None, (2, 3, 4)),   # one channel -> channel
    ("2:3:4", 2, (2, 6, 4)),
    ("12", 3, (24,)),             # NNTrainer's width on a flattened (B, F) tensor
    ("12", 1, (24,)),
])
def test_concat_axis_defaults_and_nntrainer_numbering(shape, axis, want):
    extra = {} if axis is None else {"axis": axis}
    m = Model([layer("input", "in", input_shape=shape),
               layer("concat", "cat", input_layers="in,in", **extra)], loss="mse")
    assert m.output_shape == want
