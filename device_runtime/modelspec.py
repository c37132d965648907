"""Model descriptions -> models: the one place a model spec is read.

A spec is what a user, a config or the server names a model by:

- a built-in name (``mlp``, ``lenet5``, ``alexnet``, ``vgg16``, ``resnet18``);
- a path to an NNTrainer INI file;
- a JSON layer list, ``[{"type": "input", "name": "in", "input_shape": "60"}, ...]``;
- a JSON built-in with arguments, ``{"builtin": "mlp", "features": 60}``.

The command line, the device program, the server and the experiment configs all go
through :func:`load_model` (and :func:`spec_text` for an experiment's ``[model]`` table),
so a model reads the same everywhere.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:  # the model and INI modules load the kernels: import them when used
    from .ini import IniModel
    from .model import Model

LAYER_LIST_NAME = "fleet"  # the name of a model given as a layer list


def spec_text(model: Mapping[str, Any] | Sequence[Mapping[str, Any]] | str) -> str:
    """The canonical text of a model spec: an experiment's ``[model]`` table (``layers``,
    ``builtin`` + ``args``, or ``name``), a layer list, or a text spec as it is."""
    if isinstance(model, str):
        return model.strip()
    if not isinstance(model, Mapping):
        return json.dumps(list(model))
    if "layers" in model:
        return json.dumps(model["layers"])
    if "builtin" in model:
        return json.dumps({"builtin": model["builtin"], **model.get("args", {})})
    return str(model.get("name", "mlp"))


def is_file_spec(text: str) -> bool:
    """Does a text spec name a file (an INI path) rather than a built-in or JSON?"""
    return text.lower().endswith(".ini") or os.path.sep in text or os.path.exists(text)


def load_model(spec: str | Mapping[str, Any] | Sequence[Mapping[str, Any]],
               seed: int = 0) -> tuple[Model, IniModel | None]:
    """A fresh model with seeded weights from any spec (see the module docstring), and
    the INI description when the spec is an INI file (its optimizer, data, epochs)."""
    from .model import LayerSpec, Model
    from .models import BUILTINS, build

    text = spec_text(spec)
    if text.startswith("["):
        items = _json(text, list)
        for d in items:
            if not isinstance(d, dict) or "type" not in d or "name" not in d:
                raise ConfigError(f"model layer list: each layer needs 'type' and 'name', "
                                  f"got {str(d)[:80]}")
        specs = [LayerSpec(d["type"], d["name"],
                           {k: v for k, v in d.items() if k not in ("type", "name")})
                 for d in items]
        return Model(specs, loss="cross_softmax", seed=seed, name=LAYER_LIST_NAME), None
    if text.startswith("{"):
        d = _json(text, dict)
        name = d.pop("builtin", None)
        if name not in BUILTINS:
            raise ConfigError(f"unknown built-in model '{name}' (known: {', '.join(BUILTINS)})")
        try:
            layers = BUILTINS[name](**d)
        except TypeError as e:
            raise ConfigError(f"built-in model '{name}': {e}") from None
        return Model(layers, loss="cross_softmax", seed=seed, name=name), None
    if is_file_spec(text):
        from .ini import read_ini

        ini = read_ini(text)
        return ini.build(seed), ini
    if text.lower() not in BUILTINS:
        raise ConfigError(f"MODEL '{text}' is neither a file nor a built-in model "
                          f"({', '.join(BUILTINS)})")
    return build(text, seed=seed), None


def _json(text: str, kind: type) -> Any:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"model spec is not valid JSON ({e.msg} at character {e.pos}): "
                          f"{text[:60]}") from None
    if not isinstance(value, kind):
        raise ConfigError(f"model spec: expected a JSON {kind.__name__}, got {text[:60]}")
    return value
