"""The command-line contract (DESIGN.md), run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, SHARED_INI


def run(*args: str, cwd: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable, "-m", "device_runtime", *args], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=env, timeout=300)


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode != 0, p.stdout
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("nnfleet: error:"), lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


def test_plan_json_fields():
    p = run("plan", "lenet5", "--batch-size", "16", "--json")
    assert p.returncode == 0, p.stderr
    d = last_json(p.stdout)
    for k in ("pool_bytes", "naive_bytes", "lower_bound_bytes", "weight_bytes", "tensors"):
        assert k in d
    assert d["lower_bound_bytes"] <= d["pool_bytes"] <= d["naive_bytes"]
    t = d["tensors"][0]
    assert {"name", "bytes", "interval", "offset"} <= set(t)
    # weights of lenet5 counted by hand: conv1 6*3*5*5+6, conv2 16*6*5*5+16,
    # fc1 400*120+120, fc2 120*84+84, fc3 84*10+10
    n = 456 + 2416 + 48120 + 10164 + 850
    assert d["weight_bytes"] == 4 * n


def test_train_json_and_save(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 784)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    p = run("train", "mlp", "--data", str(tmp_path / "d.npz"), "--steps", "4", "--batch-size", "16",
            "--optimizer", "adam", "--lr", "0.001", "--no-shuffle",
            "--save", str(tmp_path / "w.npz"),
            "--json")
    assert p.returncode == 0, p.stderr
    d = last_json(p.stdout)
    assert len(d["losses"]) == 4 and all(np.isfinite(d["losses"]))
    for k in ("pool_bytes", "baseline_rss_bytes", "peak_rss_bytes", "step_seconds_median"):
        assert d[k] > 0
    assert d["peak_rss_bytes"] >= d["baseline_rss_bytes"] - 4096
    w = np.load(tmp_path / "w.npz")
    assert w["fc1:weight"].shape == (784, 256)
    # --init with the saved weights and no shuffle: same first loss as a Python run from them
    p2 = run("train", "mlp", "--data", str(tmp_path / "d.npz"), "--steps", "1",
             "--batch-size", "16",
             "--init", str(tmp_path / "w.npz"), "--no-shuffle", "--json")
    import device_runtime as dr
    m = dr.build("mlp")
    m.load_weights(str(tmp_path / "w.npz"))
    m.compile(batch_size=16, optimizer="sgd", lr=0.01)
    h = m.fit(x, y, steps=1, shuffle=False)
    assert last_json(p2.stdout)["losses"][0] == pytest.approx(h.losses[0], rel=1e-6)


def test_train_ini_model(tmp_path):
    ini = tmp_path / "m.ini"
    ini.write_text("""
