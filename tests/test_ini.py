"""The INI reader: syntax, sections, graph features, data sets, backbones, errors."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from device_runtime import DataError, ModelError
from device_runtime.ini import read_ini
from device_runtime.ini_schedules import PeriodicCosineSchedule, PiecewiseSchedule
from tests.helpers import GradCapture, loss_and_grads


def _write(folder, name: str, text: str) -> str:
    path = os.path.join(str(folder), name)
    with open(path, "w") as f:
        f.write(text)
    return path


MLP = """
# a comment line
[model]
TYPE = NeuralNetwork\t# tabs and inline comments
Epochs = 3
LOSS = cross  ; another comment style
Batch_Size = 4
Save_Path = "out/model.bin"   # quoted value

[OPTIMIZER]
Type = Adam
Learning_Rate = 1e-3
beta1 = 0.8
Epsilon = 1e-7

[In]
Type = input
Input_Shape = 1:1:6

[fc1]
Type = fully_connected
Unit = 5
Activation = Relu
bias_initializer = "zeros"   # the # in a comment

[out]
type = Fully_Connected
input_layers = FC1
unit = 3
activation = softmax
"""


def test_sections_keys_comments_quotes_and_defaults(tmp_path):
    # Prepare
    path = _write(tmp_path, "mlp.ini", MLP)
    # Execute
    ini = read_ini(path)
    m = ini.build(seed=0)
    # Assert
    assert (ini.batch_size, ini.epochs, ini.optimizer) == (4, 3, "adam")
    assert ini.optimizer_kwargs["lr"] == 1e-3 and ini.optimizer_kwargs["beta1"] == 0.8
    assert ini.optimizer_kwargs["epsilon"] == 1e-7
    assert ini.save_path == os.path.join(str(tmp_path), "out", "model.bin")
    assert [s.name for s in ini.layers] == ["In", "fc1", "out"]
    assert ini.layers[1].props["bias_initializer"] == "zeros"
    assert m.loss_name == "cross_softmax" and m.folded_activation == "softmax"
    assert np.all(m.get_weights()["fc1:bias"] == 0)
    assert m.input_shape == (1, 1, 6) and m.output_shape == (1, 1, 3)


def test_loss_cross_after_sigmoid_is_sigmoid_cross_entropy(tmp_path):
    text = MLP.replace("activation = softmax", "activation = sigmoid")
    assert read_ini(_write(tmp_path, "m.ini", text)).build().loss_name == "cross_sigmoid"


def test_graph_features_split_indices_previous_section_flatten_trainable(tmp_path):
    path = _write(tmp_path, "g.ini", """
