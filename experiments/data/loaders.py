"""Loaders for data on the user's disk: LEAF JSON and a folder of one ``.npz`` per device.

Every problem with a file is a one-line :class:`~device_runtime.errors.DataError` that
names the file (and the user, for LEAF) and what is wrong.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from device_runtime.errors import DataError
from device_runtime.weights import load_npz

Shard = tuple[np.ndarray, np.ndarray]  # x float32 (n, ...), y int64 (n,)

# LEAF's Shakespeare vocabulary (leaf/models/utils/language_utils.py, ALL_LETTERS): 80
# characters; a character's id is its position. Characters outside it map to " " (id 1)
# and are counted in LeafData.unknown_chars.
LEAF_CHARS = ("\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]"
              "abcdefghijklmnopqrstuvwxyz}")
_CHAR_ID = {ch: i for i, ch in enumerate(LEAF_CHARS)}
assert len(LEAF_CHARS) == 80
FEMNIST_CLASSES = 62  # 10 digits + 26 upper + 26 lower case letters
SENT140_TEXT_INDEX = 4  # x = [tweet id, date, query, user name, text]
_WORD = re.compile(r"[a-z0-9']+")


@dataclass
class LeafData:
    """Per-user arrays of one LEAF dataset; ``test`` is empty when there is no test split."""

    name: str  # "femnist" | "shakespeare" | "sent140"
    train: dict[str, Shard]
    test: dict[str, Shard]
    input_shape: tuple[int, ...]
    num_classes: int
    vocab: list[str] = field(default_factory=list)  # sent140: word of each feature column
    unknown_chars: int = 0  # shakespeare: characters outside LEAF_CHARS (mapped to " ")


# ---------------------------------------------------------------- LEAF files


def _json_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".json"))


def _leaf_files(path: str) -> tuple[list[str], list[str]]:
    """(train files, test files) for a JSON file, a folder of them, or train/ + test/."""
    if os.path.isfile(path):
        return [path], []
    if not os.path.isdir(path):
        raise DataError(f"LEAF data not found: {path}")
    for root in (path, os.path.join(path, "data")):  # LEAF keeps splits in <dataset>/data/
        tr, te = os.path.join(root, "train"), os.path.join(root, "test")
        if os.path.isdir(tr):
            train = _json_files(tr)
            if not train:
                raise DataError(f"no .json files in {tr}")
            return train, _json_files(te) if os.path.isdir(te) else []
    files = _json_files(path)
    if not files:
        raise DataError(f"no .json files (or train/ folder) in {path}")
    return files, []


def _read_leaf_json(path: str) -> dict[str, dict[str, list[Any]]]:
    """One LEAF file -> {user: {"x": [...], "y": [...]}}, with its structure checked."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 (bad byte at offset {e.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (the file looks truncated)" if e.pos >= len(text.rstrip()) else ""
        raise DataError(f"{path} is not valid JSON at line {e.lineno} column {e.colno}: "
                        f"{e.msg}{hint}") from None
    except RecursionError:
        raise DataError(f"{path} is not a LEAF file: values nested too deeply") from None
    if not isinstance(doc, dict) or "users" not in doc or "user_data" not in doc:
        keys = ", ".join(map(repr, doc))[:200] if isinstance(doc, dict) else type(doc).__name__
        raise DataError(f"{path} is not a LEAF file: needs keys 'users' and 'user_data' "
                        f"(found: {keys or 'none'})")
    users, data, counts = doc["users"], doc["user_data"], doc.get("num_samples")
    if not isinstance(users, list) or not isinstance(data, dict):
        raise DataError(f"{path}: 'users' must be a list and 'user_data' an object")
    if counts is not None and (not isinstance(counts, list) or len(counts) != len(users)):
        raise DataError(f"{path}: 'num_samples' must be a list with one count per user "
                        f"({len(users)} users)")
    out = {}
    for i, user in enumerate(users):
        u = str(user)
        rec = data.get(u)
        if not isinstance(rec, dict) or "x" not in rec or "y" not in rec:
            raise DataError(f"{path}: user {u!r} has no 'x' and 'y' lists in 'user_data'")
        x, y = rec["x"], rec["y"]
        if not isinstance(x, list) or not isinstance(y, list):
            raise DataError(f"{path}: user {u!r}: 'x' and 'y' must be lists")
        if len(x) != len(y):
            raise DataError(f"{path}: user {u!r} has {len(x)} x but {len(y)} y")
        if counts is not None and counts[i] != len(y):
            raise DataError(f"{path}: user {u!r}: num_samples says {_short(counts[i])} but "
                            f"there are {len(y)} samples")
        out[u] = rec
    return out