[Model]
Type = NeuralNetwork   # comment
Loss = cross
batch_size = 8
Epochs = 2
[Optimizer]
Type = sgd
Learning_rate = 0.1
[in]
Type = input
Input_Shape = 1:1:12
[fc1]
Type = fully_connected
Unit = 16
Activation = relu
[out]
Type = fully_connected
Unit = 4
Activation = softmax
""")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(32, 1, 1, 12)).astype(np.float32),
             y=rng.integers(0, 4, 32))
    p = run("train", str(ini), "--data", str(tmp_path / "d.npz"), "--json")
    assert p.returncode == 0, p.stderr
    d = last_json(p.stdout)
    assert d["batch_size"] == 8 and d["steps"] == 8  # 2 epochs x 32/8 from the INI


BAD_INI = {
    "malformed": ("[Model\nType = x\n", "not a valid INI"),
    "unknown_layer": ("[in]\nType = input\nInput_Shape = 4\n[x]\nType = frobnicate\n",
                      "frobnicate"),
    "shape_mismatch": ("[in]\nType = input\nInput_Shape = 1:4:4\n[a]\nType = conv2d\nfilters = 2\n"
                       "kernel_size = 3\npadding = same\n[b]\nType = conv2d\nfilters = 3\n"
                       "kernel_size = 3\npadding = same\ninput_layers = in\n"
                       "[add]\nType = addition\ninput_layers = a, b\n", "one shape"),
    "bad_property": ("[in]\nType = input\nInput_Shape = 4\n[fc]\nType = fully_connected\n"
                     "unit = many\n", "unit"),
    "unknown_input": ("[in]\nType = input\nInput_Shape = 4\n[fc]\nType = fully_connected\n"
                      "unit = 3\ninput_layers = nowhere\n", "nowhere"),
    "kernel_too_big": ("[in]\nType = input\nInput_Shape = 1:2:2\n[c]\nType = conv2d\nfilters = 2\n"
                       "kernel_size = 5\n", "does not fit"),
}


@pytest.mark.parametrize("case", sorted(BAD_INI))
def test_bad_model_files(tmp_path, case):
    text, needle = BAD_INI[case]
    path = tmp_path / f"{case}.ini"
    path.write_text(text)
    assert_one_line_error(run("plan", str(path)), needle)


def test_bad_data_and_values(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "wrong.npz", x=rng.normal(size=(16, 100)).astype(np.float32),
             y=rng.integers(0, 10, 16))
    assert_one_line_error(run("train", "mlp", "--data", str(tmp_path / "wrong.npz")), "784")
    np.savez(tmp_path / "nolabels.npz", x=rng.normal(size=(16, 784)).astype(np.float32))
    assert_one_line_error(run("train", "mlp", "--data", str(tmp_path / "nolabels.npz")), "'y'")
    np.savez(tmp_path / "badlab.npz", x=rng.normal(size=(16, 784)).astype(np.float32),
             y=np.full(16, 12))
    assert_one_line_error(run("train", "mlp", "--data", str(tmp_path / "badlab.npz"),
                              "--batch-size", "8"), "class ids")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    assert_one_line_error(run("train", "mlp", "--data", str(tmp_path / "garbage.npz")),
                          "garbage.npz")
    assert_one_line_error(run("train", "mlp", "--data", str(tmp_path / "missing.npz")), "not found")
    assert_one_line_error(run("train", "mlp", "--optimizer", "rmsprop"), "rmsprop")
    assert_one_line_error(run("train", "mlp", "--lr", "-1"), "--lr")
    assert_one_line_error(run("train", "mlp", "--epochs", "1", "--steps", "2"), "not both")
    assert_one_line_error(run("plan", "nosuchmodel"), "nosuchmodel")
    assert_one_line_error(run("plan", "mlp", "--planner", "magic"), "magic")


def test_bad_weights_file_loses_nothing(tmp_path):
    np.savez(tmp_path / "w.npz", **{"fc1:weight": np.zeros((3, 3), np.float32)})
    assert_one_line_error(run("train", "mlp", "--init", str(tmp_path / "w.npz")), "fc1:weight")
    # a failing run never leaves a half-written --save file
    out = tmp_path / "out.npz"
    assert_one_line_error(run("train", "mlp", "--init", str(tmp_path / "w.npz"),
                              "--save", str(out)),
                          "fc1:weight")
    assert not out.exists()


@pytest.mark.skipif(not os.path.isdir(SHARED_INI), reason="shared/nntrainer-ini not present")
def test_plan_nntrainer_mnist_ini():
    p = run("plan", os.path.join(SHARED_INI, "MNIST_mnist.ini"), "--json")
    assert p.returncode == 0, p.stderr
    d = last_json(p.stdout)
    assert d["batch_size"] == 32 and d["pool_bytes"] <= 1.05 * d["lower_bound_bytes"]


def test_divergence_and_freezing_everything_are_errors_that_save_nothing(tmp_path):
    out = tmp_path / "w.npz"
    p = run("train", "mlp", "--lr", "1e30", "--steps", "20", "--save", str(out))
    assert p.returncode == 4, p.stderr
    assert_one_line_error(p, "diverged", "nothing saved")
    assert not out.exists()
    p = run("train", "lenet5", "--freeze", "fc3", "--steps", "2", "--save", str(out))
    assert_one_line_error(p, "--freeze fc3", "nothing is left to train")
    assert p.returncode == 2 and not out.exists()
