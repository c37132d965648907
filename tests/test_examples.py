"""The files of ``examples/`` as a user runs them: the data makers write what they say, and
every INI model trains on their data, evaluates and predicts (in a temporary folder)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from device_runtime.cli import main
from tests.conftest import ROOT
from tests.test_cli import last_json

EX = os.path.join(ROOT, "examples")


def _make(script: str, cwd, *args: str) -> str:
    p = subprocess.run([sys.executable, os.path.join(EX, script), *args], cwd=cwd,
                       capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("examples")
    _make("make_blobs_npz.py", d, "--out", "data")
    _make("make_images_npz.py", d, "--out", "data")
    return d


def test_data_makers_are_seeded_and_shaped(data, tmp_path):
    tr, te = (np.load(data / "data" / f"blobs_{k}.npz") for k in ("train", "test"))
    assert tr["x"].shape == (600, 20) and tr["x"].dtype == np.float32
    assert tr["y"].dtype == np.int64 and set(np.unique(tr["y"])) == {0, 1, 2, 3}
    assert te["x"].shape == (200, 20)
    im = np.load(data / "data" / "images_train.npz")
    assert im["x"].shape == (512, 1, 12, 12) and set(np.unique(im["y"])) == {0, 1, 2, 3}
    # a fixed seed: the same bytes again; another seed: other samples
    _make("make_blobs_npz.py", tmp_path, "--out", "a")
    _make("make_blobs_npz.py", tmp_path, "--out", "b", "--seed", "1")
    again, other = np.load(tmp_path / "a" / "blobs_train.npz"), np.load(tmp_path / "b" /
                                                                        "blobs_train.npz")
    assert np.array_equal(again["x"], tr["x"]) and np.array_equal(again["y"], tr["y"])
    assert not np.array_equal(other["x"], tr["x"])
    assert not any(n.endswith(".tmp.npz") for n in os.listdir(tmp_path / "a"))


def _nearest_centroid(train: str, test: str) -> float:
    """Test accuracy of the nearest class mean: an independent reference for the blobs."""
    tr, te = np.load(train), np.load(test)
    means = np.stack([tr["x"][tr["y"] == k].mean(axis=0) for k in range(4)])
    d = ((te["x"][:, None, :] - means[None]) ** 2).sum(axis=2)
    return float(np.mean(d.argmin(axis=1) == te["y"]))


@pytest.mark.parametrize("ini, kind, least", [("mlp.ini", "blobs", None),
                                              ("cnn.ini", "images", 0.85),
                                              ("cnn_bn.ini", "images", 0.8)])
def test_example_models_train_eval_and_predict(data, ini, kind, least, capsys):
    model = os.path.join(EX, ini)
    w = str(data / f"{ini}.npz")
    train, test = (str(data / "data" / f"{kind}_{k}.npz") for k in ("train", "test"))
    assert main(["train", model, "--data", train, "--valid-split", "0.1", "--save", w,
                 "--json"]) == 0
    t = last_json(capsys.readouterr().out)
    assert len(t["epochs"]) >= 8 and t["valid_samples"] == round(0.1 * len(np.load(train)["y"]))
    assert main(["eval", model, "--weights", w, "--data", test, "--json"]) == 0
    ev = last_json(capsys.readouterr().out)
    if least is None:  # blobs: within 8 points of the nearest class mean (near Bayes here)
        least = _nearest_centroid(train, test) - 0.08
    assert ev["accuracy"] >= least, (ini, ev, least)  # chance is 0.25
    out = str(data / f"{ini}.npy")
    assert main(["predict", model, "--weights", w, "--data", test, "--out", out]) == 0
    p = np.load(out)
    y = np.load(test)["y"]
    assert p.shape == (len(y), 4)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)  # the INI's softmax
    assert np.mean(p.argmax(axis=1) == y) == pytest.approx(ev["accuracy"])


def test_fleet_folder_maker(tmp_path, capsys):
    from experiments.data import load_npz_dir

    _make("make_fleet_npz.py", tmp_path, "--out", "fleet", "--devices", "6")
    names = sorted(os.listdir(tmp_path / "fleet"))
    assert names == [f"device-{d:03d}.npz" for d in range(6)]
    files = load_npz_dir(str(tmp_path / "fleet"))
    assert len(files) == 6
    mixes = []
    for name in names:
        f = np.load(tmp_path / "fleet" / name)
        assert set(f.files) == {"x", "y", "x_test", "y_test"}
        assert f["x"].shape[1] == 20 and 40 <= len(f["y"]) + len(f["y_test"]) <= 120
        mixes.append(np.bincount(np.concatenate([f["y"], f["y_test"]]), minlength=4))
    # Dirichlet(0.5) label skew: the devices' label mixes differ
    assert len({tuple(m.argmax() for m in mixes)}) >= 1 and np.std([m / m.sum() for m in mixes],
                                                                   axis=0).max() > 0.1
    assert main(["train", os.path.join(EX, "mlp.ini"), "--data",
                 str(tmp_path / "fleet" / names[0]), "--epochs", "2", "--batch-size", "8",
                 "--json"]) == 0
    assert last_json(capsys.readouterr().out)["steps"] > 0
