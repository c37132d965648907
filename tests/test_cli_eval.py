"""``nnfleet eval`` and ``predict`` on weights that ``train --save`` wrote, and a command line
that explains itself (usage with no arguments, --version, bench --help)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

import device_runtime as dr
from device_runtime.data import synthetic_classification
from tests.test_cli import ROOT, assert_one_line_error, run


def _nnfleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_eval_and_predict_agree_with_the_python_api(tmp_path):
    x, y = synthetic_classification((3, 32, 32), 10, 48, seed=4)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    t = run("train", "lenet5", "--data", str(tmp_path / "d.npz"), "--steps", "3",
            "--batch-size", "16", "--save", str(tmp_path / "w.npz"))
    assert t.returncode == 0, t.stderr
    # the same weights through the Python API: the reference numbers
    m = dr.build("lenet5")
    m.load_weights(str(tmp_path / "w.npz"))
    m.compile(batch_size=16, optimizer="sgd", lr=0.01)
    want = m.evaluate(x, y, batch_size=16)
    probs = m.predict(x, batch_size=16).reshape(len(x), -1)
    e = run("eval", "lenet5", "--weights", str(tmp_path / "w.npz"), "--data",
            str(tmp_path / "d.npz"), "--batch-size", "16", "--json")
    assert e.returncode == 0, e.stderr
    got = json.loads(e.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-6)
    assert got["accuracy"] == want["accuracy"]
    conf = np.array(got["confusion_matrix"])
    assert conf.shape == (10, 10) and conf.sum() == len(x)
    assert np.trace(conf) == round(want["accuracy"] * len(x))
    assert np.array_equal(conf.sum(axis=1), np.bincount(y, minlength=10))
    p = run("predict", "lenet5", "--weights", str(tmp_path / "w.npz"), "--data",
            str(tmp_path / "d.npz"), "--out", str(tmp_path / "p.npy"))
    assert p.returncode == 0, p.stderr
    out = np.load(tmp_path / "p.npy")
    assert out.shape == (len(x), 10)  # one row per sample, not (N, 1, 1, 10)
    np.testing.assert_allclose(out, probs, rtol=1e-6, atol=1e-7)
    c = run("predict", "lenet5", "--weights", str(tmp_path / "w.npz"), "--data",
            str(tmp_path / "d.npz"), "--out", str(tmp_path / "c.npy"), "--class-ids")
    assert c.returncode == 0, c.stderr
    assert np.array_equal(np.load(tmp_path / "c.npy"), probs.argmax(axis=1))
    # bad input: one line, nothing written
    np.savez(tmp_path / "nox.npz", y=y)
    bad = run("predict", "lenet5", "--weights", str(tmp_path / "w.npz"), "--data",
              str(tmp_path / "nox.npz"), "--out", str(tmp_path / "bad.npy"))
    assert_one_line_error(bad, "needs arrays x")
    assert not (tmp_path / "bad.npy").exists()


def test_the_command_line_explains_itself():
    bare = _nnfleet()
    assert bare.returncode == 0 and "usage: nnfleet" in bare.stdout
    for cmd in ("plan", "train", "eval", "predict", "simulate", "bench"):
        assert cmd in bare.stdout
    v = _nnfleet("--version")
    assert v.returncode == 0 and v.stdout.startswith("nnfleet ")
    b = _nnfleet("bench", "--help")
    assert b.returncode == 0 and all(w in b.stdout for w in ("memory", "swap", "fleet", "soak"))
    t = _nnfleet("train", "--help")
    assert "(default: 1024)" in t.stdout and "example" in t.stdout
