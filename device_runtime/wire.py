"""One message on a stream socket: a JSON header and raw arrays, no pickle.

Used between the thin Flower ClientApp and the device service (``device_runtime.service``)
on the same board. A frame is::

    b"NNFW" | version (u32, little endian) | header length (u64) | header (UTF-8 JSON)
    | the arrays' bytes, one after another, in the header's order

The header is an object with a ``"arrays"`` list of ``[name, dtype, shape]`` entries; every
other key is the message's own. Only plain numeric and boolean dtypes travel (never
``object``), each array's byte count follows from its shape, and the sizes are bounded
before anything is allocated, so a bad or hostile peer costs one :class:`WireError`.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import numpy as np

from .errors import NNFleetError

MAGIC = b"NNFW"
VERSION = 1
_PREFIX = struct.Struct("<4sIQ")
MAX_HEADER = 16 << 20
MAX_PAYLOAD = 8 << 30
DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64",
                    "uint8", "uint16", "uint32", "uint64", "bool"})

Arrays = dict[str, np.ndarray]


class WireError(NNFleetError):
    """A frame that is not one (bad magic, version, sizes, dtype) or a stream cut short."""


def send(sock: socket.socket, header: dict[str, Any], arrays: Arrays | None = None) -> None:
    """Send one frame: ``header`` (JSON-able, without an ``arrays`` key) and ``arrays``."""
    if "arrays" in header:
        raise ValueError("the header key 'arrays' is the frame's own")
    arrays = arrays or {}
    entries = []
    for name, a in arrays.items():
        dt = np.dtype(a.dtype)
        if dt.name not in DTYPES or dt.byteorder == ">":
            raise WireError(f"array {name!r} has dtype {dt.str}, which does not travel")
        entries.append([name, dt.name, list(a.shape)])
    head = json.dumps({**header, "arrays": entries}, allow_nan=True).encode()
    sock.sendall(_PREFIX.pack(MAGIC, VERSION, len(head)) + head)
    for a in arrays.values():
        if a.nbytes:
            sock.sendall(np.ascontiguousarray(a).data.cast("B"))


def _read_into(sock: socket.socket, buf: memoryview, what: str) -> None:
    got = 0
    while got < len(buf):
        n = sock.recv_into(buf[got:])
        if n == 0:
            raise WireError(f"the peer closed the connection in the middle of {what} "
                            f"({got} of {len(buf)} bytes)")
        got += n


def _entry(e: Any) -> tuple[str, np.dtype, tuple[int, ...]]:
    if (not isinstance(e, list) or len(e) != 3 or not isinstance(e[0], str)
            or e[1] not in DTYPES or not isinstance(e[2], list)
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                       for d in e[2])):
        raise WireError(f"bad array entry in the header: {str(e)[:80]}")
    return e[0], np.dtype(e[1]), tuple(e[2])


def recv(sock: socket.socket, max_payload: int = MAX_PAYLOAD) -> tuple[dict[str, Any], Arrays]:
    """Receive one frame: (header without ``arrays``, the arrays by name)."""
    prefix = bytearray(_PREFIX.size)
    _read_into(sock, memoryview(prefix), "a frame's prefix")
    magic, version, hlen = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise WireError("not an nnfleet frame (bad magic)")
    if version != VERSION:
        raise WireError(f"frame version {version}, this runtime reads {VERSION}")
    if hlen > MAX_HEADER:
        raise WireError(f"frame header of {hlen} bytes is over the {MAX_HEADER} limit")
    raw = bytearray(hlen)
    _read_into(sock, memoryview(raw), "a frame's header")
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as e:
        raise WireError(f"frame header is not JSON: {e}") from None
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), list):
        raise WireError("frame header is not an object with an 'arrays' list")
    entries = [_entry(e) for e in header.pop("arrays")]
    total = 0
    for name, dt, shape in entries:
        total += int(np.prod(shape, dtype=object)) * dt.itemsize
        if total > max_payload:
            raise WireError(f"frame arrays exceed {max_payload} bytes (at {name!r})")
    out: Arrays = {}
    for name, dt, shape in entries:
        if name in out:
            raise WireError(f"array {name!r} appears twice in one frame")
        a = np.empty(shape, dt)
        if a.nbytes:
            _read_into(sock, a.reshape(-1).view(np.uint8).data, f"array {name!r}")
        out[name] = a
    return header, out
