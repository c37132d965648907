"""Experiment configs (TOML): loading and checking, with one-line errors.

Every section and key the experiment code reads is checked here, before anything runs:
its type and range, and unknown keys (a typo would otherwise be silently ignored). An
error is one ``ConfigError`` line naming the file and the key::

    runs.toml: [fleet] ram-cap.sigma = -1 must be a number >= 0

The sections (see experiments/configs/default.toml): top-level ``name``, ``seed``,
``rounds``, ``algorithms`` (and ``seeds``, ``data-seed``, ``model-seed``, ``sampling-seed``,
``shuffle-seed``: experiments/seeds.py; ``save-personal-models``: experiments/results.py);
``[data]`` (experiments.data.make_fleet_data), ``[model]``
(a layer list, a built-in or an INI/built-in name), ``[train]`` and ``[algorithm.<name>]``
(device config keys, device_runtime.device), ``[server]`` (server/app.py, server/screen.py),
``[fleet]`` (experiments.fleet.profiles) and ``[faults]`` (checked by
experiments.fleet.faults itself). A new key is added to the tables below.
"""

from __future__ import annotations

import inspect
import os
import tomllib
from typing import Any

from device_runtime.device import key_specs
from device_runtime.errors import ConfigError
from device_runtime.models import BUILTINS
from device_runtime.units import parse_size
from device_runtime.weights import memory_available
from experiments.algorithms import ALGORITHMS
from experiments.config_checks import (
    Check,
    any_table,
    boolean,
    distribution,
    fail,
    integer,
    join,
    list_of,
    matches,
    number,
    one_of,
    plain_keys,
    renamed,
    size,
    table,
    text,
)
from experiments.data import kinds as data_kinds
from experiments.seeds import ROLES as SEED_ROLES
from experiments.seeds import check_seeds

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.toml")
MAX_BYTES = 1 << 20  # a config is a few KiB; a larger file is not one


def _device_check(spec: dict[str, Any]) -> Check:
    """The check of one device config key, from its DeviceConfig field."""
    if spec["choices"]:
        return one_of(*spec["choices"])
    kind = spec["type"]
    if kind is bool:
        return boolean
    if kind is int:
        return integer(spec["lo"], spec["hi"])
    if kind is float:
        return number(spec["lo"], spec["hi"], lo_open=spec["lo_open"], hi_open=spec["hi_open"])
    return text


# the device config keys an experiment sets in [train] and [algorithm.<name>]: the fields of
# device_runtime.device.DeviceConfig (the server forwards them, server.app.DEVICE_KEYS) but
# those the experiment's other sections or Flower set
DEVICE: dict[str, Check] = {k: _device_check(s) for k, s in key_specs().items()
                            if s["set_by"] == "train"}
# what experiments.simulate.run_config reads of [server] and forwards to the ServerApp
SERVER: dict[str, Check] = {
    "strategy": text, "strategy-args": any_table, "fraction-train": number(0, 1, lo_open=True),
    "fraction-evaluate": number(0, 1), "min-nodes": integer(1),
    "timeout": number(0, lo_open=True), "screen-updates": boolean,
    "max-update-norm": number(0, lo_open=True), "max-norm-over-median": number(0),
    "max-num-examples": number(0),
}
FLEET: dict[str, Check] = {
    "isolation": one_of("worker", "fork"), "workers": integer(0),
    "ram-cap": distribution(size, lambda v: parse_size(v)),
    "speed": distribution(number(0, lo_open=True)), "availability": distribution(number(0, 1)),
    "dropout": distribution(number(0, 1)), "small-below": size, "small-batch-size": integer(1),
    "small-freeze": text, "swap": one_of("off", "auto", "on"),
    "kernels": one_of("auto", "numba", "numpy"), "numba-min-cap": size,
    "backend": one_of("local", "ray"), "ray-address": text,  # experiments/fleet/ray_backend.py
    "cgroups": one_of("auto", "off", "require"),  # experiments.fleet.cgroup
    "fallbacks": matches(r"((swap|batch:[1-9][0-9]*|freeze:[^;]+)\s*(;\s*|$))*",
                         "';'-separated fallbacks: swap, batch:N, freeze:PATTERNS"),
}


# [data]: every kind's own parameters and the partitions', read from the data-kind registry
# (experiments/data/kinds.py) when a config is checked
def _checks(params: dict[str, data_kinds.Param]) -> dict[str, Check]:
    return {k: p.check for k, p in params.items()}


def _kind(where: str, v: Any) -> None:
    one_of(*data_kinds.KINDS)(where, v)


DATA_KINDS: dict[str, dict[str, Check]] = {
    name: _checks(kind.params) for name, kind in data_kinds.KINDS.items()}
PARTITIONS: dict[str, dict[str, Check]] = {
    name: _checks(params) for name, params in data_kinds.PARTITIONS.items() if params}
DATA_COMMON: dict[str, Check] = {"kind": _kind, "devices": integer(2),
                                 "partition": text, "test-fraction": number(0, 1, hi_open=True),
                                 "stratify": boolean}


# the top-level keys besides the sections
TOP: dict[str, Check] = {
    "name": matches(r"[A-Za-z0-9][A-Za-z0-9_.-]*", "a plain name (letters, digits, _ . -): it "
                                                   "names the output folder"),
    "seed": integer(0, 2**32 - 1), "rounds": integer(1), "seeds": check_seeds,
    # what each seed drives: experiments/seeds.py
    **{f"{role}-seed": integer(0, 2**32 - 1) for role in SEED_ROLES},
    "save-personal-models": boolean,  # weights/<algorithm>/<device id>.npz
    "algorithms": list_of(one_of(*ALGORITHMS), 1)}