def _detect(x0: Any, where: str) -> str:
    if isinstance(x0, str):
        return "shakespeare"
    if isinstance(x0, list) and len(x0) > SENT140_TEXT_INDEX and isinstance(
            x0[SENT140_TEXT_INDEX], str):
        return "sent140"
    if isinstance(x0, list) and len(x0) == 784:
        return "femnist"
    if isinstance(x0, (list, int, float)) and not isinstance(x0, bool):
        return "features"  # any other numbers: a generic feature vector (or nested lists)
    raise DataError(f"{where}: cannot tell which LEAF dataset a sample like {str(x0)[:40]!r} "
                    "is (pass dataset='femnist', 'shakespeare', 'sent140' or 'features')")


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _int_labels(path: str, user: str, y: list[Any], classes: int) -> np.ndarray:
    bad = [v for v in y if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < classes]
    if bad:
        raise DataError(f"{path}: user {user!r}: y must be integer class ids in [0, {classes}), "
                        f"found {_short(bad[0])}")
    return np.asarray(y, dtype=np.int64)


def _femnist(path: str, user: str, rec: dict[str, list[Any]]) -> Shard:
    try:
        x = np.asarray(rec["x"]) if rec["x"] else np.zeros((0, 784))
    except (ValueError, TypeError):
        raise DataError(f"{path}: user {user!r}: FEMNIST x must be lists of 784 numbers "
                        "(rows have different lengths)") from None
    if x.dtype.kind not in "fiu":
        raise DataError(f"{path}: user {user!r}: FEMNIST x must be numbers, found {x.dtype} "
                        "values")
    if x.ndim != 2 or x.shape[1] != 784:
        raise DataError(f"{path}: user {user!r}: FEMNIST x must be lists of 784 pixels, got "
                        f"shape {x.shape}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):  # JSON NaN/Infinity, or a number beyond float32
        raise DataError(f"{path}: user {user!r}: FEMNIST x contains NaN, Inf or a number too "
                        "large for float32")
    return x.reshape(-1, 1, 28, 28), _int_labels(path, user, rec["y"], FEMNIST_CLASSES)


def _features(path: str, user: str, rec: dict[str, list[Any]], classes: int) -> Shard:
    """A generic LEAF-style record: x a list of numbers (or of equal nested lists) per
    sample, any length; y integer class ids."""
    try:
        x = np.asarray(rec["x"], dtype=np.float64) if rec["x"] else np.zeros((0, 1))
    except (ValueError, TypeError):
        raise DataError(f"{path}: user {user!r}: x must be numbers, one list of equal shape "
                        "per sample") from None
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    x32 = x.astype(np.float32)
    if not np.all(np.isfinite(x32)):
        raise DataError(f"{path}: user {user!r}: x contains NaN, Inf or a number too large "
                        "for float32")
    return x32, _int_labels(path, user, rec["y"], classes)


def _chars(s: str, counter: list[int]) -> list[int]:
    ids = [_CHAR_ID.get(ch, -1) for ch in s]
    counter[0] += ids.count(-1)
    return [1 if i < 0 else i for i in ids]


def _shakespeare(path: str, user: str, rec: dict[str, list[Any]], unknown: list[int]) -> Shard:
    xs, ys = rec["x"], rec["y"]
    if not all(isinstance(s, str) for s in xs) or not all(
            isinstance(c, str) and len(c) == 1 for c in ys):
        raise DataError(f"{path}: user {user!r}: Shakespeare x must be strings and y single "
                        "characters")
    lengths = {len(s) for s in xs}
    if len(lengths) > 1 or 0 in lengths:
        raise DataError(f"{path}: user {user!r}: x strings have lengths {sorted(lengths)[:4]}; "
                        "they must all have one length > 0 (LEAF uses 80 characters)")
    width = lengths.pop() if lengths else 80
    x = np.asarray([_chars(s, unknown) for s in xs], dtype=np.float32).reshape(-1, width)
    y = np.asarray([_chars(c, unknown)[0] for c in ys], dtype=np.int64)
    return x, y


def _tokens(path: str, user: str, rec: dict[str, list[Any]]) -> list[list[str]]:
    out = []
    for r in rec["x"]:
        if not isinstance(r, list) or len(r) <= SENT140_TEXT_INDEX or not isinstance(
                r[SENT140_TEXT_INDEX], str):
            raise DataError(f"{path}: user {user!r}: Sent140 x must be records with the text "
                            f"at index {SENT140_TEXT_INDEX}, found {str(r)[:40]!r}")
        out.append(_WORD.findall(r[SENT140_TEXT_INDEX].lower()))
    return out


def _bag_of_words(tokens: list[list[str]], col: dict[str, int]) -> np.ndarray:
    x = np.zeros((len(tokens), len(col)), dtype=np.float32)
    for i, words in enumerate(tokens):
        for w in words:
            j = col.get(w)
            if j is not None:
                x[i, j] += 1.0
    return x


def load_leaf(path: str, dataset: str | None = None, vocab_size: int = 1000,
              max_users: int | None = None, seed: int = 0,
              num_classes: int | None = None) -> LeafData:
    """Read LEAF JSON (FEMNIST, Shakespeare, Sent140 or any feature vector) into per-user
    arrays.

    ``path``: one JSON file, a folder of them, or a folder with ``train/`` and ``test/``
    (also ``<path>/data/train``). Users spread over several files are concatenated.
    ``dataset`` is detected from the first sample when not given. ``max_users`` keeps a
    seeded random subset of the training users (and only converts those).

    Features (x is always float32):

    - FEMNIST: 784 pixels -> ``(1, 28, 28)``; 62 classes.
    - Shakespeare: the 80-character string -> 80 character ids over :data:`LEAF_CHARS`
      (stored as float32, exact); y is the next character's id; 80 classes.
    - Sent140: bag of words over the ``vocab_size`` most frequent words of the *training*
      users' texts (``x[4]``, lower-cased, tokens ``[a-z0-9']+``, ties broken by word);
      x is ``(vocab,)`` word counts, unknown words are dropped; y is 0/1; 2 classes.
    - ``features`` (any other data in LEAF's layout, ``{"users": [...], "num_samples":
      [...], "user_data": {user: {"x": [[...], ...], "y": [...]}}}``): x one list of
      numbers per sample (any length, or nested lists of one shape), y integer class ids;
      ``num_classes`` classes (default: the largest training or test label + 1).
    """
    train_files, test_files = _leaf_files(path)

    def read(files: list[str]) -> dict[str, tuple[str, dict[str, list[Any]]]]:
        users: dict[str, tuple[str, dict[str, list[Any]]]] = {}
        for f in files:
            for u, rec in _read_leaf_json(f).items():
                if u in users:  # same user in two files: concatenate
                    prev = users[u][1]
                    rec = {"x": prev["x"] + rec["x"], "y": prev["y"] + rec["y"]}
                users[u] = (f, rec)
        return users

    train_raw, test_raw = read(train_files), read(test_files)
    keep = sorted(train_raw)
    if max_users is not None and max_users < len(keep):
        pick = np.random.default_rng(seed).choice(len(keep), size=int(max_users), replace=False)
        keep = [keep[i] for i in sorted(pick)]
    found = next(((train_raw[u][1]["x"][0], train_raw[u][0]) for u in keep
                  if train_raw[u][1]["x"]), None)
    if found is None:
        raise DataError(f"{path}: the LEAF training data has no samples")
    name = (dataset or _detect(*found)).lower()
    if name not in ("femnist", "shakespeare", "sent140", "features"):
        raise DataError(f"unknown LEAF dataset '{dataset}' (known: femnist, shakespeare, "
                        f"sent140, features)")
    n_feat = int(num_classes) if num_classes is not None else 1 + max(
        (v for _, rec in [*(train_raw[u] for u in keep), *test_raw.values()] for v in rec["y"]
         if isinstance(v, int) and not isinstance(v, bool)), default=0)

    unknown = [0]
    vocab: list[str] = []
    tok: dict[str, list[list[str]]] = {}
    col: dict[str, int] = {}
    if name == "sent140":
        tok = {u: _tokens(train_raw[u][0], u, train_raw[u][1]) for u in keep}
        freq = Counter(w for ts in tok.values() for words in ts for w in words)
        vocab = [w for w, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:vocab_size]]
        col = {w: j for j, w in enumerate(vocab)}

    def convert(f: str, u: str, rec: dict[str, list[Any]], cached: Any = None) -> Shard:
        if name == "femnist":
            return _femnist(f, u, rec)
        if name == "shakespeare":
            return _shakespeare(f, u, rec, unknown)
        if name == "features":
            return _features(f, u, rec, n_feat)
        tokens = cached if cached is not None else _tokens(f, u, rec)
        return _bag_of_words(tokens, col), _int_labels(f, u, rec["y"], 2)

    train = {u: convert(train_raw[u][0], u, train_raw[u][1], tok.get(u)) for u in keep}
    test = {u: convert(test_raw[u][0], u, test_raw[u][1]) for u in keep if u in test_raw}
    shape = next(iter(train.values()))[0].shape[1:]
    for split, users in (("train", train), ("test", test)):
        for u, (x, _) in users.items():
            if x.shape[1:] != shape:
                raise DataError(f"{path}: {split} user {u!r} has samples of shape "
                                f"{x.shape[1:]}, others {shape}")
    classes = {"femnist": FEMNIST_CLASSES, "shakespeare": len(LEAF_CHARS), "sent140": 2,
               "features": n_feat}[name]
    return LeafData(name, train, test, shape, classes, vocab, unknown[0])


