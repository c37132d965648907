"""Personalization experiments: algorithm definitions, device profiles, and a small
``nnfleet simulate`` run end to end (files, reproducibility, the literature's direction)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from device_runtime.errors import ConfigError
from device_runtime.models import lenet5, resnet18
from experiments.algorithms import ALGORITHMS, device_config, get_algorithm, resolve_personal
from experiments.fleet.profiles import draw, draw_profiles
from tests.configs import mlp, synthetic_images


def test_placeholders_resolve_against_the_model():
    specs = lenet5()
    assert resolve_personal("{head}", specs) == "fc3"
    assert resolve_personal("{head}", specs, head=["fc2", "fc3"]) == "fc2,fc3"
    assert resolve_personal("{base}", specs) == "conv1,conv2,fc1,fc2"
    bn = resolve_personal("{bn}", resnet18()).split(",")
    assert "bn0" in bn and "l4b1_bn2" in bn and all("bn" in b for b in bn)
    with pytest.raises(ConfigError, match="batch-normalization"):
        resolve_personal("{bn}", specs)
    with pytest.raises(ConfigError, match="nope"):
        resolve_personal("{head}", specs, head=["nope"])


def test_every_algorithm_has_a_device_config():
    for name, algo in ALGORITHMS.items():
        specs = resnet18() if name == "fedbn" else lenet5()
        cfg = device_config(algo, specs, overrides={"lr": 0.1})
        assert cfg["lr"] == 0.1 and "{" not in cfg["personal"]
    assert device_config(get_algorithm("fedrep"), lenet5())["head-epochs"] > 0
    assert get_algorithm("FedProx").strategy == "fedprox"
    with pytest.raises(ConfigError, match="unknown algorithm"):
        get_algorithm("fedsomething")


def test_profiles_are_drawn_reproducibly_from_distributions():
    cfg = {"ram-cap": {"dist": "choice", "values": ["128MiB", "1GiB"], "weights": [1, 3]},
           "speed": {"dist": "lognormal", "median": 2.0, "sigma": 0.5, "min": 0.5},
           "availability": {"dist": "uniform", "low": 0.5, "high": 1.0}, "dropout": 0.1,
           "small-below": "256MiB", "small-batch-size": 4, "fallbacks": "batch:2;swap"}
    a, b = draw_profiles(400, cfg, seed=3), draw_profiles(400, cfg, seed=3)
    assert [p.as_dict() for p in a] == [p.as_dict() for p in b]
    caps = np.array([p.ram_cap for p in a])
    assert set(caps) == {128 << 20, 1 << 30} and 0.6 < (caps == 1 << 30).mean() < 0.9
    assert min(p.speed for p in a) >= 0.5 and all(0.5 <= p.availability <= 1 for p in a)
    small = [p for p in a if p.ram_cap == 128 << 20]
    assert all(p.batch_size == 4 for p in small) and all(p.settings()["ram-cap"] for p in a)
    assert draw(7, 3, np.random.default_rng(0)).tolist() == [7, 7, 7]
    with pytest.raises(ConfigError, match="distribution"):
        draw({"dist": "zipf"}, 3, np.random.default_rng(0))


SMALL = """
name = "small"
seed = 1
rounds = 6
algorithms = ["local", "fedavg", "fedper"]
""" + synthetic_images(16, (3, 8, 8), samples=60, noise=6.0) + mlp((3, 8, 8), hidden=32) + """
[train]
lr = 0.05
batch-size = 8
local-epochs = 2

[server]
fraction-train = 1.0

[fleet]
ram-cap = {dist = "choice", values = ["24MiB", "96MiB", "1GiB"], weights = [0.15, 0.25, 0.6]}
"""


@pytest.mark.skipif(not __import__("importlib").util.find_spec("flwr"),
                    reason="needs flwr (pip install .[flower])")
def test_simulate_end_to_end(tmp_path, capsys):
    from experiments.simulate import main

    cfg = tmp_path / "small.toml"
    cfg.write_text(SMALL)
    out = tmp_path / "out"
    assert main([str(cfg), "--out", str(out), "--quiet"]) == 0
    for f in ("metrics.jsonl", "summary.json", "report.md"):
        assert os.path.getsize(out / f) > 0
    summary = json.loads((out / "summary.json").read_text())
    algos = summary["algorithms"]
    assert list(algos) == ["local", "fedavg", "fedper"]
    # devices with a 24 MiB cap cannot run the runtime at all (a numpy-kernel process is
    # ~33 MiB): reported, never trained
    tiny = {d["device"] for d in summary["devices"] if d["ram_cap"] == 24 << 20}
    assert tiny and set(algos["fedavg"]["devices_unable_to_train"]) == tiny
    assert all(d["peak_rss"] > 0 for d in summary["devices"])
    # 96 MiB devices cannot hold numba's fixed cost: they train with the numpy kernels
    small = [d for d in summary["devices"] if d["ram_cap"] == 96 << 20]
    assert small and all(d["kernels"] == "numpy" and d["trained"] for d in small), small
    assert all(d["peak_rss"] <= 96 << 20 for d in small)
    from experiments.fleet.kernels import numba_available
    big = {d["kernels"] for d in summary["devices"] if d["ram_cap"] == 1 << 30}
    assert big == {"numba" if numba_available() else "numpy"}
    # strong label skew (2 classes per device): a personal head beats one global model
    per, avg = algos["fedper"], algos["fedavg"]
    key = "final_accuracy_trained_devices"
    assert per[key]["mean"] > avg[key]["mean"]
    assert per["vs_fedavg_trained_devices"]["better"] > 0.5
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["phase"] for r in rows} == {"train", "evaluate", "final"}
    assert "fedper" in capsys.readouterr().out
    # same seed, same numbers
    out2 = tmp_path / "out2"
    assert main([str(cfg), "--out", str(out2), "--quiet", "--algorithm", "fedper"]) == 0
    again = json.loads((out2 / "summary.json").read_text())["algorithms"]["fedper"]
    assert again["final_accuracy_by_device"] == per["final_accuracy_by_device"]


def test_simulate_rejects_bad_input(tmp_path, capsys):
    from experiments.simulate import main

    assert main([str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["--algorithm", "nope", "--quiet"]) == 2
    assert "unknown algorithm" in capsys.readouterr().err
