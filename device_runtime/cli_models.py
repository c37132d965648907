"""``--input-shape`` and ``--classes``: a built-in model sized for the user's data.

``nnfleet train lenet5 --input-shape 1:28:28 --classes 4`` builds LeNet-5 for 1x28x28
inputs and 4 classes (the MLP takes ``--input-shape F`` or any shape, whose element count
becomes its features). ``eval``, ``predict`` and ``plan`` take the same two options, so a
model trained that way is built the same way again. An INI file or a JSON layer list sets
both itself (``input_shape`` of its input layer, ``unit`` of its last layer), and is refused
with these options rather than silently changed.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ModelError

if TYPE_CHECKING:
    from .ini import IniModel
    from .model import Model

MAX_CLASSES = 1 << 16


def _classes(text: str) -> int:
    """An argparse type: a number of classes in [2, MAX_CLASSES]."""
    try:
        v = int(text)
    except ValueError:
        v = 0
    if not 2 <= v <= MAX_CLASSES:
        raise argparse.ArgumentTypeError(f"must be an integer in [2, {MAX_CLASSES}], got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--input-shape`` and ``--classes`` on a sub-command's parser."""
    p.add_argument("--input-shape", metavar="C:H:W",
                   help="input shape of a built-in model (mlp: F or any shape; "
                        "None = the model's own: 3:32:32, mlp 784)")
    p.add_argument("--classes", type=_classes, metavar="N",
                   help="number of classes of a built-in model (None = 10)")


def load(args: argparse.Namespace, seed: int = 0) -> tuple[Model, IniModel | None]:
    """The model ``args.model`` names, sized by ``--input-shape``/``--classes`` if given."""
    from .models import BUILTINS, build
    from .modelspec import load_model

    shape, classes = getattr(args, "input_shape", None), getattr(args, "classes", None)
    if shape is None and classes is None:
        return load_model(args.model, seed=seed)
    text = str(args.model).strip()
    given = " and ".join(f"--{k} {v}" for k, v in (("input-shape", shape), ("classes", classes))
                         if v is not None)
    if text.lower() in BUILTINS:
        return build(text, classes=classes or 10, seed=seed, input_shape=shape), None
    if text.startswith("{"):  # a built-in with arguments: the options win over them
        try:
            d = json.loads(text)
        except json.JSONDecodeError:
            d = None
        if isinstance(d, dict) and d.get("builtin") in BUILTINS:
            d.update({k: v for k, v in (("input_shape", shape), ("classes", classes))
                      if v is not None})
            if "input_shape" in d and d["builtin"] == "mlp":
                d.pop("features", None)
            try:
                return load_model(json.dumps(d), seed=seed)
            except ModelError as e:
                raise ModelError(f"{d['builtin']} with {given}: {e}") from None
    raise ConfigError(f"{given}: these size a built-in model ({', '.join(BUILTINS)}); "
                      f"MODEL {text[:60]!r} sets its own (input_shape of its input layer, "
                      f"unit of its last layer)")


def describe(model: Model) -> dict[str, Any]:
    """The input shape and number of outputs of ``model`` (for ``--json``)."""
    import math

    return {"input_shape": list(model.input_shape),
            "outputs": int(math.prod(model.output_shape))}
