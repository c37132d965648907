"""The weight store: every parameter is a view into one contiguous float32 buffer.

One buffer makes the shared part of a model cheap to send (a slice, no copies) and makes
weight bytes exact to report. Files are ``.npz`` with keys ``<layer>:<param>``, written
to a temporary file and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import lzma
import math
import os
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from . import rss
from .errors import DataError, ModelError
from .init import initialize


def memory_available() -> int:
    """Bytes this machine can still give (:func:`rss.memory_available`). Models and files
    that would need more are refused before anything is allocated: with overcommit, a huge
    allocation succeeds and the process is killed only when it touches the pages."""
    return rss.memory_available()


@dataclass(frozen=True)
class ParamInfo:
    key: str
    shape: tuple[int, ...]
    offset: int  # in elements
    trainable: bool
    init: str
    fan_in: int
    fan_out: int

    @property
    def size(self) -> int:
        return int(math.prod(self.shape))


class WeightStore:
    """Parameters of a model, in declaration order."""

    def __init__(self, params: list[ParamInfo]) -> None:
        self.params = {p.key: p for p in params}
        total = sum(p.size for p in params)
        avail = memory_available()
        if 4 * total > avail:
            big = max(params, key=lambda p: p.size)
            raise ModelError(f"the model's weights need {4 * total:,} bytes ('{big.key}' alone is "
                             f"{big.shape}), more than the {avail:,} bytes of memory available")
        self.buffer = np.zeros(total, dtype=np.float32)
        self._views = {p.key: self.buffer[p.offset:p.offset + p.size].reshape(p.shape)
                       for p in params}

    @classmethod
    def from_specs(cls, specs: list[tuple[str, tuple[int, ...], bool, str, int, int]]
                   ) -> WeightStore:
        params, off = [], 0
        for key, shape, trainable, init, fi, fo in specs:
            params.append(ParamInfo(key, tuple(shape), off, trainable, init, fi, fo))
            off += int(math.prod(shape))
        return cls(params)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    def keys(self) -> list[str]:
        return list(self._views)

    def get(self, key: str) -> np.ndarray:
        return self._views[key]

    def initialize(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        for p in self.params.values():
            initialize(self._views[p.key], p.init, p.fan_in, p.fan_out, rng, p.key)

    def state(self) -> dict[str, np.ndarray]:
        """Copies of every parameter, keyed ``layer:param``."""
        return {k: v.copy() for k, v in self._views.items()}

    def load_state(self, arrays: dict[str, np.ndarray], strict: bool = True,
                   source: str = "") -> None:
        """Copy arrays in; shapes must match exactly; with ``strict`` every key is required."""
        where = f" in {source}" if source else ""
        unknown = sorted(set(arrays) - set(self._views))
        if unknown:
            raise DataError(f"weight {unknown[0]!r}{where} is not a parameter of this model "
                            f"(it has: {', '.join(list(self._views)[:6])}...)")
        for k, a in arrays.items():
            a = np.asarray(a)
            if a.dtype.kind not in "fiu":
                raise DataError(f"weight {k!r}{where} has dtype {a.dtype}, expected float32")
            if a.shape != self._views[k].shape:
                raise DataError(f"weight {k!r}{where} has shape {a.shape}, "
                                f"expected {self._views[k].shape}")
            if not np.all(np.isfinite(a)):
                raise DataError(f"weight {k!r}{where} contains NaN or Inf")
        if strict:
            missing = [k for k in self._views if k not in arrays]
            if missing:
                raise DataError(f"weight '{missing[0]}' is missing{where}")
        for k, a in arrays.items():
            self._views[k][...] = a

    def save(self, path: str, before_rename: Callable[[], None] | None = None) -> None:
        """Write every parameter to ``path`` (the views themselves: no copy of the model)."""
        save_npz_atomic(path, dict(self._views), before_rename=before_rename)

    def load(self, path: str, strict: bool = True) -> None:
        self.load_state(load_npz(path), strict=strict, source=path)


def atomic_write(path: str, write: Callable[[BinaryIO], object], suffix: str = ".tmp",
                 fsync: bool = True, before_rename: Callable[[], None] | None = None) -> None:
    """Write a file through ``write(f)`` into a private (0600) temporary file in the same
    folder, fsync, then rename over ``path``: a crash leaves the old file or the new one,
    never half. ``fsync=False`` for files that need to survive a kill only, not a power cut
    (a fleet's per-round device states: an fsync each would cost milliseconds).
    ``before_rename`` may raise to abandon the new file (the old one stays)."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(folder):
        raise DataError(f"cannot write {path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npz_atomic(path: str, arrays: dict[str, np.ndarray], fsync: bool = True,
                    before_rename: Callable[[], None] | None = None) -> None:
    """Write ``arrays`` to ``path`` as ``.npz``, atomically (no pickles: loaders refuse them,
    and object arrays, which only a pickle could hold, are refused here)."""
    for k, a in arrays.items():
        if np.asarray(a).dtype.hasobject:
            raise TypeError(f"array {k!r} holds Python objects: not saved (no pickles)")
    # no allow_pickle= argument: numpy 1.x's savez has none and would store it as an array
    atomic_write(path, lambda f: write_npz(f, arrays), ".npz", fsync, before_rename)


def write_npz(f: BinaryIO, arrays: dict[str, np.ndarray], chunk: int = 1 << 20) -> None:
    """What ``np.savez`` writes (an uncompressed zip of ``.npy`` members, read by
    ``np.load``), streamed from the arrays' own memory ``chunk`` bytes at a time: saving
    a model makes no copy of it (``np.savez`` goes through 16 MiB copies, and with numpy
    1.x would store an ``allow_pickle`` argument as one more array)."""
    import zipfile

    fmt = np.lib.format
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for key, a in arrays.items():
            a = np.asarray(a)
            if not a.flags.c_contiguous:  # the weight store's views are: no copy
                a = a.copy(order="C")
            with z.open(key + ".npy", "w", force_zip64=True) as out:
                fmt.write_array_header_2_0(out, fmt.header_data_from_array_1_0(a))
                flat = a.reshape(-1).data.cast("B") if a.size else memoryview(b"")
                for i in range(0, len(flat), chunk):
                    out.write(flat[i:i + chunk])


# what zipfile, zlib and numpy raise on a truncated, corrupted or hostile archive
_NPZ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError, OSError,
               EOFError, ValueError, KeyError, struct.error, NotImplementedError, RuntimeError)


