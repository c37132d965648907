"""Numerical gradient checks for every layer and loss, through the planned executor.

Each case puts the layer under test between trainable layers, so the check covers the
layer's weight gradients (CG) and the derivative it passes upstream (CD): a wrong
derivative shows up in the upstream layer's weight gradient.
"""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime import Model, layer
from tests.helpers import GradCapture, numerical_grad_check


def _check(specs, loss="cross_softmax", classes=3, in_shape=(2, 6, 6), batch=4, dense=False,
           seed=0, **kw):
    m = Model(specs, loss=loss, seed=seed)
    m.compile(batch_size=batch, optimizer=GradCapture())
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *in_shape)).astype(np.float32)
    if dense:
        y = rng.random((batch, classes)).astype(np.float32)
        if loss == "cross_softmax":
            y /= y.sum(axis=1, keepdims=True)
    else:
        y = rng.integers(0, classes, batch)
    n = numerical_grad_check(m, x, y, **kw)
    assert n > 0


def _conv_head(*middle, in_shape="2:6:6", classes=3):
    return [layer("input", "in", input_shape=in_shape),
            layer("conv2d", "pre", filters=3, kernel_size=3, padding=1),
            *middle,
            layer("flatten", "flat"),
            layer("fully_connected", "head", unit=classes)]


def test_fully_connected_and_mlp():
    _check([layer("input", "in", input_shape="10"),
            layer("fully_connected", "fc1", unit=7, activation="tanh"),
            layer("fully_connected", "fc2", unit=3)], in_shape=(10,))


def test_fully_connected_on_last_axis():
    # NNTrainer / torch.nn.Linear semantics on a (C, H, W) input: only W is contracted.
    _check([layer("input", "in", input_shape="2:3:4"),
            layer("fully_connected", "fc1", unit=5, activation="tanh", flatten=True),
            layer("fully_connected", "fc2", unit=3)], in_shape=(2, 3, 4))


@pytest.mark.parametrize("k,stride,padding", [(3, 1, "same"), (3, 2, "1"), (2, 1, "same"),
                                               (3, 1, "valid"), (1, 1, "valid"), (1, 2, "0"),
                                               (3, 2, "0,1,1,2")])
def test_conv2d(k, stride, padding):
    _check(_conv_head(layer("conv2d", "c", filters=4, kernel_size=k, stride=stride,
                            padding=padding, activation="tanh")))


def test_conv2d_without_bias_and_large_batch_chunks(monkeypatch):
    # chunked path: several samples per im2col chunk, more than one chunk
    import device_runtime.layers.conv as C
    monkeypatch.setattr(C, "CONV_COLUMNS", 72)
    _check(_conv_head(layer("conv2d", "c", filters=4, kernel_size=3, padding=1,
                            disable_bias=True)), batch=4)


@pytest.mark.parametrize("pooling,size,stride", [("max", 2, 2), ("max", 3, 1), ("average", 2, 2),
                                                  ("average", 3, 2), ("global_max", 0, 0),
                                                  ("global_average", 0, 0)])
def test_pooling(pooling, size, stride):
    props = {"pooling": pooling}
    if size:
        props.update(pool_size=size, stride=stride)
    _check(_conv_head(layer("pooling2d", "p", **props)))


def test_batch_normalization_conv_and_dense():
    _check(_conv_head(layer("batch_normalization", "bn", activation="tanh")), batch=6)
    _check([layer("input", "in", input_shape="8"),
            layer("fully_connected", "fc1", unit=6),
            layer("batch_normalization", "bn"),
            layer("activation", "a", activation="sigmoid"),
            layer("fully_connected", "fc2", unit=3)], in_shape=(8,), batch=6)


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "sigmoid", "tanh", "softmax", "gelu",
                                 "swish"])
def test_activations(act):
    _check(_conv_head(layer("activation", "a", activation=act)))


def test_reshape_and_flatten():
    _check([layer("input", "in", input_shape="2:6:6"),
            layer("conv2d", "pre", filters=2, kernel_size=3, padding=1),
            layer("reshape", "r", target_shape="4:3:6"),
            layer("conv2d", "c2", filters=2, kernel_size=3, flatten=True),
            layer("fully_connected", "head", unit=3)])


def test_dropout():
    _check(_conv_head(layer("dropout", "d", dropout_rate=0.3)))


def test_addition_concat_multiout():
    # One output read by three layers (multiout), merged by addition and concat.
    _check([layer("input", "in", input_shape="2:6:6"),
            layer("conv2d", "pre", filters=3, kernel_size=3, padding=1),
            layer("conv2d", "a", filters=3, kernel_size=3, padding=1, input_layers="pre",
                  activation="tanh"),
            layer("conv2d", "b", filters=3, kernel_size=1, input_layers="pre"),
            layer("addition", "add", input_layers="a,b,pre"),
            layer("concat", "cat", input_layers="add,pre", axis=1),
            layer("flatten", "flat"),
            layer("fully_connected", "head", unit=3)])


@pytest.mark.parametrize("axis", [2, 3])
def test_concat_other_axes(axis):
    _check([layer("input", "in", input_shape="2:6:6"),
            layer("conv2d", "pre", filters=3, kernel_size=3, padding=1),
            layer("conv2d", "a", filters=3, kernel_size=3, padding=1, input_layers="pre"),
            layer("concat", "cat", input_layers="a,pre", axis=axis, flatten=True),
            layer("fully_connected", "head", unit=3)])


@pytest.mark.parametrize("loss,dense", [("cross_softmax", False), ("cross_softmax", True),
                                        ("cross_sigmoid", True), ("mse", True)])
def test_losses(loss, dense):
    _check([layer("input", "in", input_shape="5"),
            layer("fully_connected", "fc1", unit=4, activation="tanh"),
            layer("fully_connected", "fc2", unit=3)], loss=loss, in_shape=(5,), dense=dense)


def test_frozen_layer_passes_derivative():
    # A frozen layer in the middle still passes derivatives to trainable layers upstream.
    _check([layer("input", "in", input_shape="6"),
            layer("fully_connected", "fc1", unit=5, activation="tanh"),
            layer("fully_connected", "frozen", unit=5, trainable=False, activation="tanh"),
            layer("fully_connected", "fc3", unit=3)], in_shape=(6,))


def test_gradcheck_catches_a_wrong_derivative(monkeypatch):
    # The check itself must be able to fail: break tanh's backward and expect an error.
    import device_runtime.kernels.activation as A

    def wrong(y, dy, dx):
        np.multiply(dy, 0.5, out=dx)

    monkeypatch.setattr(A, "tanh_bwd", wrong)
    with pytest.raises(AssertionError, match="analytic"):
        _check([layer("input", "in", input_shape="6"),
                layer("fully_connected", "fc1", unit=5, activation="tanh"),
                layer("fully_connected", "fc2", unit=3)], in_shape=(6,))
