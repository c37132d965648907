"""Device state files, written and read at the cost of a few system calls.

A fleet worker writes every device's state after every round and reads it back the next
round, so the file is on the path of each device-round. The format stays the device
runtime's own (:func:`device_runtime.device.save_state`: an uncompressed ``.npz`` of the
state's flat arrays, private, replaced atomically) and any ``.npz`` reader reads these
files; only the work is cut. :func:`write_state` builds a small state's whole zip in memory
(stored members, one ``.npy`` each, CRC-32 checked) and writes it with one ``write`` into a
fixed temporary name beside the file, then renames it over the old one; a state too big to
copy in memory goes through the runtime's streaming ``save_state``. :func:`read_state` reads
the file with one ``read`` and parses what :func:`write_state` wrote (every header, size and
CRC checked); any other file (one the runtime wrote, a damaged one) goes to the runtime's
checked reader :func:`device_runtime.device.load_state`, which names the problem.
"""

from __future__ import annotations

import ast
import os
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

SMALL = 256 << 10  # states up to this many bytes of arrays are built in memory
_LOCAL = struct.Struct("<IHHHHHIIIHH")  # local file header, after it the name
_CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
_END = struct.Struct("<IHHHHIIH")
_SIG_LOCAL, _SIG_CENTRAL, _SIG_END = 0x04034B50, 0x02014B50, 0x06054B50
_DOS_TIME, _DOS_DATE = 0, (1980 - 1980) << 9 | 1 << 5 | 1  # 1980-01-01, as zipfile's minimum


def _npy(a: np.ndarray) -> bytes:
    """``a`` as a ``.npy`` file (format 1.0, what ``np.save`` writes for small headers)."""
    fmt = np.lib.format
    header = fmt.header_data_from_array_1_0(a)
    text = repr({"descr": header["descr"], "fortran_order": False,
                 "shape": tuple(header["shape"])})
    # magic + version + 2-byte length + text, padded with spaces to 64 bytes, then "\n"
    pad = -(10 + len(text) + 1) % 64
    head = text + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(head)) + head.encode("latin1") + \
        a.tobytes()


def state_zip(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed zip of one ``<key>.npy`` member per array (an ``.npz``)."""
    parts: list[bytes] = []
    central: list[bytes] = []
    offset = 0
    for key, a in arrays.items():
        a = np.asarray(a)
        if not a.flags.c_contiguous:  # (np.ascontiguousarray would make a 0-d array 1-d)
            a = a.copy(order="C")
        if a.dtype.hasobject:
            raise TypeError(f"array {key!r} holds Python objects: not saved (no pickles)")
        name = (key + ".npy").encode("utf-8")
        data = _npy(a)
        crc = zlib.crc32(data)
        flags = 0x800  # names in UTF-8
        parts.append(_LOCAL.pack(_SIG_LOCAL, 20, flags, 0, _DOS_TIME, _DOS_DATE, crc, len(data),
                                 len(data), len(name), 0) + name)
        parts.append(data)
        central.append(_CENTRAL.pack(_SIG_CENTRAL, 20, 20, flags, 0, _DOS_TIME, _DOS_DATE, crc,
                                     len(data), len(data), len(name), 0, 0, 0, 0, 0o600 << 16,
                                     offset) + name)
        offset += _LOCAL.size + len(name) + len(data)
    cd = b"".join(central)
    end = _END.pack(_SIG_END, 0, 0, len(central), len(central), len(cd), offset, 0)
    return b"".join(parts) + cd + end


def _parse(buf: bytes) -> dict[str, np.ndarray] | None:
    """The arrays of a zip :func:`state_zip` wrote; None for anything else."""
    out: dict[str, np.ndarray] = {}
    pos, n = 0, len(buf)
    while pos + 4 <= n and struct.unpack_from("<I", buf, pos)[0] == _SIG_LOCAL:
        if pos + _LOCAL.size > n:
            return None
        (_, _, flags, method, _, _, crc, csize, usize, nlen, xlen) = _LOCAL.unpack_from(buf, pos)
        start = pos + _LOCAL.size + nlen + xlen
        if method != 0 or csize != usize or flags & 0x8 or start + csize > n:
            return None
        name = buf[pos + _LOCAL.size:pos + _LOCAL.size + nlen].decode("utf-8", "replace")
        data = memoryview(buf)[start:start + csize]
        if not name.endswith(".npy") or name[:-4] in out or zlib.crc32(data) != crc:
            return None
        a = _array(data)
        if a is None:
            return None
        out[name[:-4]] = a
        pos = start + csize
    # then the central directory, and the end record that closes the file: as written
    if n - pos < _END.size:
        return None
    sig, _, _, count, total, cd_size, cd_at, comment = _END.unpack_from(buf, n - _END.size)
    if (sig, count, total, cd_at, cd_size, comment) != (_SIG_END, len(out), len(out), pos,
                                                       n - _END.size - pos, 0):
        return None
    return out


def _array(data: memoryview) -> np.ndarray | None:
    """A ``.npy`` 1.0 member as an array (a copy), None unless its header and size agree."""
    if len(data) < 10 or bytes(data[:8]) != b"\x93NUMPY\x01\x00":
        return None
    hlen = struct.unpack_from("<H", data, 8)[0]
    try:
        header = ast.literal_eval(bytes(data[10:10 + hlen]).decode("latin1"))
        dtype = np.dtype(header["descr"])
        shape = tuple(int(d) for d in header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError):
        return None
    if not isinstance(header, dict) or header.get("fortran_order") or dtype.hasobject:
        return None
    body = data[10 + hlen:]
    if len(body) != int(np.prod(shape)) * dtype.itemsize:
        return None
    return np.frombuffer(body, dtype=dtype).reshape(shape).copy()


def write_state(state: Any, path: str, before_rename: Callable[[], None] | None = None) -> None:
    """Save ``state`` (a ``DeviceState``) to ``path`` as the runtime's state file would be
    (its folder must exist): atomic, private (0600); ``before_rename`` may raise to keep
    the old file."""
    from device_runtime.device.state import save_state, state_arrays

    arrays = state_arrays(state)
    if sum(np.asarray(a).nbytes for a in arrays.values()) > SMALL:
        save_state(state, path, fsync=False, before_rename=before_rename)
        return
    data = state_zip(arrays)
    tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_state(path: str) -> tuple[dict[str, np.ndarray], dict[str, float]] | None:
    """(arrays, meta) of the state file at ``path``; None when there is none."""
    from device_runtime.device.state import load_state, state_from_arrays

    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        buf = os.read(fd, size) if size <= SMALL + (64 << 10) else b""
    finally:
        os.close(fd)
    saved = _parse(buf) if len(buf) == size else None
    if saved is None:  # not one of ours (or too big to read whole): the checked reader
        return load_state(path)
    return state_from_arrays(saved)
