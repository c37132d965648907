"""Fleet data on disk: the LEAF and .npz loaders, and fleets made of their files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from device_runtime.errors import DataError
from experiments.data import LEAF_CHARS, load_leaf, load_npz_dir, make_fleet_data
from tests.test_fleet_data import check_fleet

# ---------------------------------------------------------------- LEAF


def write_json(path, doc) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    return str(path)


def leaf_doc(users: dict[str, tuple[list, list]]) -> dict:
    return {"users": list(users), "num_samples": [len(y) for _, y in users.values()],
            "user_data": {u: {"x": x, "y": y} for u, (x, y) in users.items()}}


def test_leaf_femnist_train_test_folders(tmp_path):
    # Prepare: two train files (users split over them) and one test file
    rng = np.random.default_rng(0)

    def px(n):
        return rng.random((n, 784)).round(3).tolist()

    write_json(tmp_path / "train" / "a.json", leaf_doc({"u1": (px(5), [0, 1, 2, 61, 3])}))
    write_json(tmp_path / "train" / "b.json", leaf_doc({"u2": (px(4), [5, 5, 6, 7])}))
    write_json(tmp_path / "test" / "a.json", leaf_doc({"u1": (px(2), [1, 2]),
                                                      "u2": (px(1), [7])}))
    # Execute
    leaf = load_leaf(str(tmp_path))
    # Assert
    assert leaf.name == "femnist" and leaf.num_classes == 62 and leaf.input_shape == (1, 28, 28)
    assert sorted(leaf.train) == ["u1", "u2"] and sorted(leaf.test) == ["u1", "u2"]
    x, y = leaf.train["u1"]
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32 and y.tolist() == [0, 1, 2, 61, 3]
    fleet = make_fleet_data("leaf", None, path=str(tmp_path))
    assert [d.device_id for d in fleet.devices] == ["u1", "u2"]
    assert fleet.device("u2").num_test == 1 and fleet.device("u2").num_train == 4


def test_leaf_shakespeare_vocabulary(tmp_path):
    assert len(LEAF_CHARS) == 80 and LEAF_CHARS[1] == " "
    line = ("To be, or not to be: that is the question. " * 2)[:80]
    path = write_json(tmp_path / "shake.json",
                      leaf_doc({"HAMLET": ([line, line[1:] + "|"], ["W", "x"])}))
    leaf = load_leaf(path)
    x, y = leaf.train["HAMLET"]
    assert leaf.name == "shakespeare" and leaf.num_classes == 80 and x.shape == (2, 80)
    assert "".join(LEAF_CHARS[int(i)] for i in x[0]) == line
    assert x[1, -1] == LEAF_CHARS.index(" ") and leaf.unknown_chars == 1  # "|" -> " "
    assert y.tolist() == [LEAF_CHARS.index("W"), LEAF_CHARS.index("x")]
    assert leaf.test == {}


def test_leaf_sent140_bag_of_words(tmp_path):
    def rec(text):
        return ["1467810369", "Mon Apr 06", "NO_QUERY", "someone", text]

    write_json(tmp_path / "train" / "t.json", leaf_doc({
        "alice": ([rec("I love it, love it!"), rec("so sad")], [1, 0]),
        "bob": ([rec("Love the sun")], [1])}))
    write_json(tmp_path / "test" / "t.json", leaf_doc({"bob": ([rec("sun sun unseen")], [1])}))
    leaf = load_leaf(str(tmp_path), vocab_size=3)
    # most frequent training words, ties alphabetical: love (3), it (2), i (1)
    assert leaf.name == "sent140" and leaf.vocab == ["love", "it", "i"]
    assert leaf.input_shape == (3,) and leaf.num_classes == 2
    x, y = leaf.train["alice"]
    assert x.tolist() == [[2, 2, 1], [0, 0, 0]] and y.tolist() == [1, 0]
    assert leaf.test["bob"][0].tolist() == [[0, 0, 0]]  # unknown words dropped


def bad_leaf_cases(tmp_path):
    good = leaf_doc({"u": ([[0.0] * 784], [1])})
    ragged = leaf_doc({"u": ([[0.0] * 784, [0.0] * 700], [1, 2])})
    return {
        "missing keys": ({"users": ["u"]}, "needs keys 'users' and 'user_data'"),
        "no x": ({"users": ["u"], "user_data": {"u": {"y": [1]}}}, "has no 'x' and 'y'"),
        "x/y length": (leaf_doc({"u": ([[0.0] * 784], [1, 2])}), "1 x but 2 y"),
        "num_samples": ({**good, "num_samples": [3]}, "num_samples says 3"),
        "ragged": (ragged, "rows have different lengths"),
        "string pixels": (leaf_doc({"u": ([["a"] * 784], [1])}), "must be numbers"),
        "float label": (leaf_doc({"u": ([[0.0] * 784], [1.5])}), "integer class ids"),
        "label range": (leaf_doc({"u": ([[0.0] * 784], [62])}), r"\[0, 62\)"),
        "wrong type": ({"users": "u", "user_data": []}, "must be a list"),
    }


@pytest.mark.parametrize("case", list(bad_leaf_cases(None)))
def test_leaf_bad_documents(tmp_path, case):
    doc, match = bad_leaf_cases(tmp_path)[case]
    path = write_json(tmp_path / "bad.json", doc)
    with pytest.raises(DataError, match=match) as e:
        load_leaf(path, dataset="femnist" if case != "missing keys" else None)
    assert "bad.json" in str(e.value) and "\n" not in str(e.value)


def test_leaf_bad_bytes(tmp_path):
    trunc = tmp_path / "trunc.json"
    trunc.write_text(json.dumps(leaf_doc({"u": (["abc"], ["d"])}))[:-7], encoding="utf-8")
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"users": ["caf\xe9"], "user_data": {}}')
    with pytest.raises(DataError, match=r"trunc\.json is not valid JSON at line 1.*truncated"):
        load_leaf(str(trunc))
    with pytest.raises(DataError, match=r"latin\.json is not UTF-8"):
        load_leaf(str(latin))
    with pytest.raises(DataError, match="LEAF data not found"):
        load_leaf(str(tmp_path / "nothing_here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .json files"):
        load_leaf(str(tmp_path / "empty"))


# ---------------------------------------------------------------- .npz folder


def test_npz_dir_roundtrip_and_natural_fleet(tmp_path):
    # Prepare: a generated fleet written one file per device, plus one file without a test set
    fleet = make_fleet_data("synthetic_images", 3, seed=0, shape=(1, 28, 28),
                            samples_per_device=40)
    fleet.save_npz_dir(str(tmp_path))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "zz_extra.npz", x=rng.random((30, 1, 28, 28), dtype=np.float32),
             y=np.arange(30) % 10)
    # Execute
    files = load_npz_dir(str(tmp_path))
    back = make_fleet_data("npz_dir", None, path=str(tmp_path), test_fraction=0.2)
    # Assert
    assert sorted(files) == ["d0", "d1", "d2", "zz_extra"]
    for d in fleet.devices:
        e = back.device(d.device_id)
        assert np.array_equal(d.x_train, e.x_train) and np.array_equal(d.y_test, e.y_test)
    assert back.device("zz_extra").num_test == 6 and back.num_classes == 10
    two = make_fleet_data("npz_dir", 2, seed=1, path=str(tmp_path))
    assert len(two) == 2
    pooled = make_fleet_data("npz_dir", 5, seed=1, path=str(tmp_path), partition="iid")
    check_fleet(pooled, 5)


@pytest.mark.parametrize("arrays, match", [
    ({"x": np.zeros((4, 3), np.float32)}, "has no array 'y'"),
    ({"x": np.zeros((4, 3), np.float32), "y": np.zeros(5, np.int64)}, "4 samples but y has 5"),
    ({"x": np.zeros(4, np.float32), "y": np.zeros(4, np.int64)}, "shape"),
    ({"x": np.zeros((2, 3), np.float32), "y": np.array([0.5, 1.0])}, "non-integer"),
    ({"x": np.full((2, 3), np.nan, np.float32), "y": np.zeros(2, np.int64)}, "NaN"),
    ({"x": np.zeros((2, 3), np.float32), "y": np.zeros(2, np.int64),
      "x_test": np.zeros((1, 3), np.float32)}, "only one of 'x_test' and 'y_test'"),
    ({"x": np.zeros((2, 5), np.float32), "y": np.zeros(2, np.int64)}, "same input shape"),
])
def test_npz_dir_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "a_good.npz", x=np.zeros((2, 3), np.float32), y=np.zeros(2, np.int64))
    np.savez(tmp_path / "b_bad.npz", **arrays)
    with pytest.raises(DataError, match=match) as e:
        load_npz_dir(str(tmp_path))
    assert "b_bad.npz" in str(e.value) and "\n" not in str(e.value)


def test_npz_dir_unreadable_and_empty(tmp_path):
    with pytest.raises(DataError, match="no .npz files"):
        load_npz_dir(str(tmp_path))
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(DataError, match=r"broken\.npz"):
        load_npz_dir(str(tmp_path))
    with pytest.raises(DataError, match="not a folder"):
        load_npz_dir(str(tmp_path / "missing"))
