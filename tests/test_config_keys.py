"""The config key reference (docs/config-keys.md) is generated from the schema and up to
date; every key is described; the own-data examples in it load on real files."""

import json
import os
import re

import numpy as np
import pytest

from device_runtime.errors import ConfigError
from experiments import config_doc
from experiments.config import load_config
from experiments.config_text import KIND_TEXT, PARTITION_TEXT, TEXT
from experiments.data import KINDS, make_fleet_data
from experiments.data.kinds import PARTITIONS


def test_the_generated_reference_is_up_to_date():
    with open(config_doc.DOC, encoding="utf-8") as f:
        assert f.read() == config_doc.render(), \
            "docs/config-keys.md is out of date: run python -m experiments.config_doc"
    assert config_doc.main(["--check"]) == 0


def test_every_key_of_the_schema_is_described_and_no_other():
    assert config_doc.documented_keys() == set(TEXT)
    assert set(KIND_TEXT) == set(KINDS) and set(PARTITION_TEXT) == set(PARTITIONS)
    doc = config_doc.render()
    for key in TEXT:  # each key has its row
        assert f"| `{key.split(' ', 1)[1]}` |" in doc, key


def test_value_words_are_the_loaders_own():
    from experiments.config import DEVICE, FLEET
    assert config_doc.what(DEVICE["batch-size"]) == "an integer >= 1"
    assert config_doc.what(DEVICE["momentum"]) == "a number >= 0 and < 1"
    assert config_doc.what(FLEET["isolation"]) == "one of worker, fork"
    # and a bad value of that key is refused with those words
    from experiments.config import check_config
    with pytest.raises(ConfigError, match=r"\[train\] momentum = 1 must be a number >= 0 "
                                          r"and < 1"):
        check_config({"train": {"momentum": 1}})


