"""Every device's personalized model is saved at the end of a run
(``weights/<algorithm>/<device id>.npz``, experiments/results.py), and loading it back and
evaluating it on that device's test data gives the accuracy the run reported for it."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from experiments.results import file_name, finish_personal, load_personal, staging_dir
from tests.configs import mlp, synthetic_images

CONFIG = """
name = "personal"
seed = 2
rounds = 2
algorithms = ["local", "fedavg", "fedper", "ditto", "fedavg-ft"]
""" + synthetic_images(6, (3, 4, 4), samples=30, noise=4.0) + mlp((3, 4, 4), hidden=8) + """
[train]
lr = 0.1
batch-size = 8

[server]
fraction-train = 1.0

[fleet]
isolation = "worker"
workers = 2
kernels = "numpy"
ram-cap = {dist = "choice", values = ["24MiB", "1GiB"], weights = [0.3, 0.7]}
"""


def _forward(w: dict, x: np.ndarray) -> np.ndarray:
    """The MLP above in float64 numpy, apart from the runtime: predicted classes."""
    h = np.maximum(x.reshape(len(x), -1).astype(np.float64) @ w["fc1:weight"] + w["fc1:bias"],
                   0.0)
    return np.argmax(h @ w["fc2:weight"] + w["fc2:bias"], axis=1)


def _simulate(tmp_path_factory, name: str, text: str) -> tuple[str, str, dict]:
    if importlib.util.find_spec("flwr") is None:
        pytest.skip("needs flwr (pip install .[flower])")
    from experiments.simulate import main

    tmp = tmp_path_factory.mktemp(name)
    cfg = tmp / f"{name}.toml"
    cfg.write_text(text)
    out = tmp / "out"
    assert main([str(cfg), "--out", str(out), "--quiet"]) == 0
    with open(out / "summary.json") as f:
        return str(cfg), str(out), json.load(f)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _simulate(tmp_path_factory, "personal", CONFIG)


@pytest.fixture(scope="module")
def forked(tmp_path_factory):
    """Fork isolation: each device's own child process writes its model."""
    text = CONFIG.replace('isolation = "worker"', 'isolation = "fork"').replace(
        'algorithms = ["local", "fedavg", "fedper", "ditto", "fedavg-ft"]',
        'algorithms = ["ditto", "fedavg-ft"]')
    return _simulate(tmp_path_factory, "forked", text)


@pytest.mark.parametrize("which", ["run", "forked"])
def test_a_saved_personal_model_reproduces_the_reported_accuracy(request, which):
    # Prepare: the run's own fleet, made again from its config
    from device_runtime.device import DeviceData
    from device_runtime.device.evaluation import evaluate
    from device_runtime.modelspec import load_model
    from experiments.config import load_config
    from experiments.simulate import build_fleet, model_text

    path, out, summary = request.getfixturevalue(which)
    cfg = load_config(path)
    fleet, _ = build_fleet(cfg, cfg["data"])
    ids = [d.device_id for d in fleet.devices]
    model = load_model(model_text(cfg), 0)[0]
    tiny = [d["device"] for d in summary["devices"] if d["ram_cap"] == 24 << 20]
    assert tiny and len(tiny) < len(ids)  # some devices cannot even evaluate
    checked = 0
    for algo in cfg["algorithms"]:
        reported = summary["algorithms"][algo]["final_accuracy_by_device"]
        # Assert: keyed by device id, in fleet order; a file for each device evaluated
        assert list(reported) == [i for i in ids if i not in tiny]
        with open(os.path.join(out, "weights", algo, "index.json")) as f:
            assert list(json.load(f)) == list(reported)
        for dev in tiny:
            with pytest.raises(KeyError, match="final evaluation failed"):
                load_personal(out, algo, dev)
        for dev, acc in reported.items():
            # Execute: load it back, evaluate it on the device's own test split
            w = load_personal(out, algo, dev)
            d = fleet.device(dev)
            data = DeviceData(d.x_train, d.y_train, d.x_test, d.y_test)
            _, again = evaluate(model, w, data)
            # Assert: the very accuracy reported, and an independent forward pass agrees
            assert again == acc, (algo, dev, again, acc)
            mine = float(np.mean(_forward(w, d.x_test) == d.y_test))
            assert abs(mine - acc) <= 1.0 / len(d.y_test) + 1e-12, (algo, dev, mine, acc)
            checked += 1
    assert checked == len(cfg["algorithms"]) * (len(ids) - len(tiny))