MODEL: dict[str, Check] = {"layers": list_of(lambda w, v: _layer(w, v), 1),
                           "builtin": one_of(*BUILTINS), "args": any_table, "name": text,
                           "head": list_of(text, 1)}


def load_config(path: str | None) -> dict[str, Any]:
    """The parsed and checked experiment config at ``path`` (default: ``configs/default.toml``)."""
    path = path or DEFAULT_CONFIG
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.getsize(path) > MAX_BYTES:
        raise ConfigError(f"{path} is {os.path.getsize(path):,} bytes: not an experiment config")
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None
    except RecursionError:
        raise ConfigError(f"{path} is not valid TOML: values nested too deeply") from None
    data = cfg.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"] and \
            not os.path.isabs(os.path.expanduser(data["path"])):
        # like an INI file's data paths: relative to the config's own folder, not to where
        # the command runs
        data["path"] = os.path.join(os.path.dirname(os.path.abspath(path)), data["path"])
    try:
        check_config(cfg)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg


def check_config(cfg: dict[str, Any]) -> None:
    """Raise a one-line ConfigError naming the first bad key of an experiment config."""
    table({**TOP, "data": _data, "model": _model, "train": table(DEVICE), "server": _server,
           "fleet": table(FLEET), "algorithm": _algorithm, "faults": _faults})("", cfg)
    devices = data_kinds.fleet_size(cfg.get("data", {}))
    need = cfg.get("server", {}).get("min-nodes", 2)
    if devices is not None and need > devices:
        raise ConfigError(f"[server] min-nodes = {need} but the fleet has {devices} devices: the "
                          f"server would wait for ever (lower min-nodes or add devices)")


def _algorithm(where: str, a: Any) -> None:
    table(dict.fromkeys(ALGORITHMS, any_table))("[algorithm]", a)
    for name, overrides in a.items():
        table({**DEVICE, "strategy-args": any_table})(f"[algorithm.{name}]", overrides)


def _data(where: str, d: Any) -> None:
    any_table("[data]", d)
    name = d.get("kind", data_kinds.DEFAULT_KIND)
    DATA_COMMON["kind"]("[data] kind", name)
    kind = data_kinds.KINDS[name]
    partition = d.get("partition", kind.partitions[0])
    one_of(*kind.partitions)("[data] partition", partition)
    table({**DATA_COMMON, **_checks(kind.params),
           **_checks(data_kinds.PARTITIONS.get(partition, {}))})("[data]", d)
    if kind.on_disk and "path" not in d:
        raise ConfigError(f"[data] kind = {name!r} needs path = FOLDER")
    devices = data_kinds.fleet_size(d)
    if devices is None and partition != "natural":
        raise ConfigError(f"[data] partition = {partition!r} needs devices = N (without it, "
                          f"partition natural makes one device per file or user)")
    params = kind.resolve(d)
    if kind.check is not None:
        kind.check(params, devices)
    # generated data lives in memory: refuse a fleet that cannot fit before making it
    per_device = kind.elements(params) if kind.elements is not None else 0
    need, avail = 4 * (devices or 0) * per_device, memory_available()
    if need > avail:
        raise ConfigError(f"[data] {devices} devices of generated data need {need:,} bytes, more "
                          f"than the {avail:,} bytes of memory available")


def _model(where: str, m: Any) -> None:
    table(MODEL)("[model]", m)
    given = [k for k in ("layers", "builtin", "name") if k in m]
    if len(given) > 1:
        raise ConfigError(f"[model] gives {' and '.join(given)}: give one")
    if "args" in m:
        if "builtin" not in m:
            raise ConfigError("[model] args applies to a builtin model only")
        params = inspect.signature(BUILTINS[m["builtin"]]).parameters
        table(dict.fromkeys(params, integer(1)))("[model] args", m["args"])
    names = [str(x["name"]) for x in m.get("layers", [])]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ConfigError(f"[model] layers: two layers are named {dup!r}")
    for h in m.get("head", []) if names else []:
        if h not in names:
            raise ConfigError(f"[model] head names {h!r}, which is not a layer "
                              f"({', '.join(names)})")


def _layer(where: str, v: Any) -> None:
    any_table(where, v)
    plain_keys(where, v)
    for k in ("type", "name"):
        if k not in v:
            raise ConfigError(f"{where} needs {k!r}")
        text(join(where, k), v[k])
        if not str(v[k]).isprintable() or "|" in str(v[k]):  # names go into report tables
            raise ConfigError(f"{join(where, k)} = {v[k]!r}: use printable characters, no "
                              f"line breaks, tabs or '|'")
    for k, x in v.items():
        items = x if isinstance(x, list) else [x]
        if not all(isinstance(i, (str, int, float, bool)) for i in items):
            raise fail(join(where, k), x, "a string, number or boolean (or a list of them)")


def _server(where: str, s: Any) -> None:
    table(SERVER)("[server]", s)
    try:  # importing server imports flwr; without it simulate cannot run anyway
        from server.strategies import STRATEGIES
    except ImportError:
        return
    if "strategy" in s:
        one_of(*STRATEGIES)("[server] strategy", s["strategy"])


def _faults(where: str, f: Any) -> None:
    from experiments.fleet.faults import FaultPlan

    any_table("[faults]", f)
    plain_keys("[faults]", f)
    from experiments.fleet.faults import KEYS
    for k in f:
        renamed("[faults]", k, KEYS)
    FaultPlan.from_config(f, 0)  # its own checks; messages name faults.<key>
