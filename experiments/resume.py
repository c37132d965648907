"""Crash and resume of ``nnfleet simulate``: an atomic checkpoint after every round.

Everything a run needs to go on lives in ``<out>/checkpoint/`` (folders 0700, files 0600)::

    run-<pid>/                     this process's fleet engine folder (the engine's
                                   ``workdir``: its packed data, store/) and
    run-<pid>/states/<algorithm>/<device>.npz  device states as its workers keep them now
                                   (per process: a worker of a killed run that finishes
                                   its task after the kill writes elsewhere; the folders
                                   of killed runs are removed by the next start)
    ckpt-000042/                   the last complete checkpoint:
        meta.json                  config fingerprint, finished algorithms, the algorithm
                                   and round it stands at, bytes of metrics.jsonl so far,
                                   per-round grid figures, timings
        server-arrays.npz          global shared weights          } the ServerApp's
        server-state.json          round, random state, history,  } context.state
                                   the strategy's state (JSON)    } (server/rounds.py)
        server-strategy.npz        the strategy's arrays          }
        states/<device>.npz        every device's personal state (hard links)
        manifest.json              the SHA-256 of every file above

Arrays and JSON only: nothing in a checkpoint is unpickled, so a crafted one cannot run
code. ``--resume`` checks every file against the manifest (and that there is no other) and
refuses, in one line, a checkpoint in which anything differs: a truncated state, a flipped
float, an edited round.

A checkpoint is written into a temporary folder and renamed into place; only then is the
one before renamed away and removed (by a background thread: freeing the inodes of
replaced device states costs about 0.5 ms a file here), so a kill at any moment leaves at
least one complete checkpoint (``.tmp-*`` and ``.old-*`` folders are debris, removed on
the next start). Device states are hard links
to the workers' files: a worker replaces its file (new inode) rather than rewriting it,
so a link keeps the state of the round it was taken at, for the cost of a link.
``metrics.jsonl`` is append-only; the checkpoint keeps its length, and a resumed run cuts
it back to that length before appending.

Durable: before a checkpoint is renamed into place, the file system that holds it is
flushed once (``syncfs``: the new files, the device states linked in, the folders), and
after the rename the folder that holds it is fsynced, so after a power cut the last
checkpoint is either complete or not there (and the one before it is). One ``syncfs`` per
round instead of one fsync per file: fsyncing every short-lived state file made ext4 (with
``discard``) allocate and trim each, 130 ms per checkpoint on the default config.
``Checkpointer(sync=False)`` leaves both out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from device_runtime.errors import ConfigError

VERSION = 2  # 2: no pickle, a manifest of checksums
PREFIX = "ckpt-"
MANIFEST = "manifest.json"


def fingerprint(what: Any) -> str:
    """A hash of everything that decides a run's numbers (config after overrides, ...)."""
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Snapshot:
    """A complete checkpoint on disk."""

    path: str
    meta: dict[str, Any]

    def server_state(self) -> Any:
        """The ServerApp's ``context.state`` (a Flower RecordDict) stored in it, or an empty
        one when it was taken between algorithms."""
        from flwr.app import ConfigRecord, RecordDict

        state = RecordDict()
        if not os.path.exists(os.path.join(self.path, "server-state.json")):
            return state
        try:
            state["server-arrays"] = _arrays(os.path.join(self.path, "server-arrays.npz"))
            strategy = os.path.join(self.path, "server-strategy.npz")
            if os.path.exists(strategy):
                state["server-strategy-arrays"] = _arrays(strategy)
            with open(os.path.join(self.path, "server-state.json")) as f:
                values: dict[str, Any] = json.load(f)
            state["server-state"] = ConfigRecord(values)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"--resume: checkpoint {self.path} has an unreadable server "
                              f"state: {e}") from None
        return state


def _arrays(path: str) -> Any:
    from flwr.app import Array, ArrayRecord

    with np.load(path, allow_pickle=False) as z:
        return ArrayRecord({k: Array(z[k]) for k in z.files})


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(folder: str) -> list[str]:
    """Every file under ``folder``, as paths relative to it."""
    out = []
    for d, _, names in os.walk(folder):
        out += [os.path.relpath(os.path.join(d, n), folder) for n in names]
    return sorted(out)


