"""Built-in models: ``mlp``, ``lenet5`` and CIFAR-sized (3x32x32) ``alexnet``, ``vgg16``,
``resnet18``. Each returns layer descriptions in NNTrainer's vocabulary, so the same
graph can also be written as an INI file.

Each takes ``classes`` and an ``input_shape`` (``"C:H:W"``; the MLP takes ``features``, or an
``input_shape`` whose element count becomes its features), as ``nnfleet train MODEL
--input-shape C:H:W --classes N`` and the JSON spec ``{"builtin": "lenet5", "classes": 4,
"input_shape": "1:28:28"}`` give them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable

from .errors import ModelError
from .model import LayerSpec, Model, layer

MAX_CLASSES = 1 << 16
MAX_DIM = 1 << 16  # one axis of an input shape
MAX_ELEMENTS = 1 << 24  # values per sample


def _count_arg(value: object, what: str, low: int = 1, high: int = MAX_CLASSES) -> int:
    """``value`` as an int in [low, high], else a one-line error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ModelError(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return value


def parse_shape(shape: str | Sequence[int], model: str, dims: tuple[int, ...] = (3,)
                ) -> tuple[int, ...]:
    """An input shape ``"C:H:W"`` (or a sequence of ints) -> a tuple of positive ints;
    ``dims`` are the numbers of axes ``model`` accepts."""
    text = shape if isinstance(shape, str) else ":".join(str(d) for d in shape)
    want = " or ".join({1: "F", 2: "H:W", 3: "C:H:W"}[d] for d in dims)
    parts = text.strip().split(":")
    try:
        out = tuple(int(p) for p in parts)
    except ValueError:
        out = ()
    if len(out) not in dims or min(out) < 1 or max(out) > MAX_DIM:
        raise ModelError(f"{model}: input shape must be {want} with each axis in [1, {MAX_DIM}], "
                         f"got {text!r}")
    if math.prod(out) > MAX_ELEMENTS:
        raise ModelError(f"{model}: input shape {text} has {math.prod(out):,} values per sample, "
                         f"more than {MAX_ELEMENTS:,}")
    return out


def _chw(shape: str | Sequence[int], model: str) -> str:
    return ":".join(str(d) for d in parse_shape(shape, model))



def mlp(classes: int = 10, features: int = 784,
        input_shape: str | None = None) -> list[LayerSpec]:
    """Three fully connected layers (256, 128, ``classes``) on ``features`` inputs."""
    if input_shape is not None:  # an image flattened: the MLP sees its element count
        features = math.prod(parse_shape(input_shape, "mlp", dims=(1, 2, 3)))
    return [
        layer("input", "in", input_shape=str(_count_arg(features, "features", high=MAX_ELEMENTS))),
        layer("fully_connected", "fc1", unit=256, activation="relu"),
        layer("fully_connected", "fc2", unit=128, activation="relu"),
        layer("fully_connected", "fc3", unit=_count_arg(classes, "classes", low=2)),
    ]


def lenet5(classes: int = 10, input_shape: str = "3:32:32") -> list[LayerSpec]:
    return [
        layer("input", "in", input_shape=_chw(input_shape, "lenet5")),
        layer("conv2d", "conv1", filters=6, kernel_size=5, activation="relu"),
        layer("pooling2d", "pool1", pooling="max", pool_size=2, stride=2),
        layer("conv2d", "conv2", filters=16, kernel_size=5, activation="relu"),
        layer("pooling2d", "pool2", pooling="max", pool_size=2, stride=2, flatten=True),
        layer("fully_connected", "fc1", unit=120, activation="relu"),
        layer("fully_connected", "fc2", unit=84, activation="relu"),
        layer("fully_connected", "fc3", unit=_count_arg(classes, "classes", low=2)),
    ]


def alexnet(classes: int = 10, input_shape: str = "3:32:32") -> list[LayerSpec]:
    """AlexNet adapted to 32x32 inputs (stride-2 first layer, 4096-unit classifier)."""
    return [
        layer("input", "in", input_shape=_chw(input_shape, "alexnet")),
        layer("conv2d", "conv1", filters=64, kernel_size=3, stride=2, padding=1, activation="relu"),
        layer("pooling2d", "pool1", pooling="max", pool_size=2, stride=2),
        layer("conv2d", "conv2", filters=192, kernel_size=3, padding=1, activation="relu"),
        layer("pooling2d", "pool2", pooling="max", pool_size=2, stride=2),
        layer("conv2d", "conv3", filters=384, kernel_size=3, padding=1, activation="relu"),
        layer("conv2d", "conv4", filters=256, kernel_size=3, padding=1, activation="relu"),
        layer("conv2d", "conv5", filters=256, kernel_size=3, padding=1, activation="relu"),
        layer("pooling2d", "pool3", pooling="max", pool_size=2, stride=2, flatten=True),
        layer("dropout", "drop1", dropout_rate=0.5),
        layer("fully_connected", "fc1", unit=4096, activation="relu"),
        layer("dropout", "drop2", dropout_rate=0.5),
        layer("fully_connected", "fc2", unit=4096, activation="relu"),
        layer("fully_connected", "fc3", unit=_count_arg(classes, "classes", low=2)),
    ]


def vgg16(classes: int = 10, input_shape: str = "3:32:32") -> list[LayerSpec]:
    """VGG-16 for 32x32 inputs (13 conv layers, one linear classifier)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    out = [layer("input", "in", input_shape=_chw(input_shape, "vgg16"))]
    block, i = 1, 1
    for c in cfg:
        if c == "M":
            out.append(layer("pooling2d", f"pool{block}", pooling="max", pool_size=2, stride=2))
            block, i = block + 1, 1
        else:
            out.append(layer("conv2d", f"conv{block}_{i}", filters=c, kernel_size=3, padding=1,
                             activation="relu"))
            i += 1
    out[-1].props["flatten"] = True
    out.append(layer("fully_connected", "fc", unit=_count_arg(classes, "classes", low=2)))
    return out


def resnet18(classes: int = 10, input_shape: str = "3:32:32") -> list[LayerSpec]:
    """ResNet-18 for 32x32 inputs (3x3 stem, four stages of two basic blocks)."""
    out = [
        layer("input", "in", input_shape=_chw(input_shape, "resnet18")),
        layer("conv2d", "conv0", filters=64, kernel_size=3, padding=1, disable_bias=True),
        layer("batch_normalization", "bn0", activation="relu"),
    ]
    prev, cin = "bn0", 64
    for stage, (planes, stride) in enumerate([(64, 1), (128, 2), (256, 2), (512, 2)], start=1):
        for blk in range(2):
            s = stride if blk == 0 else 1
            p = f"l{stage}b{blk}"
            out += [
                layer("conv2d", f"{p}_conv1", filters=planes, kernel_size=3, stride=s, padding=1,
                      disable_bias=True, input_layers=prev),
                layer("batch_normalization", f"{p}_bn1", activation="relu"),
                layer("conv2d", f"{p}_conv2", filters=planes, kernel_size=3, padding=1,
                      disable_bias=True),
                layer("batch_normalization", f"{p}_bn2"),
            ]
            short = prev
            if s != 1 or cin != planes:
                out += [
                    layer("conv2d", f"{p}_sc_conv", filters=planes, kernel_size=1, stride=s,
                          disable_bias=True, input_layers=prev),
                    layer("batch_normalization", f"{p}_sc_bn"),
                ]
                short = f"{p}_sc_bn"
            out.append(layer("addition", f"{p}_add", input_layers=f"{p}_bn2,{short}",
                             activation="relu"))
            prev, cin = f"{p}_add", planes
    out += [
        layer("pooling2d", "avgpool", pooling="global_average", input_layers=prev, flatten=True),
        layer("fully_connected", "fc", unit=_count_arg(classes, "classes", low=2)),
    ]
    return out


BUILTINS: dict[str, Callable[..., list[LayerSpec]]] = {
    "mlp": mlp, "lenet5": lenet5, "alexnet": alexnet, "vgg16": vgg16, "resnet18": resnet18,
}


def build(name: str, classes: int = 10, seed: int = 0,
          input_shape: str | Sequence[int] | None = None) -> Model:
    """A built-in model by name, with cross-entropy loss and seeded weights; ``input_shape``
    ``"C:H:W"`` (default: the model's own) and ``classes`` size its input and output."""
    key = name.strip().lower()
    if key not in BUILTINS:
        raise ModelError(f"unknown built-in model '{name}' (known: {', '.join(BUILTINS)}; "
                         "or give a path to an INI file)")
    kw = {} if input_shape is None else {"input_shape": input_shape}
    specs = BUILTINS[key](classes, **kw)
    try:
        return Model(specs, loss="cross_softmax", seed=seed, name=key)
    except ModelError as e:  # a layer that does not fit the shape: say which shape
        shape = specs[0].props["input_shape"]
        raise ModelError(f"{key} with input shape {shape}: {e}") from None