[Model]
loss = mse
[input]
type = input
input_shape = 1:1:2
[split]
type = split
axis = 3
[a]
type = embedding
input_layers = split(0)
in_dim = 4
out_dim = 3
[b]
type = embedding
input_layers = split(1)
in_dim = 5
out_dim = 3
trainable = false
[cat]
type = concat
input_layers = a, b
flatten = true
[head]
type = fully_connected
unit = 1
""")
    m = read_ini(path).build()
    m.compile(batch_size=2, optimizer=GradCapture())
    ex = m.train_executor
    nodes = {n.name: n for n in ex.graph.nodes}
    assert nodes["a"].inputs == [("split", 0)] and nodes["b"].inputs == [("split", 1)]
    assert nodes["head"].inputs == [("cat/flatten_realized", 0)]  # previous section
    assert not m.weights.params["b:weight"].trainable
    _, grads = loss_and_grads(m, np.array([[0, 4], [3, 1]], np.float32),
                              np.ones((2, 1), np.float32))
    assert set(grads) == {"a:weight", "head:weight", "head:bias"}


def test_l2_regularizer_adds_c_times_w_to_the_weight_gradient(tmp_path):
    text = MLP.replace("bias_initializer = \"zeros\"",
                       "weight_regularizer = l2norm\nweight_regularizer_constant = 0.5")
    plain, reg = (read_ini(_write(tmp_path, f"{n}.ini", t)).build(seed=0)
                  for n, t in (("p", MLP.replace('bias_initializer = "zeros"', "")), ("r", text)))
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    grads = []
    for m in (plain, reg):
        m.compile(batch_size=4, optimizer=GradCapture())
        grads.append(loss_and_grads(m, x, y)[1])
    w = reg.get_weights()["fc1:weight"].reshape(-1)
    np.testing.assert_allclose(grads[1]["fc1:weight"], grads[0]["fc1:weight"] + 0.5 * w, rtol=1e-6)
    np.testing.assert_array_equal(grads[1]["fc1:bias"], grads[0]["fc1:bias"])  # not biases
    np.testing.assert_array_equal(grads[1]["out:weight"], grads[0]["out:weight"])


@pytest.mark.parametrize("text,lr,check", [
    ("type=constant\nlearning_rate=0.5", 0.5, lambda s: s(0.5, 10) == 0.5),
    ("type=exponential\nlearning_rate=1\ndecay_rate=0.5\ndecay_steps=2", 1.0,
     lambda s: math.isclose(s(1.0, 4), 0.25)),
    ("type=step\nlearning_rate=0.1,0.01,0.001\niteration=10,20", 0.1,
     lambda s: isinstance(s, PiecewiseSchedule) and (s(0.1, 10), s(0.1, 11), s(0.1, 99)) ==
     (0.1, 0.01, 0.001)),
    ("type=cosine\nmax_learning_rate=1\nmin_learning_rate=0\ndecay_steps=10", 1.0,
     lambda s: isinstance(s, PeriodicCosineSchedule) and math.isclose(s(1.0, 5), 0.5)
     and math.isclose(s(1.0, 10), 1.0)),
])
def test_learning_rate_schedulers(tmp_path, text, lr, check):
    ini = read_ini(_write(tmp_path, "s.ini", MLP + "\n[LearningRateScheduler]\n" + text))
    assert ini.optimizer_kwargs["lr"] == lr
    assert check(ini.optimizer_kwargs["schedule"])
    m = ini.build()
    m.compile(batch_size=4, optimizer=ini.optimizer, **ini.optimizer_kwargs)


def test_legacy_model_keys_set_the_optimizer_and_decay(tmp_path):
    ini = read_ini(_write(tmp_path, "l.ini", """
[Model]
Learning_rate = 0.01
Decay_rate = 0.5
Decay_steps = 10
Optimizer = sgd
beta1 = 0.9
[in]
type = input
input_shape = 3
[fc]
type = fully_connected
unit = 2
"""))
    kw = ini.optimizer_kwargs
    assert ini.optimizer == "sgd" and kw["lr"] == 0.01 and "beta1" not in kw
    assert kw["schedule"].kind == "exponential" and kw["schedule"].decay_steps == 10


def _records(path: str, n: int, fin: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, fin)).astype(np.float32)
    ids = rng.integers(0, k, n)
    np.concatenate([x, np.eye(k, dtype=np.float32)[ids]], axis=1).tofile(path)
    return x, ids


def test_file_data_sets_resolve_relative_paths_and_read_records(tmp_path):
    os.makedirs(tmp_path / "data")
    x, ids = _records(str(tmp_path / "data" / "train.dat"), 10, 6, 3)
    sets = ("\n[train_set]\ntype = file\npath = data/train.dat\n"
            "[valid_set]\npath = data/missing.dat\n")
    ini = read_ini(_write(tmp_path, "d.ini", MLP + sets))
    m = ini.build()
    xs, ys = ini.load_data("train", m)
    np.testing.assert_array_equal(xs.reshape(10, 6), x)
    np.testing.assert_array_equal(ys, ids)  # one-hot rows become class ids
    with pytest.raises(DataError, match=r"\[valid_set\] path = data/missing.dat: data file not"):
        ini.load_data("valid", m)
    with pytest.raises(DataError, match="no test data set"):
        ini.load_data("test", m)
    (tmp_path / "data" / "train.dat").write_bytes(b"\0" * 12)
    with pytest.raises(DataError, match="whole number of records"):
        ini.load_data("train", m)


def test_legacy_dataset_section(tmp_path):
    _records(str(tmp_path / "t.dat"), 4, 6, 3)
    ini = read_ini(_write(tmp_path, "d.ini", MLP + '\n[DataSet]\nBufferSize=10\nTrainData="t.dat"\n'
                          'ValidData="t.dat"\nLabelData="label.dat"\n'))
    assert set(ini.datasets) == {"train", "valid"}
    assert ini.load_data("valid", ini.build())[0].shape == (4, 1, 1, 6)


BACKBONE = """
[fc0]
type = fully_connected
input_shape = 1:1:6
unit = 4
[act]
type = activation
activation = tanh
"""


@pytest.mark.parametrize("trainable", [None, "true"])
def test_ini_backbone_is_spliced_in_and_frozen_by_default(tmp_path, trainable):
    _write(tmp_path, "bb.ini", BACKBONE)
    extra = f"trainable = {trainable}\n" if trainable else ""
    path = _write(tmp_path, "main.ini", f"""
