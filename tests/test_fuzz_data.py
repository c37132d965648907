"""Bad data files: LEAF JSON (FEMNIST, Shakespeare, Sent140) and folders of per-device .npz
files, edited at the document level, byte-mutated, or hostile by construction. Each loads
(then with finite float32 x and int64 class ids in range) or fails with a one-line
DataError naming the file (issue 6, item 4).
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_runtime.errors import DataError
from experiments.data import LEAF_CHARS, load_leaf, load_npz_dir
from experiments.data.loaders import MAX_CLASSES
from tests import fuzzing as fz
from tests.fuzzing import fuzz_report  # noqa: F401 (an autouse fixture)


def _leaf(users: dict[str, tuple[list, list]]) -> dict:
    return {"users": list(users), "num_samples": [len(y) for _, y in users.values()],
            "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()}}


_rng = np.random.default_rng(0)
LEAF_DOCS = {
    "femnist": _leaf({"f0": (_rng.random((2, 784)).round(2).tolist(), [0, 61]),
                      "f1": (_rng.random((1, 784)).round(2).tolist(), [7])}),
    "shakespeare": _leaf({"s0": (["To be, or not to be" + " " * 61, "x" * 80], ["t", "}"]),
                          "s1": (["a" * 80], ["b"])}),
    "sent140": _leaf({"t0": ([["1", "d", "q", "u", "so happy today"], ["2", "d", "q", "u", "sad"]],
                             [1, 0]), "t1": ([["3", "d", "q", "v", "happy happy"]], [1])}),
}
CLASSES = {"femnist": 62, "shakespeare": len(LEAF_CHARS), "sent140": 2}


def _check_leaf(path: str) -> None:
    d = load_leaf(path)
    for x, y in list(d.train.values()) + list(d.test.values()):
        assert x.dtype == np.float32 and np.all(np.isfinite(x)) and x.shape[1:] == d.input_shape
        assert y.dtype == np.int64 and len(y) == len(x)
        assert y.size == 0 or (y.min() >= 0 and y.max() < d.num_classes == CLASSES[d.name])


def _write(folder, name: str, data: bytes) -> str:
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


@fz.fuzz_settings(900)
@given(st.sampled_from(sorted(LEAF_DOCS)), fz.edits(fz.JSON_VALUES))
def test_fuzz_leaf_documents(tmp_path_factory, name, changes):
    doc = fz.edit_document(LEAF_DOCS[name], changes)
    path = _write(tmp_path_factory.mktemp("leaf"), f"{name}.json",
                  json.dumps(doc, allow_nan=True).encode())
    fz.check_input("LEAF JSON: documents", lambda: _check_leaf(path), path)


@fz.fuzz_settings(400)
@given(st.sampled_from(sorted(LEAF_DOCS)), fz.OPS)
def test_fuzz_leaf_bytes(tmp_path_factory, name, ops):
    blob = fz.mutate(json.dumps(LEAF_DOCS[name]).encode(), ops)
    path = _write(tmp_path_factory.mktemp("leaf"), f"{name}.json", blob)
    fz.check_input("LEAF JSON: bytes", lambda: _check_leaf(path), path)


@pytest.mark.parametrize("text, needle", [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    (json.dumps(_leaf({"u": ([[1e400] * 784], [1])})), "FEMNIST x contains NaN, Inf"),
    (json.dumps(_leaf({"u": ([[float("nan")] * 784], [1])})), "FEMNIST x contains NaN"),
    (json.dumps(_leaf({"u": ([[1e300] * 784], [1])})), "too large for float32"),
    (json.dumps(_leaf({"u": ([[0.5] * 784], [2**70])})), "found 1180591620717411303424"),
    (json.dumps(_leaf({"u": ([""], ["a"])})), "lengths [0]"),
    (json.dumps(_leaf({"a\nb": ([[0.5] * 784], [2**70])})), "user 'a\\nb'"),
    (json.dumps({"users": [], "user_data": {}}), "has no samples"),
    (json.dumps({"a\nb": 1}), "(found: 'a\\nb')"),
])
def test_leaf_errors_name_file_and_problem(tmp_path, text, needle):
    path = _write(tmp_path, "l.json", text.encode())
    _, msg = fz.check_input("LEAF JSON: cases", lambda: _check_leaf(path), path, needle)
    assert msg is not None


# ---------------------------------------------------------------- .npz device folders

def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


GOOD = {"x": np.arange(24, dtype=np.float32).reshape(4, 2, 3), "y": np.array([0, 1, 2, 1]),
        "x_test": np.ones((2, 2, 3), np.float32), "y_test": np.array([2, 0])}
CHANGES = {
    "keep": lambda a: a, "drop": None, "float64": lambda a: a.astype(np.float64),
    "int8": lambda a: a.astype(np.int8), "bool": lambda a: a.astype(bool),
    "complex": lambda a: a.astype(np.complex64), "str": lambda a: a.astype("U2"),
    "nan": lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a),
    "inf": lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, -np.inf, a),
    "huge": lambda a: a.astype(np.float64) * 1e300,
    "negative": lambda a: -1 - a, "classes": lambda a: a + MAX_CLASSES,
    "fraction": lambda a: a + 0.5, "flat": lambda a: a.reshape(-1),
    "extra_dim": lambda a: a[..., None], "empty_features": lambda a: a.reshape(len(a), -1)[:, :0],
    "shorter": lambda a: a[:-1], "none": lambda a: a[:0],
}


@fz.fuzz_settings(700)
@given(st.fixed_dictionaries({k: st.sampled_from(sorted(CHANGES)) for k in GOOD}),
       st.one_of(st.none(), fz.OPS))
def test_fuzz_npz_device_folders(tmp_path_factory, changes, ops):
    # Prepare: d0.npz intact, d1.npz changed array by array, then maybe byte-mutated
    folder = tmp_path_factory.mktemp("npz")
    _write(folder, "d0.npz", _npz(**GOOD))
    arrays = {k: CHANGES[c](a) for (k, a), c in zip(GOOD.items(), changes.values())
              if CHANGES[c] is not None}
    bad = _npz(**arrays)
    path = _write(folder, "d1.npz", fz.mutate(bad, ops) if ops else bad)
    # Execute
    got, msg = fz.check_input("npz data folders", lambda: load_npz_dir(str(folder)), path)
    # Assert: what loads is numbers of one shape, integer class ids
    if msg is None:
        for dev in got.values():
            assert dev["x"].dtype == np.float32 and np.all(np.isfinite(dev["x"]))
            assert dev["x"].shape[1:] == (2, 3) and dev["y"].dtype == np.int64
            assert dev["y"].size == 0 or 0 <= dev["y"].min() <= dev["y"].max() < MAX_CLASSES


def test_npz_member_that_is_not_an_array_is_named(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("y", b"1,2,3")
    _write(tmp_path, "d.npz", buf.getvalue())
    with pytest.raises(DataError, match=r"d\.npz: member 'y' is not a \.npy array"):
        load_npz_dir(str(tmp_path))
