"""Training checkpoints: weights, optimizer state, epoch and iteration, in one file.

Layout (little-endian)::

    b"NNFLCKPT"  u32 format version  u64 header length  header (JSON, UTF-8)
    array data (each array at a 64-byte aligned offset from the data start)
    SHA-256 of everything above (32 bytes)

The header lists the model's name and parameters (key and shape), the optimizer's name
and iteration, the epoch and iteration given by the caller, the arrays (weights ``w/``,
optimizer state ``o/``) and per-layer run-time state that changes the numbers of later
steps (dropout's call counter). Files are written to a temporary file in the same
folder, fsynced and renamed, so a crash leaves the old checkpoint or the new one, never
half of one; a truncated or corrupted file fails the checksum and is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from typing import Any

import numpy as np

from .errors import ConfigError, DataError
from .model import Model
from .weights import atomic_write, memory_available

MAGIC = b"NNFLCKPT"
VERSION = 1
_PRE = struct.Struct("<8sIQ")  # magic, version, header length
_ALIGN = 64


def _layer_state(model: Model) -> dict[str, dict[str, int]]:
    ex = model._train  # no training executor yet: no layer has run
    if ex is None:
        return {}
    states = {n.name: n.layer.run_state() for n in ex.graph.nodes}
    return {name: st for name, st in states.items() if st}


def save_checkpoint(path: str, model: Model, epoch: int, iteration: int) -> None:
    """Write ``model``'s weights and optimizer state with ``epoch`` and ``iteration``."""
    arrays: dict[str, np.ndarray] = {f"w/{k}": v for k, v in model.weights.state().items()}
    opt = model.optimizer
    opt_meta: dict[str, Any] | None = None
    if opt is not None:
        state = opt.state_dict()
        opt_meta = {"name": opt.name, "iteration": int(state.pop("iteration", 0))}
        arrays.update({f"o/{k}": np.asarray(v) for k, v in state.items()})
    table: list[dict[str, Any]] = []
    off = 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        arrays[name] = a
        table.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape),
                      "offset": off, "nbytes": int(a.nbytes)})
        off += -(-a.nbytes // _ALIGN) * _ALIGN
    header = json.dumps({
        "format": VERSION, "model": model.name, "epoch": int(epoch), "iteration": int(iteration),
        "params": [[k, list(p.shape)] for k, p in model.weights.params.items()],
        "optimizer": opt_meta, "layer_state": _layer_state(model), "arrays": table,
    }).encode()
    def write(f: Any) -> None:
        h = hashlib.sha256()

        def put(b: bytes | memoryview) -> None:
            h.update(b)
            f.write(b)

        put(_PRE.pack(MAGIC, VERSION, len(header)))
        put(header)
        for entry in table:
            a = arrays[entry["name"]]
            put(a.reshape(-1).view(np.uint8).data)
            put(bytes(-a.nbytes % _ALIGN))
        f.write(h.digest())

    atomic_write(path, write, ".ckpt")


def read_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and arrays of a checkpoint file, after checking its checksum and header."""
    if not os.path.isfile(path):
        raise DataError(f"checkpoint not found: {path}")
    size, avail = os.path.getsize(path), memory_available()
    if size > avail:
        raise DataError(f"checkpoint {path} has {size:,} bytes, more than the {avail:,} bytes "
                        "of memory available")
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < _PRE.size + 32 or blob[:8] != MAGIC:
        raise DataError(f"checkpoint {path} is not an nnfleet checkpoint or is truncated "
                        f"({len(blob)} bytes)")
    if hashlib.sha256(memoryview(blob)[:-32]).digest() != blob[-32:]:
        raise DataError(f"checkpoint {path} fails its checksum: the file is corrupted or "
                        "truncated")
    _, version, hlen = _PRE.unpack_from(blob)
    if version > VERSION:
        raise DataError(f"checkpoint {path} has format version {version}; this nnfleet reads "
                        f"up to {VERSION}")
    start = _PRE.size + hlen
    try:  # a file with a valid checksum can still be hostile: nothing is trusted unchecked
        header = json.loads(blob[_PRE.size:start]) if start <= len(blob) - 32 else None
    except (ValueError, RecursionError) as e:
        raise _malformed(path, f"not JSON ({str(e).splitlines()[0]})") from None
    _check_header(path, header, len(blob) - 32 - start)
    assert isinstance(header, dict)  # _check_header raises otherwise
    arrays: dict[str, np.ndarray] = {}
    for ent in header["arrays"]:
        dtype = np.dtype(ent["dtype"])
        a = np.frombuffer(blob, dtype=dtype, offset=start + ent["offset"],
                          count=ent["nbytes"] // dtype.itemsize)
        arrays[ent["name"]] = a.reshape(ent["shape"])
    return header, arrays


def _malformed(path: str, what: str) -> DataError:
    return DataError(f"checkpoint {path} has a malformed header: {what}")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63


def _shape(v: Any) -> bool:
    return isinstance(v, list) and all(_count(d) for d in v)


# header key -> (required, check, what it must be)
_HEADER = {
    "epoch": (True, _count, "an integer >= 0"),
    "iteration": (True, _count, "an integer >= 0"),
    "params": (True, lambda v: isinstance(v, list) and all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and _shape(p[1])
        for p in v), "a list of [key, shape]"),
    "optimizer": (False, lambda v: v is None or (isinstance(v, dict) and isinstance(
        v.get("name"), str) and _count(v.get("iteration"))), "null or {name, iteration}"),
    "layer_state": (False, lambda v: isinstance(v, dict) and all(
        isinstance(s, dict) and _count(s.get("calls")) for s in v.values()),
        "an object {layer: {calls}}"),
    "arrays": (True, lambda v: isinstance(v, list) and all(
        isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("dtype"), str)
        and _shape(e.get("shape")) and _count(e.get("offset")) and _count(e.get("nbytes"))
        for e in v), "a list of {name, dtype, shape, offset, nbytes}"),
}


def _check_header(path: str, header: Any, data_bytes: int) -> None:
    if not isinstance(header, dict):
        raise _malformed(path, "not a JSON object")
    for key, (required, ok, want) in _HEADER.items():
        if key not in header:
            if required:
                raise _malformed(path, f"no '{key}'")
        elif not ok(header[key]):
            raise _malformed(path, f"'{key}' must be {want}")
    for e in header["arrays"]:
        try:
            dtype = np.dtype(e["dtype"])
        except TypeError:
            dtype = np.dtype(object)
        if dtype.kind not in "biuf" or dtype.itemsize == 0:
            raise _malformed(path, f"array {e['name']!r} has dtype {e['dtype']!r} (numbers only)")
        if e["nbytes"] != math.prod(e["shape"]) * dtype.itemsize \
                or e["offset"] + e["nbytes"] > data_bytes:
            raise _malformed(path, f"array {e['name']!r} of shape {e['shape']} {dtype} does not "
                             f"fit its {e['nbytes']} bytes at offset {e['offset']}")


def load_checkpoint(path: str, model: Model) -> tuple[int, int]:
    """Restore weights, optimizer state and layer state into a compiled ``model`` (same
    layers, same optimizer); returns the saved ``(epoch, iteration)``."""
    header, arrays = read_checkpoint(path)
    have = [[k, list(p.shape)] for k, p in model.weights.params.items()]
    if header["params"] != have:
        saved = {k: s for k, s in header["params"]}
        ours = {k: s for k, s in have}
        diff = next((k for k in list(ours) + list(saved) if saved.get(k) != ours.get(k)), "?")
        raise DataError(f"checkpoint {path} is for another model: parameter {diff!r} is "
                        f"{saved.get(diff, 'absent')} there, {ours.get(diff, 'absent')} here")
    meta = header.get("optimizer")
    opt = model.optimizer
    if meta is not None:
        if opt is None:
            raise ConfigError("compile() the model before load_checkpoint: the optimizer "
                              "state needs the optimizer")
        if meta["name"] != opt.name:
            name = meta["name"] if meta["name"].isidentifier() else repr(meta["name"])
            raise DataError(f"checkpoint {path} holds {name} state, the model is "
                            f"compiled with {opt.name}")
        state: dict[str, Any] = {k[2:]: v for k, v in arrays.items() if k.startswith("o/")}
        want = opt.state_dict()
        want.pop("iteration", None)
        for k, v in want.items():
            if k not in state or np.asarray(v).shape != state[k].shape:
                raise DataError(f"checkpoint {path} lacks optimizer state '{k}' of shape "
                                f"{np.asarray(v).shape}")
            if not np.all(np.isfinite(state[k])):
                raise DataError(f"checkpoint {path}: optimizer state '{k}' contains NaN or Inf")
        state["iteration"] = meta["iteration"]
        opt.load_state_dict(state)
    model.weights.load_state({k[2:]: v for k, v in arrays.items() if k.startswith("w/")},
                             strict=True, source=path)
    if header.get("layer_state") and opt is not None:
        layers = {n.name: n.layer for n in model.train_executor.graph.nodes}
        for name, st in header["layer_state"].items():
            if name in layers and layers[name].run_state():
                layers[name].load_run_state(st)
    return int(header["epoch"]), int(header["iteration"])
