"""Validation during ``nnfleet train`` (``--valid-data``, ``--valid-split``): the split is
fixed by the seed and disjoint from what trains, validation changes no training number,
and under a RAM cap it runs inside the guarded window and fits beside the step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from device_runtime.cli import main
from device_runtime.cli_valid import split_indices
from device_runtime.data import synthetic_classification
from tests.test_cli import last_json, run

# conv + batch norm + dropout: every layer whose inference mode differs from training
NET = json.dumps([
    {"type": "input", "name": "in", "input_shape": "1:8:8"},
    {"type": "conv2d", "name": "conv", "filters": 4, "kernel_size": 3},
    {"type": "batch_normalization", "name": "bn", "activation": "relu"},
    {"type": "pooling2d", "name": "pool", "pooling": "max", "pool_size": 2, "stride": 2,
     "flatten": True},
    {"type": "dropout", "name": "drop", "dropout_rate": 0.3},
    {"type": "fully_connected", "name": "fc", "unit": 3},
])


def test_split_is_disjoint_complete_and_fixed_by_the_seed():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 500))
        frac = float(rng.uniform(0.001, 0.999))
        seed = int(rng.integers(0, 2**31))
        tr, va = split_indices(n, frac, seed)
        assert len(np.intersect1d(tr, va)) == 0
        assert np.array_equal(np.union1d(tr, va), np.arange(n))
        assert np.all(np.diff(tr) > 0) and np.all(np.diff(va) > 0)  # file order kept
        assert len(va) == min(n - 1, max(1, round(frac * n)))
        tr2, va2 = split_indices(n, frac, seed)
        assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    # another seed holds out other samples (1000 choose 100: equal only by a bug)
    assert not np.array_equal(split_indices(1000, 0.1, 1)[1], split_indices(1000, 0.1, 2)[1])


def _train(capsys, *args: str) -> dict:
    assert main(["train", NET, "--json", *args]) == 0
    return last_json(capsys.readouterr().out)


def test_validation_changes_no_training_number(tmp_path, capsys):
    # Prepare
    x, y = synthetic_classification((1, 8, 8), 3, 90, seed=5)
    np.savez(tmp_path / "all.npz", x=x, y=y)
    tr, va = split_indices(90, 0.2, 7)
    np.savez(tmp_path / "train.npz", x=x[tr], y=y[tr])
    np.savez(tmp_path / "valid.npz", x=x[va], y=y[va])
    common = ["--seed", "7", "--epochs", "3", "--batch-size", "8", "--lr", "0.05"]
    # Execute: the split on the command line; the same split as two files; no validation
    split = _train(capsys, "--data", str(tmp_path / "all.npz"), "--valid-split", "0.2",
                   "--save", str(tmp_path / "a.npz"), *common)
    files = _train(capsys, "--data", str(tmp_path / "train.npz"), "--valid-data",
                   str(tmp_path / "valid.npz"), "--save", str(tmp_path / "b.npz"), *common)
    plain = _train(capsys, "--data", str(tmp_path / "train.npz"),
                   "--save", str(tmp_path / "c.npz"), *common)
    # Assert: bit-identical weights and losses, whatever validation did
    a, b, c = (np.load(tmp_path / f"{k}.npz") for k in "abc")
    assert sorted(a.files) == sorted(c.files)
    for k in c.files:
        assert np.array_equal(a[k], c[k]) and np.array_equal(b[k], c[k]), k
    assert split["losses"] == plain["losses"] == files["losses"]
    assert "epochs" not in plain
    assert split["epochs"] == files["epochs"] and split["valid_samples"] == len(va) == 18
    recs = split["epochs"]
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    per = len(tr) // 8
    for i, r in enumerate(recs):  # the epoch's mean training loss
        assert r["steps"] == per * (i + 1)
        np.testing.assert_allclose(r["train_loss"], np.mean(plain["losses"][i * per:(i + 1) * per]))
    # the last epoch's validation is the final weights evaluated on the held-out samples
    assert main(["eval", NET, "--weights", str(tmp_path / "c.npz"), "--data",
                 str(tmp_path / "valid.npz"), "--json"]) == 0
    ev = last_json(capsys.readouterr().out)
    np.testing.assert_allclose(recs[-1]["valid_loss"], ev["loss"], rtol=1e-6)
    assert recs[-1]["valid_accuracy"] == ev["accuracy"]
    # text output: one line per epoch
    assert main(["train", NET, "--data", str(tmp_path / "all.npz"), "--valid-split", "0.2",
                 *common]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch")]
    assert len(lines) == 3 and "valid loss" in lines[0] and "valid accuracy" in lines[0]


def test_steps_that_end_inside_an_epoch_validate_at_the_end(tmp_path, capsys):
    x, y = synthetic_classification((1, 8, 8), 3, 40, seed=1)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = _train(capsys, "--data", str(tmp_path / "d.npz"), "--valid-split", "0.25",
                 "--steps", "7", "--batch-size", "10")  # 3 steps an epoch: 3, 6, then 7
    assert [r["steps"] for r in out["epochs"]] == [3, 6, 7]


def test_validation_under_a_ram_cap_stays_in_the_window(tmp_path):
    x, y = synthetic_classification((3, 32, 32), 10, 120, seed=2)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    cap = 400 * 2**20
    p = run("train", "lenet5", "--data", str(tmp_path / "d.npz"), "--valid-split", "0.25",
            "--epochs", "2", "--batch-size", "16", "--ram-cap", str(cap), "--json")
    assert p.returncode == 0, p.stderr
    out = last_json(p.stdout)
    assert len(out["epochs"]) == 2 and out["valid_samples"] == 30
    assert 1 <= out["valid_batch_size"] <= 16
    assert not out["cap_exceeded"] and out["peak_rss_bytes"] <= cap


def test_validation_batch_fits_the_room_or_is_refused(capsys):
    from device_runtime.cli_valid import make
    from device_runtime.errors import MemoryCapExceeded
    from device_runtime.models import build

    m = build("lenet5")
    x, y = synthetic_classification((3, 32, 32), 10, 50, seed=3)
    m.compile(batch_size=32, optimizer="sgd", lr=0.01, ram_cap=1 << 30)
    v = make(m, x, y, per_epoch=1, total=1, quiet=True)
    assert v is not None
    needs = {b: v.need(b) for b in (32, 16, 8, 4, 2, 1)}
    assert all(needs[b] > needs[b // 2] for b in (32, 16, 8, 4, 2))  # pools grow with batch
    assert v.pick_batch(32, None) == 32
    assert v.pick_batch(32, needs[32]) == 32
    assert v.pick_batch(32, needs[32] - 1) == 16
    assert v.pick_batch(32, needs[4]) == 4
    with pytest.raises(MemoryCapExceeded, match="validation does not fit"):
        v.pick_batch(32, needs[1] - 1)


def test_bad_validation_input_is_one_line(tmp_path, capsys):
    x, y = synthetic_classification((1, 8, 8), 3, 30, seed=1)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    np.savez(tmp_path / "wide.npz", x=np.zeros((5, 65), np.float32), y=np.zeros(5, np.int64))
    d = str(tmp_path / "d.npz")
    cases = [(["mlp", "--data", d, "--valid-split", "1"], ["--valid-split", "between 0 and 1"]),
             ([NET, "--data", d, "--valid-split", "0.1", "--valid-data", d], ["not both"]),
             ([NET, "--data", d, "--valid-data", str(tmp_path / "wide.npz")], ["valid x", "65"]),
             ([NET, "--data", d, "--valid-data", str(tmp_path / "none.npz")], ["none.npz"])]
    for args, needles in cases:
        assert main(["train", *args]) != 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("nnfleet: error:"), err
        assert all(n in err for n in needles), err



def test_an_ini_valid_set_is_used(tmp_path, capsys):
    # Prepare: NNTrainer's raw records (features, then the one-hot label), train and valid
    x, y = synthetic_classification((1, 1, 12), 4, 40, seed=6)
    for name, rows in (("train", slice(0, 32)), ("valid", slice(32, 40))):
        rec = np.concatenate([x[rows].reshape(-1, 12), np.eye(4, dtype=np.float32)[y[rows]]], 1)
        rec.astype(np.float32).tofile(tmp_path / f"{name}.dat")
    np.savez(tmp_path / "valid.npz", x=x[32:], y=y[32:])
    ini = tmp_path / "m.ini"
    ini.write_text("[Model]\nLoss = cross\nbatch_size = 8\nEpochs = 2\n"
                   "[Optimizer]\nType = sgd\nLearning_rate = 0.1\n"
                   "[train_set]\ntype = file\npath = train.dat\n"
                   "[valid_set]\ntype = file\npath = valid.dat\n"
                   "[in]\nType = input\nInput_Shape = 1:1:12\n"
                   "[out]\nType = fully_connected\nUnit = 4\nActivation = softmax\n")
    # Execute: the INI's own sets; then the same validation set given as a file
    assert main(["train", str(ini), "--json"]) == 0
    own = last_json(capsys.readouterr().out)
    assert main(["train", str(ini), "--valid-data", str(tmp_path / "valid.npz"), "--json"]) == 0
    given = last_json(capsys.readouterr().out)
    # Assert
    assert own["valid_samples"] == 8 and len(own["epochs"]) == 2
    assert own["epochs"] == given["epochs"] and own["losses"] == given["losses"]