# ---------------------------------------------------------------- .npz folder


MAX_CLASSES = 1 << 20  # a class id beyond this is a corrupted file, not a task


def _check_xy(path: str, x: np.ndarray, y: np.ndarray, xs: str, ys: str) -> Shard:
    if x.ndim < 2 or x.dtype.kind not in "fiu" or 0 in x.shape[1:]:
        raise DataError(f"{path}: {xs} must be numbers of shape (N, features...), got dtype "
                        f"{x.dtype} shape {x.shape}")
    x32 = x.astype(np.float32, copy=False)
    if not np.all(np.isfinite(x32)):
        raise DataError(f"{path}: {xs} contains NaN, Inf or a number too large for float32")
    if y.ndim != 1 or y.dtype.kind not in "fiu":
        raise DataError(f"{path}: {ys} must be (N,) class ids, got dtype {y.dtype} shape {y.shape}")
    if y.dtype.kind == "f" and not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError(f"{path}: {ys} holds non-integer values; fleet data needs class ids")
    if len(x) != len(y):
        raise DataError(f"{path}: {xs} has {len(x)} samples but {ys} has {len(y)}")
    if y.size and y.min() < 0:
        raise DataError(f"{path}: {ys} has negative class id {y.min()}")
    if y.size and y.max() >= MAX_CLASSES:
        raise DataError(f"{path}: {ys} has class id {y.max()}; ids must be below {MAX_CLASSES}")
    return x32, y.astype(np.int64)


