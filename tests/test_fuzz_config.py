"""Experiment configs (TOML): the shipped configs load unchanged; thousands of mutated ones
(values of every type, unknown, missing and renamed keys, broken TOML, random bytes) load
or fail with a one-line ConfigError naming the file and the key; and a config that loads
does not fail later in the code that reads it (device profiles, fault plan, model).
"""

from __future__ import annotations

import glob
import json
import math
import os
import tomllib
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_runtime import weights as weights_mod
from device_runtime.errors import ConfigError
from device_runtime.modelspec import load_model
from experiments.config import DATA_KINDS, DEVICE, PARTITIONS, check_config, load_config
from experiments.data.kinds import KIND_PARAMS, PARTITION_PARAMS
from experiments.fleet.faults import FaultPlan
from experiments.fleet.profiles import draw_profiles
from tests.fuzzing import (
    OPS,
    check_input,
    edit_document,
    edits,
    fuzz_report,  # noqa: F401 (an autouse fixture)
    fuzz_settings,
    mutate,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "*.toml")))


def _load_toml(path: str) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


BASES = {os.path.basename(p): _load_toml(p) for p in SHIPPED}


# ---------------------------------------------------------------- a small TOML writer

_ESC = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _str(s: str) -> str:
    return '"' + "".join(_ESC.get(c, c) if c in _ESC else
                         f"\\u{ord(c):04x}" if ord(c) < 32 or ord(c) == 127 else c
                         for c in s) + '"'


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) \
            else repr(v)
    if isinstance(v, str):
        return _str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{_str(k)} = {_value(x)}" for k, x in v.items()) + "}"


def to_toml(cfg: dict) -> str:
    """TOML text of a config: scalars first, then one [section] per table."""
    top = [f"{_str(k)} = {_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    secs = [f"[{_str(k)}]\n" + "\n".join(f"{_str(kk)} = {_value(vv)}" for kk, vv in v.items())
            for k, v in cfg.items() if isinstance(v, dict)]
    return "\n".join(top + secs) + "\n"


def test_writer_round_trips_every_shipped_config():
    for name, cfg in BASES.items():
        assert tomllib.loads(to_toml(cfg)) == cfg, name


def test_shipped_configs_load_unchanged():
    for p in SHIPPED:
        want = _load_toml(p)
        if "path" in want.get("data", {}):  # a relative [data] path: from the config's folder
            want["data"]["path"] = os.path.join(os.path.dirname(p), want["data"]["path"])
        assert load_config(p) == want, p
    assert load_config(None) == _load_toml(os.path.join(ROOT, "experiments", "configs",
                                                        "default.toml"))


def test_the_tables_know_what_the_code_reads():
    # Prepare / Assert: [data] kinds and partitions as make_fleet_data accepts them
    for kind, params in KIND_PARAMS.items():
        assert set(DATA_KINDS[kind]) == params, kind
    assert {k: set(v) for k, v in PARTITIONS.items()} == PARTITION_PARAMS
    server = pytest.importorskip("server")  # the device keys the server forwards, no other
    assert set(DEVICE) | {"model", "model-seed", "personal", "seed", "shuffle-seed"} == \
        set(server.DEVICE_KEYS)


# ---------------------------------------------------------------- mutations

SCALARS = (st.booleans() | st.integers(-2**70, 2**70) | st.floats()
           | st.text(max_size=12) | st.sampled_from(["64MiB", "0", "-1", "1e400", "nan", "fedavg",
                                                    "worker", "dirichlet", "swap;batch:4",
                                                    "batch:x", "", "0MiB", "lognormal"]))
TOML_VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)
KEYS = st.sampled_from(["dist", "value", "low", "high", "median", "sigma", "values", "weights",
                        "min", "max", "lr", "rounds", "devices", "kind", "partition", "k",
                        "alpha", "shape", "layers", "head", "type", "name", "rate", "at",
                        "kill", "devices", "typo", ""]) | st.text(max_size=6)


EDITS = edits(TOML_VALUES, KEYS)


def _downstream(cfg: dict) -> None:
    """What simulate does first with a loaded config, on a small scale."""
    draw_profiles(4, cfg.get("fleet", {}), int(cfg.get("seed", 0)))
    FaultPlan.from_config(cfg.get("faults"), int(cfg.get("seed", 0)))
    m = cfg.get("model", {})
    if "layers" in m:
        with mock.patch.object(weights_mod, "memory_available", lambda: 32 << 20):
            load_model(json.dumps(m["layers"]), 0)


