"""Layer descriptions: what a model is made of before it is realized (NNTrainer's
vocabulary). Imports nothing of the runtime, so every module can name them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class LayerSpec:
    """A layer description: NNTrainer type name, unique name, properties."""

    type: str
    name: str
    props: dict[str, Any] = field(default_factory=dict)


def layer(type: str, name: str, **props: Any) -> LayerSpec:
    """Shorthand: ``layer("conv2d", "conv1", filters=6, kernel_size=5, activation="relu")``."""
    return LayerSpec(type, name, props)
