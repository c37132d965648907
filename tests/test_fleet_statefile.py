"""The fleet workers' state files (experiments/fleet/statefile.py): the runtime's own
format, read back exactly by the runtime's checked reader and by numpy, and the phase
clocks of ``bench fleet --profile`` (real workers, real tasks)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from device_runtime.device import DeviceData, DeviceState, load_state, save_state
from device_runtime.errors import DataError
from experiments.fleet.statefile import SMALL, _parse, read_state, state_zip, write_state

DTYPES = (np.float32, np.float64, np.int64, np.int32, np.uint8, np.float16, np.bool_)


def _data() -> DeviceData:
    return DeviceData(np.zeros((2, 3), np.float32), np.zeros(2, np.int64),
                      np.zeros((1, 3), np.float32), np.zeros(1, np.int64))


def _random_state(rng: np.random.Generator) -> DeviceState:
    arrays = {}
    for i in range(int(rng.integers(0, 6))):
        shape = tuple(int(d) for d in rng.integers(0, 5, size=int(rng.integers(0, 4))))
        dt = DTYPES[int(rng.integers(len(DTYPES)))]
        a = np.asarray(rng.standard_normal(shape) * 100).astype(dt)  # 0-d: an array too
        arrays[f"{'pvo'[i % 3]}/layer{i}:w é"] = a  # a non-ASCII key too
    meta = {f"k{j}": float(rng.standard_normal()) for j in range(int(rng.integers(0, 3)))}
    return DeviceState(0, _data(), arrays=arrays, meta=meta)


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), k


def test_written_files_read_back_by_every_reader(tmp_path) -> None:
    """Random states (dtypes, 0-d and empty arrays, no arrays at all): what write_state
    writes, the runtime's load_state, np.load and read_state all read back exactly; and
    read_state reads what the runtime's save_state wrote."""
    rng = np.random.default_rng(7)
    for i in range(40):
        st = _random_state(rng)
        ours, theirs = str(tmp_path / f"{i}.npz"), str(tmp_path / f"r{i}.npz")
        write_state(st, ours)
        save_state(st, theirs, fsync=False)
        assert stat.S_IMODE(os.stat(ours).st_mode) == 0o600
        for path in (ours, theirs):
            got = read_state(path)
            assert got is not None
            _same(got[0], st.arrays)
            assert got[1] == st.meta
            arrays, meta = load_state(path)
            _same(arrays, st.arrays)
            assert meta == st.meta
        with np.load(ours) as z:
            _same(dict(z), {**st.arrays, **{f"meta/{k}": np.asarray([v]) for k, v in
                                            st.meta.items()}})
    assert sorted(os.listdir(tmp_path)) == sorted(  # no temporary file left behind
        [f"{i}.npz" for i in range(40)] + [f"r{i}.npz" for i in range(40)])


def test_missing_damaged_and_big(tmp_path) -> None:
    assert read_state(str(tmp_path / "none.npz")) is None
    st = DeviceState(0, _data(), arrays={"p/w": np.arange(12, dtype=np.float32)},
                     meta={"rounds": 3.0})
    path = str(tmp_path / "s.npz")
    write_state(st, path)
    good = open(path, "rb").read()
    for cut in (len(good) - 1, len(good) // 2, 10):  # truncated: the checked reader says so
        with open(path, "wb") as f:
            f.write(good[:cut])
        with pytest.raises(DataError):
            read_state(path)
    flipped = bytearray(good)
    flipped[good.index(b"\x93NUMPY") + 130] ^= 0xFF  # a data byte: the CRC no longer fits
    assert _parse(good) is not None and _parse(bytes(flipped)) is None
    with open(path, "wb") as f:  # so it goes to the runtime's reader, which says so
        f.write(bytes(flipped))
    with pytest.raises(DataError, match="CRC"):
        read_state(path)
    big = DeviceState(0, _data(), arrays={"p/w": np.ones(SMALL // 4 + 1, np.float32)})
    write_state(big, path)  # streamed by the runtime's writer
    _same(read_state(path)[0], big.arrays)


def test_before_rename_keeps_the_old_state(tmp_path) -> None:
    path = str(tmp_path / "s.npz")
    old = DeviceState(0, _data(), meta={"rounds": 1.0})
    write_state(old, path)

    def refuse() -> None:
        raise RuntimeError("over the cap")

    with pytest.raises(RuntimeError):
        write_state(DeviceState(0, _data(), meta={"rounds": 2.0}), path, refuse)
    assert read_state(path) == ({}, {"rounds": 1.0})
    assert os.listdir(tmp_path) == ["s.npz"]
    assert len(state_zip({})) == 22  # an empty archive: the end record alone


def test_profile_clocks_count_every_task() -> None:
    """Worker clocks from real workers: one task per device, every phase timed; the
    engine's own clocks report every result."""
    from device_runtime.device.trainers import initial_weights
    from experiments.data import make_fleet_data
    from experiments.fleet import FleetEngine
    from experiments.fleet.protocol import Job

    model = json.dumps([{"type": "input", "name": "in", "input_shape": "20"},
                        {"type": "fully_connected", "name": "fc", "unit": 10}])
    fleet = make_fleet_data("synthetic_fedprox", 6, seed=1, dim=20, samples=20)
    config = {"model": model, "lr": 0.1, "batch-size": 8, "local-epochs": 1,
              "eval-before": False, "eval-after": False}
    with FleetEngine(fleet, workers=2, kernels="numpy") as eng:
        eng.worker_timings()
        eng.clock.take()
        res = eng.run({0: (initial_weights(model, 0), config)},
                      [Job("train", d, 0) for d in range(6)], "clock")
        assert all(r.error is None for r in res)
        timings = eng.worker_timings()
        head, results = eng.clock.take()
    assert sum(t.tasks for t in timings) == 6 and results == 6
    for phase in ("state read", "device program", "serialize", "state write", "send"):
        assert sum(t.seconds.get(phase, 0.0) for t in timings) > 0, phase
    assert {"send", "wait", "recv"} <= set(head)
    assert sum(head.values()) > 0