[Model]
loss = cross
[in]
type = input
input_shape = 1:1:6
[base]
backbone = bb.ini
{extra}
[head]
type = fully_connected
input_layers = base
unit = 3
""")
    m = read_ini(path).build()
    assert [s.name for s in m.specs] == ["in", "base/fc0", "base/act", "head"]
    assert m.weights.params["base/fc0:weight"].trainable == (trainable == "true")
    m.compile(batch_size=2, optimizer="sgd")
    m.fit(np.zeros((2, 6), np.float32), np.array([0, 1]), steps=1)


def test_backbone_as_the_whole_model_with_an_empty_section_name(tmp_path):
    _write(tmp_path, "bb.ini", BACKBONE)
    m = read_ini(_write(tmp_path, "m.ini", '[]\nbackbone="bb.ini"\ninput_shape=1:1:6\n')).build()
    assert m.input_shape == (1, 1, 6) and [s.type for s in m.specs][0] == "input"


@pytest.mark.parametrize("backbone,msg", [
    ("net.tflite", r"\[MobileNet\] backbone = net.tflite: .tflite backbones are not supported"),
    ("absent.ini", r"\[MobileNet\] backbone = absent.ini: backbone file not found"),
    ("m.ini", "backbones include each other"),
])
def test_unsupported_or_missing_backbones_fail_in_one_line(tmp_path, backbone, msg):
    path = _write(tmp_path, "m.ini", f"[MobileNet]\nbackbone = {backbone}\ninput_shape = 3:8:8\n")
    with pytest.raises(ModelError, match=msg) as e:
        read_ini(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text,msg", [
    ("[a]\ntype=input\ninput_shape=3\n[A]\ntype=fully_connected\nunit=2\n",
     r"m.ini:4: section \[A\] already appears on line 1"),
    ("[a]\ntype=input\nTYPE=input\n", r"m.ini:3: \[a\] sets 'type' twice"),
    ("unit = 3\n", "comes before any"),
    ("[a]\ntype=input\njust words\n", "expected 'key = value'"),
    ("[Model]\nwhatever = 1\n[a]\ntype=input\ninput_shape=3\n", r"\[Model\] key 'whatever'"),
    ("[a]\ntype=input\ninput_shape=3\n[b]\ntype=fancy\n",
     r"\[b\] layer 'b': unknown layer type 'fancy'"),
    ("[a]\ntype=input\ninput_shape=3\n[b]\ntype=fully_connected\nunits=3\n",
     r"\[b\] layer 'b' \(fully_connected\): unknown property 'units'"),
    ("[Optimizer]\ntype=rmsprop\n[a]\ntype=input\ninput_shape=3\n", "optimizer 'rmsprop'"),
    ("[LearningRateScheduler]\ntype=linear\n[a]\ntype=input\ninput_shape=3\n", "type = linear"),
    ("[Model]\nbatch_size = lots\n", r"\[Model\] batch_size = 'lots' is not a number"),
    ("[train_set]\ntype=generator\n", "type = generator is not supported"),
    ("[Model]\nloss=mse\n", "no layer sections"),
])
def test_errors_name_the_file_line_section_and_key(tmp_path, text, msg):
    with pytest.raises(ModelError, match=msg) as e:
        read_ini(_write(tmp_path, "m.ini", text))
    assert "\n" not in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        read_ini(str(tmp_path / "nope.ini"))
