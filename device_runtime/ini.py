"""NNTrainer's INI model files -> layer descriptions, loss, batch size and optimizer.

Sections ``[Model]``, ``[Optimizer]``, ``[LearningRateScheduler]``; data-set sections are
recognised and skipped here; every other section is a layer, in file order. Section
names and keys are case-insensitive, ``#`` starts a comment anywhere on a line.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import ModelError
from .model import LayerSpec, Model
from .optimizers import Schedule

_SPECIAL = {"model", "optimizer", "learningratescheduler", "dataset", "train_set",
            "valid_set", "test_set"}
_TYPE_ALIASES = {"output": "identity"}


@dataclass
class IniModel:
    """What an INI file says, before a Model is built from it."""

    path: str
    layers: list[LayerSpec]
    loss: str = "cross"
    batch_size: int | None = None
    epochs: int | None = None
    optimizer: str | None = None
    optimizer_kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int = 0) -> Model:
        name = os.path.splitext(os.path.basename(self.path))[0]
        return Model(self.layers, loss=self.loss, seed=seed, name=name)


def _num(path: str, sec: str, key: str, value: str, kind: type = float) -> Any:
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        raise ModelError(f"{path}: [{sec}] {key} = {value!r} is not a number") from None


def read_ini(path: str) -> IniModel:
    """Parse an NNTrainer INI model file; errors name the file, section and key."""
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), strict=True,
                                   interpolation=None, delimiters=("=",))
    try:
        with open(path, encoding="utf-8") as f:
            cp.read_file(f)
    except (configparser.Error, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ModelError(f"{path}: not a valid INI model file: {first}") from None
    out = IniModel(path, [])
    seen: set[str] = set()
    for sec in cp.sections():
        key = sec.strip().lower()
        if key in seen:
            raise ModelError(f"{path}: section [{sec}] appears twice (names are case-insensitive)")
        seen.add(key)
        items = {k.strip().lower(): v.strip().strip('"').strip("'") for k, v in cp.items(sec)}
        if key == "model":
            _model_section(path, sec, items, out)
        elif key == "optimizer":
            _optimizer_section(path, sec, items, out)
        elif key == "learningratescheduler":
            if "learning_rate" in items:
                out.optimizer_kwargs["lr"] = _num(path, sec, "learning_rate", items["learning_rate"])
            kind = items.get("type", "constant").lower()
            if kind not in ("constant", "exponential", "step", "cosine"):
                raise ModelError(f"{path}: [{sec}] type = {kind} is not supported "
                                 "(constant, exponential, step, cosine)")
        elif key in _SPECIAL:
            continue
        else:
            if "type" not in items:
                raise ModelError(f"{path}: layer section [{sec}] has no 'type'")
            t = items.pop("type").strip().lower()
            t = _TYPE_ALIASES.get(t, t)
            if "backbone" in items:
                raise ModelError(f"{path}: [{sec}] uses backbone = {items['backbone']}: "
                                 "backbones are not supported yet")
            out.layers.append(LayerSpec(t, sec.strip(), items))
    if not out.layers:
        raise ModelError(f"{path}: no layer sections")
    return out


def _model_section(path: str, sec: str, items: dict[str, str], out: IniModel) -> None:
    if "loss" in items:
        out.loss = items["loss"].lower()
    if "batch_size" in items:
        out.batch_size = _num(path, sec, "batch_size", items["batch_size"], int)
    if "epochs" in items:
        out.epochs = _num(path, sec, "epochs", items["epochs"], int)
    if "optimizer" in items:  # legacy place
        out.optimizer = items["optimizer"].lower()
    if "learning_rate" in items:
        out.optimizer_kwargs["lr"] = _num(path, sec, "learning_rate", items["learning_rate"])


def _optimizer_section(path: str, sec: str, items: dict[str, str], out: IniModel) -> None:
    out.optimizer = items.get("type", "sgd").lower()
    names = {"learning_rate": "lr", "beta1": "beta1", "beta2": "beta2", "epsilon": "epsilon",
             "momentum": "momentum", "weight_decay": "weight_decay"}
    for k, v in items.items():
        if k in names:
            out.optimizer_kwargs[names[k]] = _num(path, sec, k, v)
    if "decay_rate" in items and "decay_steps" in items:  # legacy exponential decay
        out.optimizer_kwargs["schedule"] = Schedule(
            "exponential", decay_rate=_num(path, sec, "decay_rate", items["decay_rate"]),
            decay_steps=_num(path, sec, "decay_steps", items["decay_steps"], int))
