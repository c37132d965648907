"""NNTrainer's INI model files -> layer descriptions, loss, batch size, optimizer, data.

Sections ``[Model]``, ``[Optimizer]``, ``[LearningRateScheduler]``, ``[train_set]``,
``[valid_set]``, ``[test_set]`` and the legacy ``[DataSet]``; every other section is a
layer, in file order (syntax: :mod:`ini_format`). A section with ``backbone = other.ini``
splices that file's layers in, named ``<section>/<layer>`` and frozen unless
``trainable = true`` (NNTrainer's default); other backbones (``.tflite``) are refused.
A first layer that has ``input_shape`` but is not an input layer gets one in front, as
NNTrainer's realizer does. Errors are one line naming the file, section and key.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError, DataError, ModelError
from .graph import parse_ref
from .ini_data import (
    DataSetSpec,
    load_records,
    one_hot_to_ids,
    parse_legacy_section,
    parse_set_section,
    resolve,
)
from .ini_format import Section, parse_ini
from .ini_schedules import parse_scheduler
from .layers import create_layer
from .layers.base import parse_bool
from .model import LayerSpec, Model
from .optimizers import Schedule
from .units import MAX_BATCH_SIZE

_TYPE_ALIASES = {"output": "identity"}
MAX_INI_BYTES = 4 << 20  # NNTrainer model files have a few KiB (resnet18.ini: 9 KiB)
_MODEL_KEYS = {"type", "epochs", "loss", "batch_size", "save_path", "learning_rate", "optimizer",
               "decay_rate", "decay_steps", "beta1", "beta2", "epsilon", "momentum",
               # NNTrainer run-time switches with no meaning here (nnfleet plans and swaps
               # by itself): accepted and ignored
               "continue_train", "memory_optimization", "memory_swap", "memory_swap_path",
               "memory_swap_lookahead", "tensor_format", "model_tensor_type", "loss_scale",
               "fsu", "fsu_lookahead", "tensor_type"}
_OPTIMIZERS = {"sgd": {"lr", "momentum", "weight_decay", "schedule"},
               "adam": {"lr", "beta1", "beta2", "epsilon", "weight_decay", "schedule"},
               "adamw": {"lr", "beta1", "beta2", "epsilon", "weight_decay", "schedule"}}
_OPT_KEYS = {"learning_rate": "lr", "beta1": "beta1", "beta2": "beta2", "epsilon": "epsilon",
             "momentum": "momentum", "weight_decay": "weight_decay"}
_BACKBONE_KEYS = {"backbone", "trainable", "input_shape", "input_layers", "name"}


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
    datasets: dict[str, DataSetSpec] = field(default_factory=dict)  # train | valid | test
    save_path: str | None = None  # resolved; recorded, nnfleet saves only when asked

    @property
    def name(self) -> str:
        return os.path.splitext(os.path.basename(self.path))[0]

    def build(self, seed: int = 0) -> Model:
        """A model with fresh weights; layers' L2 properties apply once compiled. Errors
        found while building the graph name the file too."""
        try:
            return Model(self.layers, loss=self.loss, seed=seed, name=self.name)
        except (ModelError, DataError, ConfigError) as e:
            raise _naming(self.path, e) from None

    def load_data(self, split: str, model: Model) -> tuple[np.ndarray, np.ndarray]:
        """Read the ``train``/``valid``/``test`` set; one-hot labels become class ids
        when the loss is softmax cross-entropy."""
        spec = self.datasets.get(split)
        if spec is None:
            have = ", ".join(self.datasets) or "none"
            raise DataError(f"{self.path} names no {split} data set (it has: {have})")
        x, y = load_records(spec, tuple(model.input_shape), tuple(model.output_shape))
        if model.loss_name == "cross_softmax":
            ids = one_hot_to_ids(y)
            if ids is not None:
                return x, ids
        return x, y


# numeric keys of [Model] and [Optimizer] -> (check, what the value must be)
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    **dict.fromkeys(("epochs", "decay_steps"),
                    (lambda v: v >= 1 and v == int(v), "a positive integer")),
    "batch_size": (lambda v: 1 <= v <= MAX_BATCH_SIZE and v == int(v),
                   f"an integer in [1, {MAX_BATCH_SIZE}]"),
    **dict.fromkeys(("learning_rate", "epsilon", "decay_rate"), (lambda v: v > 0, "> 0")),
    **dict.fromkeys(("beta1", "beta2", "momentum"), (lambda v: 0 <= v < 1, "in [0, 1)")),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
}


def _num(path: str, sec: str, key: str, value: str, kind: type = float) -> Any:
    """A finite number in the key's range (see ``_RANGES``); ints for integer keys."""
    try:
        v = float(value)
    except ValueError:
        raise ModelError(f"{path}: [{sec}] {key} = {value!r} is not a number") from None
    ok, want = _RANGES.get(key, (math.isfinite, "a finite number"))
    if not (math.isfinite(v) and ok(v)):
        raise ModelError(f"{path}: [{sec}] {key} = {value!r} must be {want}")
    return int(v) if kind is int else v


