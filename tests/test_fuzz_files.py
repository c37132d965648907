"""Bad files a user points at: weight files (.npz) and checkpoints, truncated, bit-flipped,
with wrong keys, dtypes and shapes, zip bombs, headers that lie, pickles. Each loads
(then identically to the intact file) or fails with a one-line DataError naming the file,
never a traceback, a hang or a large allocation (issue 6, item 4). Data files: see
tests/test_fuzz_data.py.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_runtime import DataError, Model, ModelError, layer
from device_runtime import weights as weights_mod
from device_runtime.checkpoint import _PRE, MAGIC, VERSION, load_checkpoint, save_checkpoint
from device_runtime.weights import load_npz
from tests import fuzzing as fz
from tests.fuzzing import fuzz_report  # noqa: F401 (an autouse fixture)


def _model(compiled: bool = False) -> Model:
    m = Model([layer("input", "in", input_shape="6"), layer("fully_connected", "fc1", unit=4),
               layer("batch_normalization", "bn", activation="relu"),
               layer("fully_connected", "head", unit=3)], loss="cross_softmax", seed=0)
    return m.compile(batch_size=4, optimizer="adam", lr=0.01) if compiled else m


WEIGHTS = _model().get_weights()  # key -> float32 array, the intact file's content


# ---------------------------------------------------------------- byte mutations

def _write(tmp_path, name: str, blob: bytes) -> str:
    path = os.path.join(tmp_path, name)
    with open(path, "wb") as f:
        f.write(blob)
    return path


def _npz_bytes(arrays: dict[str, np.ndarray], compress: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, **arrays)
    return buf.getvalue()


INTACT = {False: _npz_bytes(WEIGHTS), True: _npz_bytes(WEIGHTS, compress=True)}


@fz.fuzz_settings(700)
@given(st.booleans(), fz.OPS)
def test_fuzz_weight_file_bytes(tmp_path_factory, compressed, ops):
    # Prepare
    path = _write(tmp_path_factory.mktemp("w"), "w.npz", fz.mutate(INTACT[compressed], ops))
    m = _model()
    # Execute
    _, msg = fz.check_input("weight files: bytes", lambda: m.load_weights(path), path)
    # Assert: what loads is exactly the intact file (zip CRCs catch every changed byte)
    if msg is None:
        for k, v in WEIGHTS.items():
            np.testing.assert_array_equal(m.get_weights()[k], v, err_msg=k)


@fz.fuzz_settings(300)
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes_as_weights(tmp_path_factory, blob):
    path = _write(tmp_path_factory.mktemp("r"), "r.npz", blob)
    _, msg = fz.check_input("weight files: bytes", lambda: load_npz(path), path)
    assert msg is not None or blob[:2] == b"PK"


# ---------------------------------------------------------------- hostile archives

class _Marker:
    """Unpickling this creates a folder: proof that a pickle was loaded."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def __reduce__(self):
        return os.makedirs, (self.folder,)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, allow_pickle=True)
    return buf.getvalue()


CHANGES = ["keep", "drop", "rename", "float16", "float64", "int32", "int8", "bool", "complex64",
           "<U3", "V4", ">f4", "pickle", "transpose", "extra_dim", "zero_dim", "nan", "inf",
           "lie_shape", "truncate"]
FINE = {"keep", "float16", "float64", "int32", "int8", ">f4"}  # numbers of the right shape
EXTRAS = st.lists(st.sampled_from(["not_npy", "duplicate", "unknown_key", "newline_key",
                                   "nested_key"]), max_size=2)


