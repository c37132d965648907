"""A fleet's data on disk, packed so a worker reads one device with a few ``pread`` calls.

Workers never hold the whole fleet: each device's arrays are read when it runs and
dropped after, so a worker's RSS is its baseline plus one device (the devices' "own
storage"). ``pread`` goes through the page cache without mapping the file, so pages read
for earlier devices never count in a later device's RSS (a memory map would).
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from typing import Any

import numpy as np

SPLITS = ("x_train", "y_train", "x_test", "y_test")


def write_store(fleet: Any, path: str) -> dict[str, Any]:
    """Pack ``fleet`` (``experiments.data.FleetData``) into ``path``; returns the index."""
    os.makedirs(path, exist_ok=True)
    index: dict[str, Any] = {"name": fleet.name, "input_shape": list(fleet.input_shape),
                             "num_classes": int(fleet.num_classes), "splits": {}, "devices": []}
    offsets = {s: 0 for s in SPLITS}
    with ExitStack() as stack:
        files = {s: stack.enter_context(open(os.path.join(path, f"{s}.bin"), "wb"))
                 for s in SPLITS}
        for d in fleet.devices:
            entry: dict[str, Any] = {"id": d.device_id}
            for s in SPLITS:
                dtype = np.float32 if s[0] == "x" else np.int64
                a = np.ascontiguousarray(getattr(d, s), dtype=dtype)
                files[s].write(a.tobytes())
                entry[s] = [offsets[s], list(a.shape)]
                offsets[s] += a.nbytes
            index["devices"].append(entry)
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(index, f)
    return index


class StoreReader:
    """Reads one device's four arrays from a packed store (used inside workers)."""

    def __init__(self, path: str) -> None:
        with open(os.path.join(path, "index.json")) as f:
            self.index = json.load(f)
        self.fds = {s: os.open(os.path.join(path, f"{s}.bin"), os.O_RDONLY) for s in SPLITS}

    def __len__(self) -> int:
        return len(self.index["devices"])

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        entry = self.index["devices"][i]
        out = []
        for s in SPLITS:
            off, shape = entry[s]
            dtype = np.float32 if s[0] == "x" else np.int64
            n = int(np.prod(shape)) * np.dtype(dtype).itemsize
            buf = os.pread(self.fds[s], n, off) if n else b""
            out.append(np.frombuffer(buf, dtype=dtype).reshape(shape).copy())
        return out[0], out[1], out[2], out[3]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}