def read_ini(path: str) -> IniModel:
    """Parse an NNTrainer INI model file; errors name the file, section and key."""
    try:
        return _read(path, [os.path.abspath(path)])
    except (ModelError, DataError, ConfigError) as e:
        raise _naming(path, e) from None


def _naming(path: str, e: ModelError | DataError | ConfigError) -> Exception:
    """``e``, or the same error with the file's name in front where it lacks it."""
    return e if path in str(e) else type(e)(f"{path}: {e}")


def _read(path: str, stack: list[str]) -> IniModel:
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    if os.path.getsize(path) > MAX_INI_BYTES:
        raise ModelError(f"{path} has {os.path.getsize(path):,} bytes: not an INI model file "
                         f"(those are a few KiB; at most {MAX_INI_BYTES:,} are read)")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ModelError(f"{path}: not a text INI file ({e.reason} at byte {e.start})") from None
    out = IniModel(path, [])
    legacy: dict[str, Any] = {}
    sched: tuple[float | None, Schedule] | None = None
    aliases: dict[str, str] = {}  # backbone section -> its last layer
    for sec in parse_ini(text, path):
        key = sec.name.lower()
        if key == "model":
            _model_section(path, sec, out, legacy)
        elif key == "optimizer":
            _optimizer_section(path, sec, out, legacy)
        elif key == "learningratescheduler":
            sched = parse_scheduler(path, sec.name, sec.items)
        elif key in ("train_set", "valid_set", "test_set"):
            spec = parse_set_section(path, sec.name, sec.items)
            out.datasets[spec.split] = spec
        elif key == "dataset":
            for spec in parse_legacy_section(path, sec.name, sec.items):
                out.datasets.setdefault(spec.split, spec)
        elif "backbone" in sec.items:
            aliases[key] = _splice_backbone(path, sec, out.layers, stack)
        else:
            out.layers.append(_layer(path, sec))
    if not out.layers:
        raise ModelError(f"{path}: no layer sections")
    if aliases:
        out.layers = [_renamed(s, aliases, keep_case=True) for s in out.layers]
    _add_input_layer(out.layers)
    _finish_optimizer(path, out, legacy, sched)
    return out


def _layer(path: str, sec: Section) -> LayerSpec:
    items = dict(sec.items)
    if not sec.name:
        raise ModelError(f"{path}:{sec.line}: a layer section needs a name ([] is empty)")
    if "type" not in items:
        raise ModelError(f"{path}: layer section [{sec.name}] has no 'type'")
    t = items.pop("type").strip().lower()
    t = _TYPE_ALIASES.get(t, t)
    try:  # unknown types and properties are reported with the file and section
        create_layer(t, sec.name, items)
    except ModelError as e:
        raise ModelError(f"{path}: [{sec.name}] {e}") from None
    return LayerSpec(t, sec.name, items)


def _model_section(path: str, sec: Section, out: IniModel, legacy: dict[str, Any]) -> None:
    items = sec.items
    unknown = sorted(set(items) - _MODEL_KEYS)
    if unknown:
        raise ModelError(f"{path}: [{sec.name}] key '{unknown[0]}' is not supported")
    kind = items.get("type", "neuralnetwork").strip().lower()
    if kind not in ("neuralnetwork", "neural_network", "network"):
        raise ModelError(f"{path}: [{sec.name}] type = {items['type']} is not supported "
                         "(only NeuralNetwork)")
    if "loss" in items:
        out.loss = items["loss"].strip().lower()
    if "batch_size" in items:
        out.batch_size = _num(path, sec.name, "batch_size", items["batch_size"], int)
    if "epochs" in items:
        out.epochs = _num(path, sec.name, "epochs", items["epochs"], int)
    if items.get("save_path"):
        out.save_path = resolve(path, items["save_path"])
    if "optimizer" in items:  # legacy place of the optimizer and its settings
        out.optimizer = items["optimizer"].strip().lower()
    for k in ("learning_rate", "beta1", "beta2", "epsilon", "momentum", "decay_rate",
              "decay_steps"):
        if k in items:
            legacy[k] = _num(path, sec.name, k, items[k])