def check_manifest(path: str) -> None:
    """Refuse (ConfigError) a checkpoint whose files differ from its manifest."""
    try:
        with open(os.path.join(path, MANIFEST)) as f:
            want = json.load(f)["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"--resume: checkpoint {path} has no readable {MANIFEST}: {e}") \
            from None
    have = [n for n in _files(path) if n != MANIFEST]
    extra = sorted(set(have) - set(want))
    missing = sorted(set(want) - set(have))
    if extra or missing:
        what = f"{extra[0]} is not in its manifest" if extra else f"{missing[0]} is missing"
        raise ConfigError(f"--resume: checkpoint {path} is damaged: {what} (run without "
                          f"--resume to start over)")
    for name in have:
        if _sha256(os.path.join(path, name)) != want[name]:
            raise ConfigError(f"--resume: checkpoint {path} is damaged: {name} differs from "
                              f"its checksum (run without --resume to start over)")


class Checkpointer:
    """Writes and reads the checkpoints of one ``--out`` folder."""

    def __init__(self, out: str, fingerprint: str, sync: bool = True) -> None:
        self.sync = sync
        self.root = os.path.join(out, "checkpoint")
        self.work = os.path.join(self.root, f"run-{os.getpid()}")  # the engine's workdir
        self.live = os.path.join(self.work, "states")  # and state_dir
        self.fingerprint = fingerprint
        self.seq = 0
        self._bin = ThreadPoolExecutor(max_workers=1)  # removes old checkpoints

    def start_fresh(self) -> None:
        """Forget any checkpoint of an earlier run in this folder."""
        shutil.rmtree(self.root, ignore_errors=True)
        self._make_work()

    def _make_work(self) -> None:
        for d in (self.root, self.work, self.live):  # makedirs gives mode to the leaf only
            os.makedirs(d, mode=0o700, exist_ok=True)

    def close(self) -> None:
        self._bin.shutdown(wait=True)
        shutil.rmtree(self.work, ignore_errors=True)

    def load(self) -> Snapshot:
        """The last complete checkpoint; a ConfigError names why there is none to use."""
        done = sorted(d for d in os.listdir(self.root) if d.startswith(PREFIX)) \
            if os.path.isdir(self.root) else []
        if not done:
            raise ConfigError(f"--resume: no checkpoint in {self.root} (run without --resume "
                              f"to start)")
        path = os.path.join(self.root, done[-1])
        check_manifest(path)
        try:
            with open(os.path.join(path, "meta.json")) as f:
                meta = json.load(f)
            ok = meta["version"] == VERSION and isinstance(meta["fingerprint"], str)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"--resume: checkpoint {path} is unreadable: {e}") from None
        if not ok:
            raise ConfigError(f"--resume: checkpoint {path} has an unknown format")
        if meta["fingerprint"] != self.fingerprint:
            raise ConfigError(f"--resume: checkpoint {path} was made with a different config, "
                              f"seed, --devices, --rounds, --algorithm or --isolation (run "
                              f"without --resume to start over)")
        self.seq = int(meta["seq"])
        for d in os.listdir(self.root):  # debris of a checkpoint cut short, older ones,
            if d.startswith((".tmp-", ".old-", "run-")) or (d.startswith(PREFIX)
                                                             and d != done[-1]):
                shutil.rmtree(os.path.join(self.root, d), ignore_errors=True)  # old states
        self._make_work()
        return Snapshot(path, meta)

    def save(self, meta: dict[str, Any], server_state: Any = None,
             run_key: str | None = None) -> str:
        """Write a checkpoint: ``meta``, the ServerApp's ``context.state`` if given, and the
        device states of ``run_key``; returns its folder."""
        self.seq += 1
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.root)  # 0700
        if server_state is not None and "server-state" in server_state:
            with _private(os.path.join(tmp, "server-arrays.npz")) as f:
                np.savez(f, **{k: a.numpy() for k, a in server_state["server-arrays"].items()})
            if "server-strategy-arrays" in server_state:
                with _private(os.path.join(tmp, "server-strategy.npz")) as f:
                    np.savez(f, **{k: a.numpy()
                                for k, a in server_state["server-strategy-arrays"].items()})
            values = dict(server_state["server-state"])
            bad = [k for k, v in values.items() if not isinstance(v, (str, int, float, bool))]
            if bad:
                raise TypeError(f"server state {bad[0]!r} is not JSON: not checkpointed")
            _write(os.path.join(tmp, "server-state.json"), json.dumps(values).encode())
        if run_key is not None:
            _link_all(os.path.join(self.live, run_key), os.path.join(tmp, "states"))
        meta = {**meta, "version": VERSION, "fingerprint": self.fingerprint, "seq": self.seq}
        _write(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=1).encode())
        sums = {n: _sha256(os.path.join(tmp, n)) for n in _files(tmp)}
        _write(os.path.join(tmp, MANIFEST), json.dumps({"sha256": sums}, indent=0).encode())
        path = os.path.join(self.root, f"{PREFIX}{self.seq:06d}")
        if self.sync:
            sync_filesystem(tmp)  # every byte of the new checkpoint on disk ...
        os.rename(tmp, path)
        if self.sync:
            fsync_dir(self.root)  # ... before its name is, and its name before the old goes
        for d in os.listdir(self.root):  # the new one is in place: the older ones can go
            if d.startswith(PREFIX) and d < os.path.basename(path):
                old = os.path.join(self.root, ".old-" + d)
                os.rename(os.path.join(self.root, d), old)
                self._bin.submit(shutil.rmtree, old, True)
        return path

    def restore_states(self, snap: Snapshot, run_key: str) -> None:
        """Put the device states of ``snap`` back where the workers read them."""
        live = os.path.join(self.live, run_key)
        shutil.rmtree(live, ignore_errors=True)
        _link_all(os.path.join(snap.path, "states"), live)


