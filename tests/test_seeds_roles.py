"""data-seed, model-seed and sampling-seed (experiments/seeds.py): each defaults to ``seed``,
each drives only its own part of a run, and the ``seeds`` list is checked like any key."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device_runtime.errors import ConfigError
from experiments.config import load_config
from experiments.seeds import for_seed, parse_seeds, seed_list, seed_roles
from experiments.simulate import build_fleet, model_text, run_config

CFG = {
    "name": "roles", "seed": 3, "rounds": 2,
    "data": {"kind": "synthetic_images", "devices": 6, "shape": [1, 4, 4], "classes": 4,
             "samples-per-device": 20, "partition": "k_classes", "k": 2},
    "model": {"layers": [{"type": "input", "name": "in", "input_shape": "1:4:4"},
                         {"type": "flatten", "name": "flat"},
                         {"type": "fully_connected", "name": "fc1", "unit": 4}]},
    "fleet": {"ram-cap": {"dist": "choice", "values": ["96MiB", "1GiB"]},
              "speed": {"dist": "lognormal", "median": 1.0, "sigma": 0.5},
              "availability": {"dist": "uniform", "low": 0.5, "high": 1.0}},
}


def _cfg(**extra: object) -> dict:
    return {**json.loads(json.dumps(CFG)), **extra}  # a deep copy


def _rc(cfg: dict, algo: str) -> dict:
    from device_runtime.modelspec import load_model
    return run_config(cfg, algo, load_model(model_text(cfg), 0)[0].specs)


def _fleet(cfg: dict) -> tuple[list, list]:
    fleet, profiles = build_fleet(cfg, cfg["data"])
    arrays = [(d.device_id, d.x_train, d.y_train, d.x_test, d.y_test) for d in fleet.devices]
    return arrays, [p.as_dict() for p in profiles]


def _same_fleet(a: tuple[list, list], b: tuple[list, list]) -> bool:
    (da, pa), (db, pb) = a, b
    return pa == pb and len(da) == len(db) and all(
        x[0] == y[0] and all(np.array_equal(u, v) for u, v in zip(x[1:], y[1:]))
        for x, y in zip(da, db))


def _init(cfg: dict) -> dict:
    from device_runtime.device import initial_weights
    rc = _rc(cfg, "fedavg")
    return initial_weights(model_text(cfg), rc["model-seed"])


def test_every_seed_defaults_to_seed():
    assert seed_roles({}) == {"data": 0, "model": 0, "sampling": 0, "shuffle": 0}
    assert seed_roles({"seed": 7}) == {"data": 7, "model": 7, "sampling": 7, "shuffle": 7}
    assert seed_roles({"seed": 7, "model-seed": 2}) == {"data": 7, "model": 2, "sampling": 7,
                                                        "shuffle": 7}


def test_a_new_model_seed_keeps_the_fleet_and_the_sampling():
    # Prepare
    a, b = _cfg(), _cfg(**{"model-seed": 11})
    # Execute
    ra, rb = _rc(a, "fedper"), _rc(b, "fedper")
    # Assert: the same data, partition and profiles; only the model seed differs
    assert _same_fleet(_fleet(a), _fleet(b))
    assert {k: v for k, v in ra.items() if k != "model-seed"} == \
        {k: v for k, v in rb.items() if k != "model-seed"}
    assert (ra["model-seed"], rb["model-seed"]) == (3, 11)
    wa, wb = _init(a), _init(b)
    assert not np.array_equal(wa["fc1:weight"], wb["fc1:weight"])


def test_a_new_data_seed_keeps_the_model_and_the_sampling():
    a, b = _cfg(), _cfg(**{"data-seed": 11})
    fa, fb = _fleet(a), _fleet(b)
    assert not _same_fleet(fa, fb)
    assert not np.array_equal(fa[0][0][1], fb[0][0][1])  # other data on device 0
    assert _rc(a, "ditto") == _rc(b, "ditto")
    assert np.array_equal(_init(a)["fc1:weight"], _init(b)["fc1:weight"])


def test_a_new_sampling_seed_keeps_the_fleet_and_the_model():
    a, b = _cfg(), _cfg(**{"sampling-seed": 11})
    assert _same_fleet(_fleet(a), _fleet(b))
    ra, rb = _rc(a, "fedavg"), _rc(b, "fedavg")
    # "seed" is what the server samples nodes with (the devices shuffle with shuffle-seed)
    assert (ra["seed"], rb["seed"]) == (3, 11)
    assert {k: v for k, v in ra.items() if k != "seed"} == \
        {k: v for k, v in rb.items() if k != "seed"}


def test_the_seed_of_a_repeat_moves_only_the_seeds_the_config_leaves_to_it():
    base = _cfg(**{"data-seed": 5, "seeds": [0, 1]})
    one, two = for_seed(base, 0), for_seed(base, 1)
    assert "seeds" not in one and one["seed"] == 0 and two["seed"] == 1
    assert _same_fleet(_fleet(one), _fleet(two))  # data-seed is fixed: one fleet
    assert _rc(one, "fedavg")["model-seed"] == 0
    assert _rc(two, "fedavg")["model-seed"] == 1


def test_seeds_on_the_command_line_and_in_the_config():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds(" 4 ,2") == [4, 2]
    assert seed_list({"seeds": [5, 6]}, None, None) == [5, 6]
    assert seed_list({"seeds": [5, 6]}, "1,2", None) == [1, 2]
    assert seed_list({"seeds": [5, 6]}, None, 3) is None  # --seed N: one run
    assert seed_list({}, None, None) is None
    for bad, msg in (("0,x", "comma-separated integers"), ("1,1", "lists seed 1 twice"),
                     ("-1", "from 0 to"), ("", "comma-separated")):
        with pytest.raises(ConfigError, match=msg):
            parse_seeds(bad)
    with pytest.raises(ConfigError, match="not both"):
        seed_list({}, "0,1", 2)


@pytest.mark.parametrize("line, msg", [
    ("seeds = []", "non-empty list"), ("seeds = [0, 0]", "lists seed 0 twice"),
    ("seeds = [1.5]", "non-empty list of integers"), ("seeds = 3", "non-empty list"),
    ("data-seed = -1", "data-seed = -1 must be an integer >= 0"),
    ("model-seed = 'a'", "model-seed"), ("sampling_seed = 1", "sampling_seed"),
])
def test_bad_seed_keys_are_one_line_errors(tmp_path, line, msg):
    path = tmp_path / "c.toml"
    path.write_text(f"name = 'x'\n{line}\n")
    with pytest.raises(ConfigError, match=msg) as e:
        load_config(str(path))
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_good_seed_keys_load(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("name = 'x'\nseeds = [0, 1, 2]\ndata-seed = 4\nmodel-seed = 5\n"
                    "sampling-seed = 6\nshuffle-seed = 8\n")
    cfg = load_config(str(path))
    assert cfg["seeds"] == [0, 1, 2]
    assert seed_roles(cfg) == {"data": 4, "model": 5, "sampling": 6, "shuffle": 8}