def _member(key: str, a: np.ndarray, change: str, marker: str) -> list[tuple[str, bytes]]:
    if change == "drop":
        return []
    if change == "rename":
        return [(f"{key}x.npy", _npy(a))]
    if change == "pickle":
        return [(f"{key}.npy", _npy(np.array([_Marker(marker)], dtype=object)))]
    if change in ("nan", "inf"):
        b = a.copy()
        b.flat[0] = np.nan if change == "nan" else np.inf
        return [(f"{key}.npy", _npy(b))]
    if change in ("lie_shape", "truncate"):
        raw = _npy(a)
        if change == "truncate":
            return [(f"{key}.npy", raw[:len(raw) - 4])]
        return [(f"{key}.npy", raw.replace(str(a.shape).encode(), b"(1000000000000,)", 1))]
    shaped = {"transpose": a.T if a.ndim > 1 else a[:, None], "extra_dim": a[None],
              "zero_dim": a[:0]}.get(change, a)
    if change in ("keep", "transpose", "extra_dim", "zero_dim"):
        return [(f"{key}.npy", _npy(shaped))]
    return [(f"{key}.npy", _npy(a.astype(change) if change != "V4" else a.view("V4")))]


@fz.fuzz_settings(500)
@given(st.lists(st.sampled_from(CHANGES), min_size=len(WEIGHTS), max_size=len(WEIGHTS)), EXTRAS,
       st.booleans())
def test_fuzz_weight_archives(tmp_path_factory, changes, extras, compress):
    # Prepare: one change per parameter, maybe extra members
    folder = tmp_path_factory.mktemp("h")
    marker = str(folder / "unpickled")
    members = []
    for (key, a), change in zip(WEIGHTS.items(), changes):
        if change == "transpose" and a.ndim > 1 and a.shape[0] == a.shape[1]:
            change = "keep"  # a square transpose has the right shape
        members += _member(key, a, change, marker)
    extra = {"not_npy": [("readme.txt", b"hello")],
             "duplicate": members[:1] * 2 if members else [],
             "unknown_key": [("fc9:weight.npy", _npy(np.zeros(3, np.float32)))],
             "newline_key": [("fc1\n:weight.npy", _npy(np.zeros(3, np.float32)))],
             "nested_key": [("a/b.npy", _npy(np.zeros(3, np.float32)))]}
    for e in extras:
        members += extra[e][1:] if e == "duplicate" else extra[e]
    path = str(folder / "w.npz")
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": on purpose
        for name, data in members:
            z.writestr(name, data)
    m = _model()
    # Execute
    _, msg = fz.check_input("weight files: archives", lambda: m.load_weights(path), path)
    # Assert: loads exactly when every parameter is there as numbers of its shape
    fine = all(c in FINE or (c == "transpose" and WEIGHTS[k].ndim > 1 and
                             WEIGHTS[k].shape[0] == WEIGHTS[k].shape[1])
               for k, c in zip(WEIGHTS, changes)) and not extras
    assert (msg is None) == fine, (changes, extras, msg)
    assert not os.path.exists(marker), "a pickle was loaded"
    if fine:  # the stored numbers, cast to float32
        for (k, v), c in zip(WEIGHTS.items(), changes):
            want = v if c in ("keep", "transpose") else v.astype(c)
            np.testing.assert_array_equal(m.get_weights()[k], want.astype(np.float32), err_msg=k)


def test_zip_bomb_is_refused_before_it_expands(tmp_path, monkeypatch):
    # Prepare: 64 MiB of zeros deflate to ~64 KiB
    path = str(tmp_path / "bomb.npz")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("fc1:weight.npy", _npy(np.zeros(16 << 20, np.float32)))
    assert os.path.getsize(path) < 1 << 20
    monkeypatch.setattr(weights_mod, "memory_available", lambda: 8 << 20)
    # Execute / Assert
    with pytest.raises(DataError, match=r"would expand to 67,108,992 bytes, more than the "
                                         r"8,388,608 bytes of memory available"):
        load_npz(path)


def test_header_that_claims_terabytes_allocates_nothing(tmp_path):
    raw = _npy(np.zeros(2, np.float32)).replace(b"(2,)", b"(1000000000000,)")
    path = _write(tmp_path, "big.npz", _zip([("x.npy", raw)]))
    with pytest.raises(DataError, match=r"'x' is truncated or corrupted: its header says "
                                        r"\(1000000000000,\) float32 \(4,000,000,000,000 bytes\)"):
        load_npz(path)


