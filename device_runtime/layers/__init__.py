"""Layer registry: NNTrainer type names (and a few aliases) -> classes."""

from __future__ import annotations

from typing import Any

from ..errors import ModelError
from .activation import ACTIVATIONS, Activation
from .attention import Attention, MultiHeadAttention
from .base import AG, CD, CG, F, Layer
from .conv import Conv2D
from .conv1d import Conv1D
from .core import Dropout, Flatten, FullyConnected, Identity, Input, Reshape
from .embedding import Embedding
from .layer_norm import LayerNormalization
from .loss import LOSS_ALIASES, LOSSES, MSE, CrossEntropySigmoid, CrossEntropySoftmax, Loss
from .merge import Addition, Concat, MultiOut
from .norm import BatchNormalization
from .pooling import Pooling2D
from .positional_encoding import PositionalEncoding
from .sequence import GRU, LSTM, RNN
from .shape_ops import Permute, Split, Upsample2D

LAYER_TYPES: dict[str, type[Layer]] = {
    cls.type: cls
    for cls in (Input, FullyConnected, Conv2D, Pooling2D, Flatten, Reshape, Identity,
                BatchNormalization, Activation, Dropout, Addition, Concat, MultiOut,
                # sequence, embedding and shape layers (issue 5)
                Embedding, Split, Permute, Upsample2D, LayerNormalization, Conv1D, LSTM, GRU,
                RNN, Attention, MultiHeadAttention, PositionalEncoding)
}
TYPE_ALIASES = {"fc": "fully_connected", "dense": "fully_connected", "linear": "fully_connected",
                "conv": "conv2d", "pool2d": "pooling2d", "pooling": "pooling2d",
                "bn": "batch_normalization", "batchnorm": "batch_normalization",
                "add": "addition", "concatenate": "concat", "act": "activation",
                "layernorm": "layer_normalization", "layer_norm": "layer_normalization",
                "mha": "multi_head_attention", "upsample": "upsample2d"}


def create_layer(type_name: str, name: str, props: dict[str, Any] | None = None) -> Layer:
    """Instantiate a layer by its NNTrainer type name."""
    t = str(type_name).strip().lower()
    t = TYPE_ALIASES.get(t, t)
    if t in LAYER_TYPES:
        return LAYER_TYPES[t](name, props)
    if t in ACTIVATIONS:  # NNTrainer allows `type = relu` as an activation layer
        return Activation(name, {**(props or {}), "activation": t})
    known = ", ".join(sorted(LAYER_TYPES))
    raise ModelError(f"layer '{name}': unknown layer type '{type_name}' (known: {known})")


def create_loss(name: str) -> Loss:
    """A loss layer by name: mse, cross_softmax, cross_sigmoid (or an alias)."""
    n = str(name).strip().lower()
    n = LOSS_ALIASES.get(n, n)
    if n not in LOSSES:
        known = ", ".join(sorted(LOSSES) + sorted(LOSS_ALIASES))
        raise ModelError(f"unknown loss '{name}' (known: {known})")
    return LOSSES[n](f"loss/{n}")


def resolve_loss(name: str, last_type: str, last_activation: Any) -> str:
    """The loss's canonical name; NNTrainer's ``cross`` is cross-entropy after the last
    layer's activation (sigmoid, else softmax)."""
    n = str(name).strip().lower()
    if n == "cross":
        last = str(last_activation if last_activation is not None else "").lower()
        n = "cross_sigmoid" if "sigmoid" in (last, last_type.lower()) else "cross_softmax"
    return create_loss(n).type


__all__ = [
    "AG",
    "CD",
    "CG",
    "LAYER_TYPES",
    "MSE",
    "Activation",
    "Addition",
    "BatchNormalization",
    "Concat",
    "Conv2D",
    "CrossEntropySigmoid",
    "CrossEntropySoftmax",
    "Dropout",
    "F",
    "Flatten",
    "FullyConnected",
    "Identity",
    "Input",
    "Layer",
    "Loss",
    "MultiOut",
    "Pooling2D",
    "Reshape",
    "create_layer",
    "create_loss",
    "resolve_loss",
]