def _examples() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the own-data examples."""
    with open(config_doc.EXAMPLES, encoding="utf-8") as f:
        return re.findall(r"```(\w+)\n(.*?)```", f.read(), re.S)


def _npz_fleet(folder, n: int = 5) -> None:
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(n):
        y = rng.integers(0, 4, 60)
        np.savez(os.path.join(folder, f"dev{i}.npz"),
                 x=rng.normal(size=(60, 6)).astype(np.float32), y=y)


def _femnist(root) -> None:
    rng = np.random.default_rng(1)
    for split, users in (("train", ["w1", "w2", "w3", "w4"]), ("test", ["w1", "w2", "w3", "w4"])):
        os.makedirs(os.path.join(root, split))
        data = {u: {"x": rng.random((6, 784)).round(3).tolist(),
                    "y": rng.integers(0, 62, 6).tolist()} for u in users}
        doc = {"users": users, "num_samples": [6] * len(users), "user_data": data}
        with open(os.path.join(root, split, "part0.json"), "w") as f:
            json.dump(doc, f)


def test_every_own_data_example_loads_on_files(tmp_path):
    blocks = _examples()
    assert [lang for lang, _ in blocks].count("toml") == 5
    _npz_fleet(tmp_path / "my_fleet")
    _femnist(tmp_path / "leaf" / "data" / "femnist" / "data")
    [users_json] = [text for lang, text in blocks if lang == "json"]
    (tmp_path / "my_users.json").write_text(users_json)
    fleets = []
    for i, (lang, text) in enumerate(b for b in blocks if b[0] == "toml"):
        if 'kind = "digits"' in text:
            pytest.importorskip("sklearn")
        cfg_path = tmp_path / f"example{i}.toml"
        cfg_path.write_text(text)
        data = dict(load_config(str(cfg_path))["data"])
        kind, n = data.pop("kind"), data.pop("devices", None)
        fleets.append(make_fleet_data(kind, n, 0, **data))
    everything, dirichlet, femnist, features, digits = fleets
    # a folder without `devices`: every file is a device, named by its file
    assert [d.device_id for d in everything.devices] == [f"dev{i}" for i in range(5)]
    assert len(dirichlet) == 10 and sum(d.num_train + d.num_test for d in dirichlet) == 300
    assert len(femnist) == 3 and femnist.input_shape == (1, 28, 28)
    assert all(d.num_test == 6 for d in femnist.devices)  # LEAF's own test split
    assert features.name == "leaf/features" and features.input_shape == (3,)
    assert features.num_classes == 3 and len(features) == 2
    alice = features.device("alice")
    rows = json.loads(users_json)["user_data"]["alice"]["x"]
    got = np.concatenate([alice.x_train, alice.x_test])
    np.testing.assert_allclose(np.sort(got, axis=0), np.sort(np.float32(rows), axis=0))
    assert len(digits) == 40


def test_own_data_defaults_and_their_errors(tmp_path):
    _npz_fleet(tmp_path / "f", 3)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nkind = "npz_dir"\npath = "f"\n[server]\nmin-nodes = 4\n')
    with pytest.raises(ConfigError, match="min-nodes = 4 but the fleet has 3 devices"):
        load_config(str(cfg))
    cfg.write_text('[data]\nkind = "npz_dir"\npath = "f"\npartition = "iid"\n')
    with pytest.raises(ConfigError, match="partition = 'iid' needs devices = N"):
        load_config(str(cfg))
    bad = tmp_path / "u.json"
    bad.write_text(json.dumps({"users": ["a"], "user_data": {"a": {"x": [[1, 2], [3]],
                                                                   "y": [0, 1]}}}))
    with pytest.raises(Exception, match="x must be numbers, one list of equal shape"):
        make_fleet_data("leaf", None, 0, path=str(bad), dataset="features")


def _shakespeare(root) -> None:
    rng = np.random.default_rng(2)
    text = "To be, or not to be, that is the question: Whether 'tis nobler in the mind. " * 4
    for split in ("train", "test"):
        os.makedirs(os.path.join(root, split))
        users = ["HAMLET", "OPHELIA"]
        data = {}
        for u in users:
            starts = rng.integers(0, len(text) - 81, 5)
            data[u] = {"x": [text[s:s + 80] for s in starts], "y": [text[s + 80] for s in starts]}
        with open(os.path.join(root, split, "all.json"), "w") as f:
            json.dump({"users": users, "num_samples": [5, 5], "user_data": data}, f)


@pytest.mark.parametrize("name", ["leaf_femnist", "leaf_shakespeare"])
def test_shipped_leaf_configs_build_their_fleet_and_model(name, tmp_path):
    # the shipped config copied next to LEAF-layout files at its relative path
    from device_runtime.modelspec import load_model
    from experiments.simulate import model_text

    src = os.path.join(os.path.dirname(config_doc.DOC), "..", "experiments", "configs",
                       f"{name}.toml")
    text = open(src, encoding="utf-8").read()
    (tmp_path / f"{name}.toml").write_text(text)
    root = tmp_path / "leaf" / "data" / name.split("_")[1] / "data"
    (_femnist if name == "leaf_femnist" else _shakespeare)(root)
    cfg = load_config(str(tmp_path / f"{name}.toml"))
    data = dict(cfg["data"])
    data.pop("devices")  # the files here hold fewer users than the config's subset
    fleet = make_fleet_data(data.pop("kind"), None, 0, **data)
    model = load_model(model_text(cfg), 0)[0]
    # the model takes any sample shape with its input's element count
    assert np.prod(model.input_shape) == np.prod(fleet.input_shape)
    assert model.output_shape[-1] == fleet.num_classes
    d = fleet.devices[0]
    model.compile(batch_size=2, optimizer="sgd", lr=0.01)
    assert np.isfinite(model.fit(d.x_train, d.y_train, steps=1).losses[0])


# every key renamed to kebab-case, old spelling -> new (the list the README gives)
RENAMED = {
    "data": {"samples_per_device": "samples-per-device", "max_samples": "max-samples",
             "feature_shift": "feature-shift", "label_skew": "label-skew",
             "pixel_noise": "pixel-noise", "test_fraction": "test-fraction",
             "min_size": "min-size", "vocab_size": "vocab-size", "num_classes": "num-classes"},
    "fleet": {"ram_cap": "ram-cap", "small_below": "small-below",
              "small_batch_size": "small-batch-size", "small_freeze": "small-freeze",
              "numba_min_cap": "numba-min-cap"},
    "faults": {"min_replies": "min-replies"},
}
DATA_OF = {"samples_per_device": {"kind": "synthetic_images"},
           "max_samples": {"kind": "synthetic_fedprox"}, "label_skew": {},
           "feature_shift": {}, "pixel_noise": {}, "test_fraction": {},
           "min_size": {"partition": "dirichlet"}, "vocab_size": {"kind": "leaf", "path": "x"},
           "num_classes": {"kind": "npz_dir", "path": "x"}}


def test_every_key_is_kebab_case():
    from experiments.config import DATA_COMMON, DEVICE, FLEET, MODEL, SERVER, TOP
    from experiments.fleet.faults import KEYS

    keys = [*TOP, *DATA_COMMON, *MODEL, *DEVICE, *SERVER, *FLEET, *KEYS]
    keys += [k for kind in KINDS.values() for k in kind.params]
    keys += [k for p in PARTITIONS.values() for k in p]
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", k) for k in keys), \
        [k for k in keys if "_" in k or k != k.lower()]


@pytest.mark.parametrize("section,old,new", [(s, o, n) for s, m in RENAMED.items()
                                             for o, n in m.items()])
def test_old_spellings_are_refused_with_a_hint_naming_the_new_one(section, old, new):
    from experiments.config import check_config

    values = {"ram_cap": "1GiB", "small_below": "1GiB", "numba_min_cap": "1GiB",
              "small_freeze": "fc1", "num_classes": 3}
    table = {**(DATA_OF.get(old, {}) if section == "data" else {}), old: values.get(old, 1)}
    with pytest.raises(ConfigError) as e:
        check_config({section: table})
    msg = str(e.value)
    assert "\n" not in msg and f"renamed to '{new}'" in msg and old in msg, msg
    # and the new spelling is the key the loader knows
    table[new] = table.pop(old)
    try:
        check_config({section: table})
    except ConfigError as e2:
        assert "renamed" not in str(e2) and "unknown key" not in str(e2), str(e2)


def test_old_spellings_in_other_sections_get_the_hint_too():
    from experiments.config import check_config

    with pytest.raises(ConfigError, match=r"\[train\] batch_size: renamed to 'batch-size'"):
        check_config({"train": {"batch_size": 8}})
    with pytest.raises(ConfigError, match=r"\[data\] num_classes: renamed to 'num-classes'"):
        check_config({"data": {"kind": "npz_dir", "path": "x", "num_classes": 3}})