def sync_filesystem(path: str) -> None:
    """Flush the file system that holds ``path`` to its disk (Linux ``syncfs``; elsewhere,
    or if it fails, ``os.sync``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _LIBC is None or _LIBC.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in the folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _libc() -> Any:
    try:
        import ctypes
        import ctypes.util

        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return lib if hasattr(lib, "syncfs") else None
    except OSError:
        return None


_LIBC = _libc()


def _private(path: str) -> BinaryIO:
    """A new file open for writing, readable by its owner only."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _write(path: str, data: bytes) -> None:
    with _private(path) as f:
        f.write(data)


def _link_all(src: str, dst: str) -> None:
    """Hard-link every file of ``src`` into a new folder ``dst`` (copy where links fail)."""
    os.makedirs(dst, mode=0o700)
    if not os.path.isdir(src):
        return
    for name in os.listdir(src):
        if name.endswith(".tmp"):  # a state being written when the round ended: not one
            continue
        s, d = os.path.join(src, name), os.path.join(dst, name)
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)
        os.chmod(d, 0o600)


def read_metrics(path: str, length: int) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl`` up to byte ``length``, cutting the file there."""
    size = os.path.getsize(path) if os.path.exists(path) else -1
    if size < length:
        raise ConfigError(f"--resume: {path} has {max(size, 0)} bytes but the checkpoint "
                          f"counts {length}: it was changed since (run without --resume)")
    with open(path, "r+b") as f:
        f.truncate(length)
        data = f.read()
    return [json.loads(line) for line in data.decode().splitlines()]


class RunLog:
    """One simulate run's ``metrics.jsonl``, its records so far, and its checkpoints.

    ``resume=True`` picks the run up from the last checkpoint in ``out`` (errors name why
    that is impossible); otherwise any earlier checkpoint there is dropped.
    """

    def __init__(self, out: str, fingerprint: str, resume: bool = False) -> None:
        self.ckpt = Checkpointer(out, fingerprint)
        path = os.path.join(out, "metrics.jsonl")
        self.snap = self.ckpt.load() if resume else None
        if self.snap is None:
            self.ckpt.start_fresh()
            self.meta: dict[str, Any] = {"finished": [], "timing": {}, "sim": {}}
            self.records: list[dict[str, Any]] = []
        else:
            self.meta = {k: self.snap.meta[k] for k in ("finished", "timing", "sim")}
            self.records = read_metrics(path, int(self.snap.meta["metrics_bytes"]))
        self.sink = open(path, "ab" if self.snap else "wb")  # noqa: SIM115 - closed in close()
        if self.snap is None:  # from now on, a killed run can be resumed
            self._save({"algorithm": None, "round": 0})

    def record(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        self.sink.write((json.dumps(rec) + "\n").encode())

    def resume_point(self, algorithm: str) -> Snapshot | None:
        """The checkpoint to continue ``algorithm`` from (None: start it afresh)."""
        if self.snap is not None and self.snap.meta.get("algorithm") == algorithm:
            self.ckpt.restore_states(self.snap, algorithm)
            return self.snap
        return None

    def round_done(self, algorithm: str, rnd: int, server_state: Any,
                   grid_rounds: list[dict[str, Any]], elapsed: float) -> str:
        """Checkpoint after round ``rnd`` of ``algorithm``."""
        return self._save({"algorithm": algorithm, "round": rnd, "grid_rounds": grid_rounds,
                           "elapsed": elapsed}, server_state, algorithm)

    def algorithm_done(self, algorithm: str, seconds: float, sim_seconds: float) -> str:
        """Checkpoint after ``algorithm`` finished (its device states are gone)."""
        self.meta["finished"].append(algorithm)
        self.meta["timing"][algorithm] = seconds
        self.meta["sim"][algorithm] = sim_seconds
        return self._save({"algorithm": None, "round": 0})

    def _save(self, where: dict[str, Any], server_state: Any = None,
              run_key: str | None = None) -> str:
        self.sink.flush()
        return self.ckpt.save({**self.meta, **where, "metrics_bytes": self.sink.tell()},
                              server_state, run_key)

    def close(self) -> None:
        self.sink.close()
        self.ckpt.close()
