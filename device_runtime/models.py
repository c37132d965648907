"""Built-in models: ``mlp``, ``lenet5`` and CIFAR-sized (3x32x32) ``alexnet``, ``vgg16``,
``resnet18``. Each returns layer descriptions in NNTrainer's vocabulary, so the same
graph can also be written as an INI file."""

from __future__ import annotations

from typing import Callable

from .errors import ModelError
from .model import LayerSpec, Model, layer


def mlp(classes: int = 10, features: int = 784) -> list[LayerSpec]:
    return [
        layer("input", "in", input_shape=str(features)),
        layer("fully_connected", "fc1", unit=256, activation="relu"),
        layer("fully_connected", "fc2", unit=128, activation="relu"),
        layer("fully_connected", "fc3", unit=classes),
    ]


def lenet5(classes: int = 10) -> list[LayerSpec]:
    return [
        layer("input", "in", input_shape="3:32:32"),
        layer("conv2d", "conv1", filters=6, kernel_size=5, activation="relu"),
        layer("pooling2d", "pool1", pooling="max", pool_size=2, stride=2),
        layer("conv2d", "conv2", filters=16, kernel_size=5, activation="relu"),
        layer("pooling2d", "pool2", pooling="max", pool_size=2, stride=2, flatten=True),
        layer("fully_connected", "fc1", unit=120, activation="relu"),
        layer("fully_connected", "fc2", unit=84, activation="relu"),
        layer("fully_connected", "fc3", unit=classes),
    ]


def alexnet(classes: int = 10) -> list[LayerSpec]:
    """AlexNet adapted to 32x32 inputs (stride-2 first layer, 4096-unit classifier)."""
    return [
        layer("input", "in", input_shape="3:32:32"),
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
        layer("fully_connected", "fc3", unit=classes),
    ]


def vgg16(classes: int = 10) -> list[LayerSpec]:
    """VGG-16 for 32x32 inputs (13 conv layers, one linear classifier)."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    out = [layer("input", "in", input_shape="3:32:32")]
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
    out.append(layer("fully_connected", "fc", unit=classes))
    return out


def resnet18(classes: int = 10) -> list[LayerSpec]:
    """ResNet-18 for 32x32 inputs (3x3 stem, four stages of two basic blocks)."""
    out = [
        layer("input", "in", input_shape="3:32:32"),
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
        layer("fully_connected", "fc", unit=classes),
    ]
    return out


BUILTINS: dict[str, Callable[..., list[LayerSpec]]] = {
    "mlp": mlp, "lenet5": lenet5, "alexnet": alexnet, "vgg16": vgg16, "resnet18": resnet18,
}


def build(name: str, classes: int = 10, seed: int = 0) -> Model:
    """A built-in model by name, with cross-entropy loss and seeded weights."""
    key = name.strip().lower()
    if key not in BUILTINS:
        raise ModelError(f"unknown built-in model '{name}' (known: {', '.join(BUILTINS)}; "
                         "or give a path to an INI file)")
    return Model(BUILTINS[key](classes), loss="cross_softmax", seed=seed, name=key)