def test_the_personal_layers_are_in_the_saved_models(run):
    _, out, summary = run
    ids = list(summary["algorithms"]["fedper"]["final_accuracy_by_device"])

    def shared(algo: str) -> dict:
        with np.load(os.path.join(out, "weights", f"{algo}.npz")) as z:
            return {k: z[k] for k in z.files}

    def personal(algo: str) -> list[dict]:
        return [load_personal(out, algo, i) for i in ids]

    keys = {"fc1:weight", "fc1:bias", "fc2:weight", "fc2:bias"}
    # local: nothing is shared, every device has a whole model of its own
    assert shared("local") == {}
    loc = personal("local")
    assert all(set(w) == keys for w in loc)
    assert not np.array_equal(loc[0]["fc1:weight"], loc[1]["fc1:weight"])
    # FedPer: the shared base is the server's, the head is each device's own
    base, per = shared("fedper"), personal("fedper")
    assert set(base) == {"fc1:weight", "fc1:bias"}
    for w in per:
        assert set(w) == keys and all(np.array_equal(w[k], base[k]) for k in base)
    assert len({w["fc2:weight"].tobytes() for w in per}) == len(per)
    # FedAvg: every device's model is the global one
    glob = shared("fedavg")
    assert set(glob) == keys
    assert all(np.array_equal(w[k], glob[k]) for w in personal("fedavg") for k in keys)
    # Ditto: the personal model v, not the global model w; FedAvg-FT: the fine-tuned copy
    for algo in ("ditto", "fedavg-ft"):
        g = shared(algo)
        assert all(not np.array_equal(w["fc1:weight"], g["fc1:weight"]) for w in personal(algo))


def test_file_names_from_device_ids():
    taken: set[str] = set()
    assert file_name("d07", taken) == "d07.npz"
    assert file_name("f0001_33", taken) == "f0001_33.npz"
    assert file_name("a/b", taken) == "a_b.npz"
    assert file_name("a_b", taken) == "a_b-2.npz"  # no two devices share a file
    assert file_name("../x", taken) == "_x.npz"
    assert file_name("..", taken) == "device.npz"
    assert file_name("user 1", taken) == "user_1.npz"
    assert all("/" not in n and not n.startswith(".") for n in taken)


def test_the_folder_of_models_is_swapped_in_whole(tmp_path):
    # Prepare: an older folder, and three staged models of which device 1 failed
    out = str(tmp_path)
    os.makedirs(os.path.join(out, "weights", "algo"))
    with open(os.path.join(out, "weights", "algo", "old.npz"), "w") as f:
        f.write("old")
    stage = os.path.join(staging_dir(out, "algo"), "by-index")
    for i in range(3):
        np.savez(os.path.join(stage, f"{i}.npz"), w=np.full(2, i, np.float32))
    # Execute
    folder = finish_personal(out, "algo", ["x/0", "x1", "x2"], evaluated={0, 2})
    # Assert: by device id, only the evaluated ones, the old folder and the staging gone
    assert sorted(os.listdir(folder)) == ["index.json", "x2.npz", "x_0.npz"]
    assert load_personal(out, "algo", "x/0")["w"].tolist() == [0.0, 0.0]
    assert load_personal(out, "algo", "x2")["w"].tolist() == [2.0, 2.0]
    assert sorted(os.listdir(os.path.join(out, "weights"))) == ["algo"]


def test_the_switch_is_a_checked_key(tmp_path):
    from device_runtime.errors import ConfigError
    from experiments.config import load_config

    path = tmp_path / "c.toml"
    path.write_text("name = 'x'\nsave-personal-models = false\n")
    assert load_config(str(path))["save-personal-models"] is False
    path.write_text("name = 'x'\nsave-personal-models = 'no'\n")
    with pytest.raises(ConfigError, match="save-personal-models = 'no' must be true or false"):
        load_config(str(path))