def load_npz(path: str, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file; errors name the file and the problem.

    Nothing is allocated before it is checked: every member must be a ``.npy`` array
    (Python objects are never unpickled), its header must agree with its size in the
    archive, and the archive's uncompressed size must fit in ``max_bytes`` (default: the
    memory available). So a truncated, corrupted or hostile file (a zip bomb, a header
    that claims terabytes) is a one-line DataError, never a crash.
    """
    if not os.path.isfile(path):
        raise DataError(f"file not found: {path}")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic == b"\x93NUMPY":
            raise DataError(f"{path} is a single .npy array, not an .npz archive of named arrays")
        with zipfile.ZipFile(path) as zf:
            return _read_members(path, zf, memory_available() if max_bytes is None else max_bytes)
    except DataError:
        raise
    except _NPZ_ERRORS as e:
        msg = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read {path} as .npz: {msg}") from None


def _read_members(path: str, zf: zipfile.ZipFile, max_bytes: int) -> dict[str, np.ndarray]:
    infos = zf.infolist()
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise DataError(f"{path} would expand to {total:,} bytes, more than the {max_bytes:,} "
                        "bytes of memory available (corrupted, or a zip bomb)")
    out: dict[str, np.ndarray] = {}
    for info in infos:
        key = info.filename[:-4]
        if not info.filename.endswith(".npy"):
            raise DataError(f"{path}: member {info.filename!r} is not a .npy array")
        if key in out:
            raise DataError(f"{path}: array {key!r} appears twice")
        with zf.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise DataError(f"{path}: array {key!r} has .npy format version {version}")
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
            if dtype.hasobject:
                raise DataError(f"{path}: array {key!r} holds Python objects; nnfleet never "
                                "loads pickles")
            need, have = math.prod(shape) * dtype.itemsize, info.file_size - f.tell()
            if need != have:
                raise DataError(f"{path}: array {key!r} is truncated or corrupted: its header "
                                f"says {shape} {dtype} ({need:,} bytes), it holds {have:,}")
            f.seek(0)
            out[key] = np.lib.format.read_array(f, allow_pickle=False)
    return out