def test_single_npy_and_pickle_files_are_named(tmp_path):
    npy = _write(tmp_path, "a.npz", _npy(np.zeros(3, np.float32)))
    pkl = _write(tmp_path, "p.npz", pickle.dumps({"x": 1}))
    with pytest.raises(DataError, match="single .npy array"):
        load_npz(npy)
    with pytest.raises(DataError, match=r"p.npz as .npz: File is not a zip file"):
        load_npz(pkl)


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def test_model_too_large_for_memory_is_refused_before_allocating(monkeypatch):
    # Prepare
    monkeypatch.setattr(weights_mod, "memory_available", lambda: 100)
    need = 4 * sum(v.size for v in WEIGHTS.values())
    # Execute
    with pytest.raises(ModelError) as e:
        _model()
    # Assert
    assert str(e.value) == (f"the model's weights need {need:,} bytes ('fc1:weight' alone is "
                            "(6, 4)), more than the 100 bytes of memory available")


# ---------------------------------------------------------------- checkpoints

def _checkpoint() -> bytes:
    import tempfile

    m = _model(compiled=True)
    rng = np.random.default_rng(0)
    m.fit(rng.normal(size=(8, 6)).astype(np.float32), rng.integers(0, 3, 8), epochs=1)
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(os.path.join(d, "c.ckpt"), m, epoch=1, iteration=2)
        with open(os.path.join(d, "c.ckpt"), "rb") as f:
            return f.read()


CKPT = _checkpoint()
_, _, _HLEN = _PRE.unpack_from(CKPT)
CKPT_HEADER = json.loads(CKPT[_PRE.size:_PRE.size + _HLEN])
CKPT_DATA = CKPT[_PRE.size + _HLEN:-32]


def _with_header(header: object, raw: bytes | None = None) -> bytes:
    """A checkpoint with this header and a valid checksum: a hostile, not a damaged, file."""
    h = raw if raw is not None else json.dumps(header).encode()
    body = _PRE.pack(MAGIC, VERSION, len(h)) + h + CKPT_DATA
    return body + hashlib.sha256(body).digest()


def _load_ckpt(path: str) -> tuple[int, int]:
    return load_checkpoint(path, _model(compiled=True))


@fz.fuzz_settings(300)
@given(fz.OPS)
def test_fuzz_checkpoint_bytes(tmp_path_factory, ops):
    blob = fz.mutate(CKPT, ops)
    path = _write(tmp_path_factory.mktemp("c"), "c.ckpt", blob)
    got, msg = fz.check_input("checkpoints: bytes", lambda: _load_ckpt(path), path)
    assert msg is not None or (blob == CKPT and got == (1, 2))


@fz.fuzz_settings(500)
@given(fz.edits(fz.JSON_VALUES))
def test_fuzz_checkpoint_header(tmp_path_factory, changes):
    # Prepare: edit the header's values and keys, then give the file a valid checksum
    header = fz.edit_document(CKPT_HEADER, changes)
    path = _write(tmp_path_factory.mktemp("k"), "c.ckpt", _with_header(header))
    # Execute / Assert
    got, msg = fz.check_input("checkpoints: headers", lambda: _load_ckpt(path), path)
    assert msg is not None or got == (header["epoch"], header["iteration"])


@pytest.mark.parametrize("raw, needle", [
    (b"[" * 100000 + b"]" * 100000, "not JSON"), (b"\xff\xfe", "not JSON"),
    (b"[]", "not a JSON object"),
    (None, "array 'o/fc1:weight#0' has dtype '|O'"),
])
def test_hostile_checkpoint_headers_are_named(tmp_path, raw, needle):
    header = json.loads(json.dumps(CKPT_HEADER))
    header["arrays"][8]["dtype"] = "|O"
    path = _write(tmp_path, "c.ckpt", _with_header(header, raw))
    with pytest.raises(DataError) as e:
        _load_ckpt(path)
    assert needle in str(e.value) and path in str(e.value), str(e.value)
