"""Checkpoints: exact resume, atomic writes, refusal of damaged or foreign files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from device_runtime import ConfigError, DataError, Model, layer
from device_runtime.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint

N, BATCH = 48, 8


def _specs() -> list:
    # dropout (a call counter), batch norm (running statistics) and an LSTM: every kind
    # of state a resume must carry
    return [layer("input", "in", input_shape="1:4:3"),
            layer("lstm", "lstm", unit=6, return_sequences=True),
            layer("fully_connected", "fc1", unit=8),
            layer("batch_normalization", "bn", activation="relu"),
            layer("dropout", "drop", dropout_rate=0.3, flatten=True),
            layer("fully_connected", "head", unit=3)]


def _model(opt: str = "adam") -> Model:
    m = Model(_specs(), loss="cross_softmax", seed=0)
    kw = {"lr": 1e-2} if opt == "adam" else {"lr": 0.05, "momentum": 0.9}
    return m.compile(batch_size=BATCH, optimizer=opt, **kw)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 1, 4, 3)).astype(np.float32), rng.integers(0, 3, N)


@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_resume_reproduces_training_bit_for_bit(tmp_path, opt):
    # Prepare: per-epoch shuffling from a per-epoch seed, so each epoch can be replayed
    x, y = _data()
    path = str(tmp_path / "run.ckpt")
    straight = _model(opt)
    for epoch in range(2):
        straight.fit(x, y, epochs=1, shuffle=True, seed=100 + epoch)
    # Execute: one epoch, save, a fresh model loads it and runs the second epoch
    first = _model(opt)
    first.fit(x, y, epochs=1, shuffle=True, seed=100)
    save_checkpoint(path, first, epoch=1, iteration=first.optimizer.iteration)
    resumed = _model(opt)
    epoch, iteration = load_checkpoint(path, resumed)
    resumed.fit(x, y, epochs=1, shuffle=True, seed=100 + epoch)
    # Assert
    assert (epoch, iteration) == (1, N // BATCH)
    assert resumed.optimizer.iteration == straight.optimizer.iteration == 2 * N // BATCH
    want, got = straight.get_weights(), resumed.get_weights()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_resume_without_shuffle_matches_two_epochs(tmp_path):
    x, y = _data()
    straight = _model()
    straight.fit(x, y, epochs=2, shuffle=False)
    first = _model()
    first.fit(x, y, epochs=1, shuffle=False)
    save_checkpoint(str(tmp_path / "c"), first, 1, first.optimizer.iteration)
    resumed = _model()
    load_checkpoint(str(tmp_path / "c"), resumed)
    resumed.fit(x, y, epochs=1, shuffle=False)
    for k, v in straight.get_weights().items():
        np.testing.assert_array_equal(resumed.get_weights()[k], v, err_msg=k)


def test_checkpoint_records_format_model_and_parameters(tmp_path):
    m = _model()
    save_checkpoint(str(tmp_path / "c"), m, epoch=3, iteration=17)
    header, arrays = read_checkpoint(str(tmp_path / "c"))
    assert header["format"] == 1 and header["model"] == "model"
    assert header["epoch"] == 3 and header["iteration"] == 17
    assert [k for k, _ in header["params"]] == list(m.weights.params)
    assert header["optimizer"]["name"] == "adam"
    np.testing.assert_array_equal(arrays["w/head:weight"], m.get_weights()["head:weight"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "garbage"])
def test_damaged_checkpoint_is_refused_with_one_line(tmp_path, damage):
    path = str(tmp_path / "c.ckpt")
    save_checkpoint(path, _model(), 1, 6)
    blob = bytearray(open(path, "rb").read())
    if damage == "truncate":
        blob = blob[:len(blob) // 2]
    elif damage == "flip":
        blob[len(blob) // 2] ^= 0x01
    elif damage == "empty":
        blob = bytearray()
    else:
        blob = bytearray(b"PK\x03\x04 not a checkpoint at all" * 4)
    open(path, "wb").write(bytes(blob))
    with pytest.raises(DataError) as e:
        load_checkpoint(path, _model())
    assert "\n" not in str(e.value) and path in str(e.value)


def test_checkpoint_for_another_model_or_optimizer_is_refused(tmp_path):
    path = str(tmp_path / "c")
    save_checkpoint(path, _model(), 1, 6)
    other = Model([layer("input", "in", input_shape="12"),
                   layer("fully_connected", "head", unit=3)], seed=0)
    other.compile(batch_size=BATCH, optimizer="adam")
    with pytest.raises(DataError, match="another model"):
        load_checkpoint(path, other)
    with pytest.raises(DataError, match="adam state"):
        load_checkpoint(path, _model("sgd"))
    with pytest.raises(ConfigError, match="compile"):
        load_checkpoint(path, Model(_specs(), seed=0))
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(str(tmp_path / "missing"), _model())


def test_write_is_atomic(tmp_path, monkeypatch):
    # A crash while writing leaves the previous checkpoint intact and no temporary file.
    path = str(tmp_path / "c")
    m = _model()
    save_checkpoint(path, m, 1, 6)
    before = open(path, "rb").read()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, m, 2, 12)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["c"]


def test_npz_files_hold_exactly_the_arrays_given_and_never_objects(tmp_path):
    # numpy 1.x's savez has no allow_pickle argument: passing one stored it as an array
    from device_runtime.weights import save_npz_atomic
    arrays = {"fc:weight": np.arange(6, dtype=np.float32).reshape(2, 3),
              "fc:bias": np.zeros(3, np.float32)}
    save_npz_atomic(str(tmp_path / "w.npz"), arrays)
    with np.load(tmp_path / "w.npz", allow_pickle=False) as z:
        assert sorted(z.files) == sorted(arrays)
        assert np.array_equal(z["fc:weight"], arrays["fc:weight"])
    with pytest.raises(TypeError, match="Python objects"):
        save_npz_atomic(str(tmp_path / "o.npz"), {"o": np.array([object()], dtype=object)})
    assert not (tmp_path / "o.npz").exists()