def load_npz_dir(path: str) -> dict[str, dict[str, np.ndarray]]:
    """A folder of ``<device id>.npz`` files -> {device id: {"x", "y"[, "x_test", "y_test"]}}.

    Each file holds ``x`` (N, C, H, W) or (N, F) and ``y`` int64 (N,) class ids as in
    DESIGN.md; optional ``x_test``/``y_test`` are the device's own test set (otherwise the
    caller splits ``x``). All devices must share one per-sample shape. Devices are sorted.
    """
    if not os.path.isdir(path):
        raise DataError(f"not a folder of .npz files: {path}")
    files = sorted(f for f in os.listdir(path) if f.endswith(".npz"))
    if not files:
        raise DataError(f"no .npz files in {path}")
    out: dict[str, dict[str, np.ndarray]] = {}
    shape = None
    for fname in files:
        fpath = os.path.join(path, fname)
        arrays = load_npz(fpath)
        missing = [k for k in ("x", "y") if k not in arrays]
        if missing:
            raise DataError(f"{fpath} has no array '{missing[0]}' (found: "
                            f"{', '.join(arrays) or 'none'})")
        if ("x_test" in arrays) != ("y_test" in arrays):
            raise DataError(f"{fpath} has only one of 'x_test' and 'y_test'; give both or neither")
        dev: dict[str, np.ndarray] = {}
        dev["x"], dev["y"] = _check_xy(fpath, arrays["x"], arrays["y"], "x", "y")
        if "x_test" in arrays:
            dev["x_test"], dev["y_test"] = _check_xy(fpath, arrays["x_test"], arrays["y_test"],
                                                     "x_test", "y_test")
            if dev["x_test"].shape[1:] != dev["x"].shape[1:]:
                raise DataError(f"{fpath}: x_test samples have shape {dev['x_test'].shape[1:]}, "
                                f"x samples {dev['x'].shape[1:]}")
        if shape is None:
            shape = dev["x"].shape[1:]
        elif dev["x"].shape[1:] != shape:
            raise DataError(f"{fpath}: samples have shape {dev['x'].shape[1:]} but {files[0]} has "
                            f"{shape}; every device needs the same input shape")
        out[fname[:-4]] = dev
    return out
