"""Checkpoints hold arrays and JSON only, each file under a checksum: a crafted, truncated or
edited checkpoint is refused in one line, and nothing in one is ever unpickled."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest

from device_runtime.errors import ConfigError

flwr = pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict  # noqa: E402

from experiments.resume import Checkpointer  # noqa: E402
from server.strategies import make_strategy  # noqa: E402
from server.strategy_state import decode_into, encode  # noqa: E402


class _Marker:
    """Unpickling this writes a file: the proof that a checkpoint ran code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _checkpoint(tmp_path) -> tuple[Checkpointer, str]:
    rng = np.random.default_rng(0)
    ck = Checkpointer(str(tmp_path / "out"), "fp")
    ck.start_fresh()
    live = os.path.join(ck.live, "fedadam")
    os.makedirs(live)
    for d in range(3):
        np.savez(os.path.join(live, f"{d}.npz"), w=rng.normal(size=(4, 3)).astype(np.float32))
    strategy = make_strategy("fedadam")
    strategy.m_t = {"fc:weight": rng.normal(size=(4, 3)).astype(np.float32)}
    strategy.v_t = {"fc:weight": rng.random((4, 3)).astype(np.float32)}
    tree, arrays = encode(strategy)
    state = RecordDict()
    state["server-arrays"] = ArrayRecord({"fc:weight": Array(rng.normal(size=(4, 3)))})
    state["server-strategy-arrays"] = ArrayRecord({k: Array(a) for k, a in arrays.items()})
    state["server-state"] = ConfigRecord({"round": 2, "strategy": json.dumps(tree)})
    path = ck.save({"algorithm": "fedadam", "round": 2}, state, "fedadam")
    return ck, path


def test_a_checkpoint_reads_back_what_was_saved(tmp_path):
    ck, path = _checkpoint(tmp_path)
    snap = Checkpointer(str(tmp_path / "out"), "fp").load()
    assert snap.path == path and snap.meta["round"] == 2
    state = snap.server_state()
    s = make_strategy("fedadam")
    arrays = {k: a.numpy() for k, a in state["server-strategy-arrays"].items()}
    decode_into(s, json.loads(str(state["server-state"]["strategy"])), arrays)
    saved = np.load(os.path.join(path, "server-strategy.npz"))
    assert np.array_equal(s.m_t["fc:weight"], saved["m_t/a0"])
    assert s.eta == make_strategy("fedadam").eta and callable(s.train_metrics_aggr_fn)
    assert not [n for n in os.listdir(path) if n.endswith((".bin", ".pkl"))]


def _refused(tmp_path, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as e:
        Checkpointer(str(tmp_path / "out"), "fp").load()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("victim", ["states/1.npz", "server-arrays.npz", "server-strategy.npz"])
def test_a_truncated_file_is_refused(tmp_path, victim):
    _, path = _checkpoint(tmp_path)
    f = os.path.join(path, victim)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    _refused(tmp_path, f"damaged: {victim} differs from its checksum")


def test_a_flipped_float_and_an_edited_round_are_refused(tmp_path):
    _, path = _checkpoint(tmp_path)
    f = os.path.join(path, "states", "2.npz")
    data = bytearray(open(f, "rb").read())
    at = bytes(data).find(np.load(f)["w"].tobytes())  # the weights, stored as they are
    assert at > 0
    data[at + 5] ^= 0x01  # one bit of one weight: still a valid .npz, other numbers
    open(f, "wb").write(bytes(data))
    _refused(tmp_path, "states/2.npz differs from its checksum")
    _, path = _checkpoint(tmp_path / "again")
    meta = json.load(open(os.path.join(path, "meta.json")))
    meta["round"] = 1
    json.dump(meta, open(os.path.join(path, "meta.json"), "w"))
    _refused(tmp_path / "again", "meta.json differs from its checksum")


def test_a_crafted_pickle_is_refused_and_never_run(tmp_path):
    _, path = _checkpoint(tmp_path)
    marker = tmp_path / "pwned"
    with open(os.path.join(path, "server-strategy.bin"), "wb") as f:
        pickle.dump(_Marker(str(marker)), f)  # what an old checkpoint held: now refused
    _refused(tmp_path, "server-strategy.bin is not in its manifest")
    assert not marker.exists()
    # an npz member that is a pickle cannot be loaded either (allow_pickle=False)
    _, path = _checkpoint(tmp_path / "npz")
    np.savez(os.path.join(tmp_path, "evil.npz"),
             w=np.array([_Marker(str(marker))], dtype=object))
    os.replace(os.path.join(tmp_path, "evil.npz"), os.path.join(path, "server-arrays.npz"))
    _refused(tmp_path / "npz", "server-arrays.npz differs from its checksum")
    assert not marker.exists()


def test_strategy_state_round_trips_arrays_lists_and_records():
    s = make_strategy("fedavgm")
    rng = np.random.default_rng(1)
    s.momentum_vector = [rng.normal(size=3), rng.normal(size=(2, 2)).astype(np.float32)]
    s.current_arrays = ArrayRecord({"a": Array(rng.normal(size=4))})
    tree, arrays = encode(s)
    json.dumps(tree)  # JSON all the way down
    assert "train_metrics_aggr_fn" not in tree  # functions are config, not state
    fresh = make_strategy("fedavgm")
    decode_into(fresh, json.loads(json.dumps(tree)), arrays)
    for a, b in zip(s.momentum_vector, fresh.momentum_vector):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert np.array_equal(fresh.current_arrays["a"].numpy(), s.current_arrays["a"].numpy())


class _PowerCut(Exception):
    pass


def test_checkpoint_bytes_reach_the_disk_before_its_name_and_a_cut_keeps_the_last(
        tmp_path, monkeypatch):
    import experiments.resume as R

    ck, first = _checkpoint(tmp_path)
    events: list[tuple[str, str]] = []
    real_rename = os.rename

    def rename(a, b):
        events.append(("rename", os.path.basename(str(b))))
        real_rename(a, b)

    monkeypatch.setattr(R, "sync_filesystem", lambda p: events.append(("syncfs", p)))
    monkeypatch.setattr(R, "fsync_dir", lambda p: events.append(("fsync-dir", p)))
    monkeypatch.setattr(R.os, "rename", rename)
    second = ck.save({"algorithm": "fedadam", "round": 3})
    kinds = [e[0] for e in events]
    # the new folder's bytes are flushed, then it is renamed into place, then its folder
    # entry is made durable, and only then is the old checkpoint renamed away
    assert kinds[:3] == ["syncfs", "rename", "fsync-dir"], events
    assert events[0][1].startswith(os.path.join(ck.root, ".tmp-"))
    assert events[1][1] == os.path.basename(second) and events[2][1] == ck.root
    assert events[3] == ("rename", ".old-" + os.path.basename(first))

    # a power cut before the rename: the disk holds the last complete checkpoint and debris
    def cut(p):
        raise _PowerCut

    monkeypatch.setattr(R, "sync_filesystem", cut)
    with pytest.raises(_PowerCut):
        ck.save({"algorithm": "fedadam", "round": 4})
    snap = Checkpointer(str(tmp_path / "out"), "fp").load()
    assert snap.path == second and snap.meta["round"] == 3
    assert not [d for d in os.listdir(ck.root) if d.startswith(".tmp-")]  # debris removed