def _optimizer_section(path: str, sec: Section, out: IniModel, legacy: dict[str, Any]) -> None:
    items = sec.items
    out.optimizer = items.get("type", "sgd").strip().lower()
    unknown = sorted(set(items) - set(_OPT_KEYS) - {"type", "decay_rate", "decay_steps"})
    if unknown:
        raise ModelError(f"{path}: [{sec.name}] key '{unknown[0]}' is not supported "
                         f"(known: type, {', '.join(sorted(_OPT_KEYS))}, decay_rate, decay_steps)")
    for k, v in items.items():
        if k != "type":
            legacy[k] = _num(path, sec.name, k, v)  # the [Optimizer] section wins


def _finish_optimizer(path: str, out: IniModel, legacy: dict[str, Any],
                      sched: tuple[float | None, Schedule] | None) -> None:
    name = out.optimizer or "sgd"
    if name not in _OPTIMIZERS:
        raise ModelError(f"{path}: optimizer '{name}' is not supported (known: "
                         f"{', '.join(_OPTIMIZERS)})")
    kw: dict[str, Any] = {_OPT_KEYS[k]: v for k, v in legacy.items() if k in _OPT_KEYS}
    if "decay_rate" in legacy and "decay_steps" in legacy:  # legacy exponential decay
        kw["schedule"] = Schedule("exponential", decay_rate=legacy["decay_rate"],
                                  decay_steps=int(legacy["decay_steps"]))
    if sched is not None:
        lr, schedule = sched
        if lr is not None:
            kw["lr"] = lr
        if schedule.kind != "constant" or "schedule" not in kw:
            kw["schedule"] = schedule
    out.optimizer_kwargs = {k: v for k, v in kw.items() if k in _OPTIMIZERS[name]}


def _renamed(spec: LayerSpec, names: dict[str, str], keep_case: bool = False) -> LayerSpec:
    """``spec`` with its name and ``input_layers`` references mapped through ``names``
    (lower-case keys; unknown names are kept)."""
    props = dict(spec.props)
    raw = props.get("input_layers")
    if raw:
        refs = [parse_ref(s) for s in str(raw).split(",") if s.strip()]
        mapped = [(names.get(p.lower(), p), k) for p, k in refs]
        props["input_layers"] = ", ".join(f"{n}({k})" if k else n for n, k in mapped)
    name = spec.name if keep_case else names.get(spec.name.lower(), spec.name)
    return LayerSpec(spec.type, name, props)


def _splice_backbone(path: str, sec: Section, layers: list[LayerSpec], stack: list[str]) -> str:
    """Append the backbone's layers; returns the name of its last (output) layer."""
    items = sec.items
    unknown = sorted(set(items) - _BACKBONE_KEYS)
    if unknown:
        raise ModelError(f"{path}: [{sec.name}] backbone key '{unknown[0]}' is not supported")
    raw = items["backbone"]
    where = f"{path}: [{sec.name}] backbone = {raw}"
    if not raw.lower().endswith(".ini"):
        ext = os.path.splitext(raw)[1] or "this kind of"
        raise ModelError(f"{where}: {ext} backbones are not supported (only .ini model files)")
    file = resolve(path, raw)
    if not os.path.isfile(file):
        raise ModelError(f"{where}: backbone file not found ({file})")
    if file in stack:
        raise ModelError(f"{where}: backbones include each other ({' -> '.join(stack)})")
    try:
        inner = _read(file, stack + [file]).layers
    except ModelError as e:
        if str(e).startswith(where):
            raise
        raise ModelError(f"{where}: {e}") from None
    trainable = parse_bool(sec.name or "backbone", "trainable", items.get("trainable", "false"))
    prefix = f"{sec.name}/" if sec.name else ""
    names = {s.name.lower(): prefix + s.name for s in inner}
    new = [_renamed(s, names) for s in inner]
    if not trainable:
        new = [LayerSpec(s.type, s.name, {**s.props, "trainable": "false"}) for s in new]
    outer_in = items.get("input_layers") or (layers[-1].name if layers else None)
    if new[0].type == "input" and outer_in:  # fed by the outer model, not by data
        dropped = new.pop(0).name
        if not new:
            raise ModelError(f"{where}: the backbone has no layer besides its input")
        new = [_renamed(s, {dropped.lower(): outer_in}, keep_case=True) for s in new]
        if new[0].props.get("input_layers") is None:
            new[0].props["input_layers"] = outer_in
    elif items.get("input_layers"):
        new[0].props["input_layers"] = items["input_layers"]
    if items.get("input_shape"):
        new[0].props["input_shape"] = items["input_shape"]
    layers.extend(new)
    return new[-1].name


def _add_input_layer(layers: list[LayerSpec]) -> None:
    first = layers[0]
    props = first.props
    if first.type == "input" or not props.get("input_shape") or props.get("input_layers"):
        return
    name = f"{first.name}/input"
    layers.insert(0, LayerSpec("input", name, {"input_shape": first.props["input_shape"]}))
