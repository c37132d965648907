"""Built-in models sized for the user's data: ``--input-shape`` and ``--classes`` on
``train``, ``eval``, ``predict`` and ``plan`` (and the Python API's ``build``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import device_runtime as dr
from device_runtime.cli import main
from device_runtime.data import synthetic_classification
from tests.test_cli import last_json


def test_lenet5_on_1x20x20_inputs_with_4_classes(tmp_path, capsys):
    # Prepare: data of that shape, 4 classes
    x, y = synthetic_classification((1, 20, 20), 4, 64, seed=3)
    assert x.shape == (64, 1, 20, 20) and set(np.unique(y)) == {0, 1, 2, 3}
    np.savez(tmp_path / "d.npz", x=x, y=y)
    size = ["--input-shape", "1:20:20", "--classes", "4"]
    w = str(tmp_path / "w.npz")
    # Execute
    assert main(["train", "lenet5", *size, "--data", str(tmp_path / "d.npz"), "--epochs", "2",
                 "--batch-size", "16", "--lr", "0.05", "--save", w, "--json"]) == 0
    t = last_json(capsys.readouterr().out)
    assert main(["predict", "lenet5", *size, "--weights", w, "--data", str(tmp_path / "d.npz"),
                 "--out", str(tmp_path / "p.npy")]) == 0
    assert main(["eval", "lenet5", *size, "--weights", w, "--data", str(tmp_path / "d.npz"),
                 "--json"]) == 0
    ev = last_json(capsys.readouterr().out)
    # Assert: the shapes, and the same numbers as the Python API built the same way
    assert t["input_shape"] == [1, 20, 20] and t["outputs"] == 4
    assert t["losses"][-1] < t["losses"][0]
    ws = np.load(w)
    assert ws["conv1:weight"].shape == (6, 1, 5, 5) and ws["fc3:weight"].shape == (84, 4)
    m = dr.build("lenet5", classes=4, input_shape="1:20:20")
    m.load_weights(w)
    m.compile(batch_size=16)
    p = np.load(tmp_path / "p.npy")
    assert p.shape == (64, 4)
    np.testing.assert_allclose(p, m.predict(x).reshape(64, 4), rtol=1e-5, atol=1e-7)
    assert np.array(ev["confusion_matrix"]).shape == (4, 4)
    np.testing.assert_allclose(ev["loss"], m.evaluate(x, y)["loss"], rtol=1e-6)
    # the default-sized model cannot read these weights: a one-line error
    assert main(["predict", "lenet5", "--weights", w, "--data", str(tmp_path / "d.npz"),
                 "--out", str(tmp_path / "q.npy")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "q.npy").exists()


@pytest.mark.parametrize("model, shape, features", [
    ("mlp", "1:8:8", 64), ("mlp", "30", 30), ("resnet18", "3:8:8", None),
    ("alexnet", "1:16:16", None), ("vgg16", "2:32:32", None)])
def test_every_builtin_takes_a_shape(model, shape, features, capsys):
    assert main(["plan", model, "--input-shape", shape, "--classes", "7", "--json"]) == 0
    plan = last_json(capsys.readouterr().out)
    names = {t["name"].split(":")[0] for t in plan["tensors"]}
    assert names  # the plan lists its tensors
    m = dr.build(model, classes=7, input_shape=shape)
    assert m.output_shape[-1] == 7
    if features:  # the MLP reads the shape's element count as its features
        assert tuple(m.input_shape)[-1] == int(np.prod(m.input_shape)) == features
    else:
        assert tuple(m.input_shape) == tuple(int(d) for d in shape.split(":"))


def test_json_builtin_spec_and_options_agree(capsys):
    spec = json.dumps({"builtin": "mlp", "features": 12, "classes": 3})
    assert main(["plan", spec, "--json"]) == 0
    a = last_json(capsys.readouterr().out)
    assert main(["plan", "mlp", "--input-shape", "12", "--classes", "3", "--json"]) == 0
    b = last_json(capsys.readouterr().out)
    assert a["weight_bytes"] == b["weight_bytes"] == 4 * (12 * 256 + 256 + 256 * 128 + 128
                                                          + 128 * 3 + 3)


@pytest.mark.parametrize("args, needle", [
    (["lenet5", "--classes", "1"], "--classes: must be an integer in [2, 65536]"),
    (["lenet5", "--classes", "ten"], "--classes"),
    (["lenet5", "--input-shape", "3:32"], "C:H:W"),
    (["lenet5", "--input-shape", "1:x:8"], "C:H:W"),
    (["lenet5", "--input-shape", "1:0:8"], "each axis in [1,"),
    (["lenet5", "--input-shape", "1:8:8"], "lenet5 with input shape 1:8:8: layer 'conv2'"),
    (["vgg16", "--input-shape", "3:16:16"], "vgg16 with input shape 3:16:16"),
    (["mlp", "--input-shape", "4096:4096:4096"], "values per sample"),
    (["tests/data/none.ini", "--classes", "3"], "size a built-in model"),
    (['[{"type": "input", "name": "in", "input_shape": "4"}]', "--input-shape", "5"],
     "size a built-in model"),
])
def test_bad_sizes_are_one_line_errors(args, needle, capsys):
    assert main(["plan", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nnfleet: error:") and needle in err, err