@fuzz_settings(1500)
@given(st.sampled_from(sorted(BASES)), EDITS)
def test_fuzz_config_values_and_keys(tmp_path_factory, name, changes):
    # Prepare
    cfg = edit_document(BASES[name], changes)
    path = str(tmp_path_factory.mktemp("cfg") / name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_toml(cfg))
    # Execute
    got, msg = check_input("configs: values and keys", lambda: load_config(path), path)
    # Assert: what loads is what the file says, and the code that reads it copes
    if msg is None:
        data = cfg.get("data")
        if isinstance(data, dict) and isinstance(data.get("path"), str) and data["path"] and \
                not os.path.isabs(os.path.expanduser(data["path"])):  # from the config's folder
            data["path"] = os.path.join(os.path.dirname(path), data["path"])
        assert got == cfg
        check_input("configs: read by simulate", lambda: _downstream(got))


@fuzz_settings(400)
@given(st.sampled_from(SHIPPED), OPS)
def test_fuzz_config_bytes(tmp_path_factory, base, ops):
    with open(base, "rb") as f:
        blob = mutate(f.read(), ops)
    path = str(tmp_path_factory.mktemp("cfg") / "c.toml")
    with open(path, "wb") as f:
        f.write(blob)
    check_input("configs: bytes", lambda: load_config(path), path)


@pytest.mark.parametrize("cfg, needle", [
    ({"rounds": 0}, "rounds = 0 must be an integer >= 1"),
    ({"nmae": "x"}, "nmae: unknown key (known: name, seed, rounds"),
    ({"name": "../../etc"}, "name = '../../etc' must be a plain name"),
    ({"train": {"lrr": 0.1}}, "[train] lrr: unknown key"),
    ({"train": {"eval-before": "false"}}, "[train] eval-before = 'false' must be true or false"),
    ({"fleet": {"ram-cap": {"dist": "lognormal", "median": "1GiB", "sigma": -1}}},
     "[fleet] ram-cap.sigma = -1 must be a number >= 0"),
    ({"fleet": {"ram-cap": {"dist": "uniform", "low": "2GiB", "high": "1GiB"}}},
     "[fleet] ram-cap: low = '2GiB' is above high = '1GiB'"),
    ({"fleet": {"ram-cap": "1e400"}}, "[fleet] ram-cap: size '1e400' is too large"),
    ({"fleet": {"fallbacks": "batch:x"}}, "[fleet] fallbacks = 'batch:x' must be"),
    ({"fleet": {"speed": float("nan")}}, "[fleet] speed = nan must be a number > 0"),
    ({"fleet": {"speed": {"dist": "uniform", "low": 10**400, "high": 1}}}, "above high"),
    ({"data": {"devices": 10**9}}, "[data] 1000000000 devices of generated data need"),
    ({"data": {"kind": "synthetic_fedprox", "samples": [1, 2]}}, "2 counts for 100 devices"),
    ({"data": {"kind": "leaf"}}, "[data] kind = 'leaf' needs path"),
    ({"model": {"builtin": "lenet5", "args": {"clases": 3}}}, "[model] args.clases: unknown"),
    ({"model": {"layers": [{"type": "input", "name": "a"}], "head": ["b"]}}, "head names 'b'"),
    ({"algorithm": {"ditto": {"ditto-lambda": "x"}}}, "[algorithm.ditto] ditto-lambda = 'x'"),
    ({"faults": {"rate": 2}}, "faults.rate must be a number in [0, 1]"),
    ({"\n": 1}, "'\\n': unknown key"),
])
def test_config_errors_name_file_and_key(tmp_path, cfg, needle):
    path = str(tmp_path / "c.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_toml(cfg))
    _, msg = check_input("configs: cases", lambda: load_config(path), path, needle)
    assert msg is not None and msg.startswith(f"{path}: "), msg


def test_config_file_problems_name_the_file(tmp_path):
    # Prepare
    big, bad, deep = tmp_path / "big.toml", tmp_path / "bad.toml", tmp_path / "deep.toml"
    big.write_text("# " + "x" * (2 << 20))
    bad.write_bytes(b"name = \"\xff\"\n")
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    # Execute / Assert
    for p, needle in ((big, "not an experiment config"), (bad, "not"), (deep, "not valid TOML"),
                      (tmp_path / "none.toml", "config file not found")):
        _, msg = check_input("configs: cases", lambda p=p: load_config(str(p)), str(p), needle)
        assert msg is not None


def test_an_empty_config_is_valid():  # simulate has a default for every key
    check_config({})
    with pytest.raises(ConfigError, match="kind = 'npz_dir' needs path"):
        check_config({"data": {"kind": "npz_dir"}})
