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
import os
import struct
from typing import Any

import numpy as np

from .errors import ConfigError, DataError
from .model import Model
from .weights import atomic_write

MAGIC = b"NNFLCKPT"
VERSION = 1
_PRE = struct.Struct("<8sIQ")  # magic, version, header length
_ALIGN = 64


def _layer_state(model: Model) -> dict[str, dict[str, int]]:
    ex = getattr(model, "_train", None)
    if ex is None:
        return {}
    return {n.name: {"calls": int(n.layer.calls)} for n in ex.graph.nodes
            if hasattr(n.layer, "calls")}


def save_checkpoint(path: str, model: Model, epoch: int, iteration: int) -> None:
    """Write ``model``'s weights and optimizer state with ``epoch`` and ``iteration``."""
    arrays: dict[str, np.ndarray] = {f"w/{k}": v for k, v in model.weights.state().items()}
    opt = model.optimizer
    opt_meta: dict[str, Any] | None = None
    if opt is not None:
        state = opt.state_dict()
        opt_meta = {"name": opt.name, "iteration": int(state.pop("iteration", 0))}
        arrays.update({f"o/{k}": np.asarray(v) for k, v in state.items()})
    table, off = [], 0
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
            put(memoryview(a.reshape(-1).view(np.uint8)))
            put(bytes(-a.nbytes % _ALIGN))
        f.write(h.digest())

    atomic_write(path, write, ".ckpt")


def read_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Header and arrays of a checkpoint file, after checking its checksum."""
    if not os.path.isfile(path):
        raise DataError(f"checkpoint not found: {path}")
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
    try:
        header = json.loads(blob[_PRE.size:_PRE.size + hlen])
        start = _PRE.size + hlen
        arrays = {}
        for e in header["arrays"]:
            a = np.frombuffer(blob, dtype=np.dtype(e["dtype"]), offset=start + e["offset"],
                              count=e["nbytes"] // np.dtype(e["dtype"]).itemsize)
            arrays[e["name"]] = a.reshape(e["shape"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"checkpoint {path} has a malformed header: {e}") from None
    return header, arrays


def load_checkpoint(path: str, model: Model) -> tuple[int, int]:
    """Restore weights, optimizer state and layer state into a compiled ``model`` (same
    layers, same optimizer); returns the saved ``(epoch, iteration)``."""
    header, arrays = read_checkpoint(path)
    have = [[k, list(p.shape)] for k, p in model.weights.params.items()]
    if header["params"] != have:
        saved = {k: s for k, s in header["params"]}
        ours = dict((k, s) for k, s in have)
        diff = next((k for k in list(ours) + list(saved) if saved.get(k) != ours.get(k)), "?")
        raise DataError(f"checkpoint {path} is for another model: parameter '{diff}' is "
                        f"{saved.get(diff, 'absent')} there, {ours.get(diff, 'absent')} here")
    meta = header.get("optimizer")
    opt = model.optimizer
    if meta is not None:
        if opt is None:
            raise ConfigError("compile() the model before load_checkpoint: the optimizer "
                              "state needs the optimizer")
        if meta["name"] != opt.name:
            raise DataError(f"checkpoint {path} holds {meta['name']} state, the model is "
                            f"compiled with {opt.name}")
        state: dict[str, Any] = {k[2:]: v for k, v in arrays.items() if k.startswith("o/")}
        want = opt.state_dict()
        want.pop("iteration", None)
        for k, v in want.items():
            if k not in state or np.asarray(v).shape != state[k].shape:
                raise DataError(f"checkpoint {path} lacks optimizer state '{k}' of shape "
                                f"{np.asarray(v).shape}")
        state["iteration"] = meta["iteration"]
        opt.load_state_dict(state)
    model.weights.load_state({k[2:]: v for k, v in arrays.items() if k.startswith("w/")},
                             strict=True, source=path)
    if header.get("layer_state") and opt is not None:
        layers = {n.name: n.layer for n in model.train_executor.graph.nodes}
        for name, st in header["layer_state"].items():
            if name in layers and hasattr(layers[name], "calls"):
                layers[name].calls = int(st["calls"])
    return int(header["epoch"]), int(header["iteration"])
