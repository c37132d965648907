"""What the device program is told (:class:`DeviceConfig`, from the server, one per round)
and what it decides for itself (:class:`DeviceSettings`, never sent by the server).

:class:`DeviceConfig` is the only list of device config keys: each field is one key
(``model_seed`` is ``model-seed``), with its default, its range and who sets it. The
server forwards :func:`forwarded_keys`; the experiment config loader derives the checks
of ``[train]`` and ``[algorithm.<name>]`` from :func:`key_specs`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from .registry import rule_names

# who sets a key: "train" = the experiment's [train] / [algorithm.<name>] tables; "run" =
# the experiment's other sections (its [model], seed, algorithm); "flower" = Flower itself
SET_BY = ("train", "run", "flower")


def _key(default: Any, set_by: str = "train", lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False,
         choices: tuple[str, ...] | Callable[[], tuple[str, ...]] = (), alias: str = "",
         unset: Any = None) -> Any:
    """A config field: its default and what a value must be (checked by ``from_mapping``);
    ``unset``: for a key whose default is None (not set), the value its rule then uses."""
    meta = {"set_by": set_by, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "choices": choices, "alias": alias, "unset": unset}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DeviceConfig:
    """The device program's config for one round (Flower's ConfigRecord, hyphenated keys)."""

    # built-in name, INI path, JSON layer list or {"builtin": ...} (device_runtime.modelspec)
    model: str = _key("mlp", set_by="run")
    model_seed: int = _key(0, set_by="run", lo=0)  # seed of the initial weights
    # comma-separated fnmatch patterns of personal layers or layer:param keys ("*" = all)
    personal: str = _key("", set_by="run")
    # the local-update rule (device_runtime.device.rules); "auto" picks it from the keys set
    local_update: str = _key("auto", choices=rule_names)
    local_epochs: int = _key(1, lo=0)  # epochs on the local train split
    local_steps: int = _key(0, lo=0)  # > 0: this many steps instead of local-epochs
    head_epochs: int = _key(0, lo=0)  # FedRep: epochs on the personal head, body frozen
    # FedProx: mu * (w - w_global) added to every gradient (Flower sends proximal-mu)
    prox_mu: float = _key(0.0, lo=0, alias="proximal-mu")
    ditto_lambda: float = _key(0.0, lo=0)  # Ditto: pull of the personal model to w_global
    personal_epochs: int | None = _key(None, lo=0)  # Ditto: epochs of v; None = local-epochs
    finetune_epochs: int = _key(0, lo=0)  # evaluation fine-tunes a throw-away copy first
    # The keys of APFL, pFedMe, Per-FedAvg and FedBABU are unset (None) unless given, so
    # that local-update = auto picks the rule whose keys are set; unset, a rule uses the
    # value in ``unset=`` (read with DeviceConfig.value).
    # APFL (local-update = apfl): the initial weight alpha of the personal model in the mix
    apfl_alpha: float | None = _key(None, lo=0, hi=1, unset=0.25)
    # pFedMe (local-update = pfedme): the Moreau envelope's lambda, K inner steps of the
    # personal model at pfedme-lr (0 = lr), the server's beta (applied on the device)
    pfedme_lambda: float | None = _key(None, lo=0, lo_open=True, unset=15.0)
    pfedme_k: int | None = _key(None, lo=1, unset=5)
    pfedme_lr: float | None = _key(None, lo=0, unset=0.0)
    pfedme_beta: float | None = _key(None, lo=0, lo_open=True, unset=1.0)
    # Per-FedAvg (local-update = perfedavg): lr is the adaptation step alpha, this the meta
    # step beta (0 = lr); "fo" first-order or "hf" Hessian-free (finite differences of delta)
    perfedavg_beta: float | None = _key(None, lo=0, unset=0.0)
    perfedavg_variant: str | None = _key(None, choices=("fo", "hf"), unset="hf")
    perfedavg_delta: float | None = _key(None, lo=0, lo_open=True, unset=1e-3)
    # FedBABU (local-update = fedbabu, or auto with this set): the personal head stays at
    # its initialization during training, only the body is trained and shared
    fixed_head: bool = _key(False)
    optimizer: str = _key("sgd", choices=("sgd", "adam", "adamw"))
    lr: float = _key(0.05, lo=0, lo_open=True)
    momentum: float = _key(0.0, lo=0, hi=1, hi_open=True)  # SGD only
    weight_decay: float = _key(0.0, lo=0)
    batch_size: int = _key(32, lo=1)  # a device's own DeviceSettings.batch_size wins
    # drop each epoch's last partial batch; off (the default, as PyTorch's DataLoader):
    # train on it too
    drop_last: bool = _key(False)
    optimizer_state: str = _key("reset", choices=("reset", "keep"))  # keep: across rounds
    seed: int = _key(0, set_by="run", lo=0)  # with server-round: reproducible shuffles
    # the batch order's own seed (the experiment's shuffle-seed); None: ``seed``
    shuffle_seed: int | None = _key(None, set_by="run", lo=0)
    server_round: int = _key(0, set_by="flower", lo=0)
    eval_before: bool = _key(True)  # evaluate the personalized model before training
    eval_after: bool = _key(True)  # ... and after

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> DeviceConfig:
        """From a flat mapping with hyphenated keys; a missing, None or empty value takes the
        default, other keys are ignored (a ConfigRecord carries Flower's own keys too)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.name.replace("_", "-")
            raw = config.get(name)
            if f.metadata["alias"] and (_unset(raw) or raw == 0):  # as Flower's FedProx sends it
                raw = config.get(f.metadata["alias"])
            if not _unset(raw):
                values[f.name] = _convert(name, raw, _type(f), f.metadata)
        return cls(**values)

    def value(self, name: str) -> Any:
        """The value of field ``name``, or the one its rule uses when it is unset (None)."""
        v = getattr(self, name)
        return self.__dataclass_fields__[name].metadata["unset"] if v is None else v

    def epochs_of_personal_model(self) -> int:
        """Ditto's personal-model epochs (local-epochs unless given)."""
        return self.local_epochs if self.personal_epochs is None else self.personal_epochs


def key_specs() -> dict[str, dict[str, Any]]:
    """Each config key (hyphenated) -> its default, type name and checks."""
    return {f.name.replace("_", "-"): {**f.metadata, "default": f.default,
                                       "type": _type(f), "choices": _choices(f.metadata)}
            for f in fields(DeviceConfig)}


def _type(f: Any) -> type:
    """A field's value type (``float | None`` -> float)."""
    return {"int": int, "float": float, "str": str, "bool": bool}[str(f.type).split(" |")[0]]


def _choices(meta: Mapping[str, Any]) -> tuple[str, ...]:
    c = meta["choices"]
    return tuple(c() if callable(c) else c)


def forwarded_keys() -> tuple[str, ...]:
    """The keys a server forwards to devices (all but those Flower sets itself)."""
    return tuple(k for k, s in key_specs().items() if s["set_by"] != "flower")


def _unset(v: Any) -> bool:
    return v is None or v == ""


def _convert(name: str, raw: Any, kind: type, meta: Mapping[str, Any]) -> Any:
    try:
        if kind is bool:
            value: Any = raw if isinstance(raw, bool) else str(raw).strip().lower() in (
                "1", "true", "yes")
        elif kind is int:
            value = int(raw)
            if isinstance(raw, float) and raw != value:
                raise ValueError
        else:
            value = kind(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"device config {name} = {raw!r} must be {kind.__name__}") from None
    choices = _choices(meta)
    if choices and value not in choices:
        raise ConfigError(f"device config {name} = {raw!r} must be one of {', '.join(choices)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"device config {name} = {raw!r} must be a finite number")
    if kind in (int, float) and not _in_range(value, meta):
        lo, hi = meta["lo"], meta["hi"]
        bounds = (f"{'(' if meta['lo_open'] else '['}{'-inf' if lo is None else lo}, "
                  f"{'inf' if hi is None else hi}{')' if meta['hi_open'] or hi is None else ']'}")
        raise ConfigError(f"device config {name} = {raw!r} is out of range {bounds}")
    return value


def _in_range(v: float, meta: Mapping[str, Any]) -> bool:
    lo, hi = meta["lo"], meta["hi"]
    return ((lo is None or (v > lo if meta["lo_open"] else v >= lo))
            and (hi is None or (v < hi if meta["hi_open"] else v <= hi)))


# ---------------------------------------------------------------------------- settings
@dataclass
class DeviceSettings:
    """What the device decides for itself (never sent by the server)."""

    ram_cap: int | None = None  # bytes for the whole process; None = uncapped
    swap: str = "auto"  # off | auto | on, used when the runtime supports RAM caps
    batch_size: int | None = None  # overrides the server's batch size (small-RAM devices)
    freeze: str = ""  # patterns of layers this device never trains (a frozen backbone)
    fallbacks: tuple[str, ...] = ()  # tried in order when the cap is too small:
    # "swap", "batch:N", "freeze:PATTERNS" (in node_config: separated by ";")


def parse_settings(values: Mapping[str, Any]) -> DeviceSettings:
    """Device settings from a flat mapping of strings (Flower ``node_config`` style keys)."""
    from ..units import parse_size

    cap = values.get("ram-cap")
    ram_cap = parse_size(str(cap), "ram-cap") if cap not in (None, "", 0, "0", "none") else None
    if ram_cap == 0:  # "0.4B": a cap, but of no bytes (0 or "none" mean no cap)
        raise ConfigError(f"ram-cap {cap!r} is less than one byte (0 or 'none' mean no cap)")
    return DeviceSettings(
        ram_cap=ram_cap,
        swap=str(values.get("swap", "auto")),
        batch_size=int(values["batch-size"]) if values.get("batch-size") else None,
        freeze=str(values.get("freeze", "")),
        fallbacks=tuple(f.strip() for f in str(values.get("fallbacks", "")).split(";")
                        if f.strip()),
    )


# ---------------------------------------------------------------------------- personal keys
def patterns(text: str | None) -> list[str]:
    """Comma-separated patterns -> a list (blanks dropped)."""
    return [p.strip() for p in str(text or "").split(",") if p.strip()]


def matches(key: str, pats: list[str]) -> bool:
    """Does ``layer:param`` match any pattern (on the layer name or the whole key)?"""
    layer_name = key.split(":", 1)[0]
    return any(fnmatch.fnmatchcase(layer_name, p) or fnmatch.fnmatchcase(key, p) for p in pats)


def split_keys(keys: list[str], personal: str) -> tuple[list[str], list[str]]:
    """(shared keys, personal keys) of a model's weight keys under ``personal`` patterns."""
    pats = patterns(personal)
    mine = [k for k in keys if matches(k, pats)]
    return [k for k in keys if k not in mine], mine
