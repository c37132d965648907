"""``shuffle-seed`` (experiments/seeds.py): the devices' batch order has a seed of its own.
Changing it moves the batch order and nothing else (data, model init, the server's and the
engine's sampling seed); changing ``sampling-seed`` leaves the batch order alone; a config
that sets no sub-seed shuffles as it did when one seed drove sampling and batch order."""

from __future__ import annotations

import zlib

import numpy as np

from device_runtime.device import (
    DeviceConfig,
    DeviceData,
    DeviceState,
    initial_weights,
    run_device,
)
from device_runtime.device.gradients import Gradients
from device_runtime.device.trainers import phase_seed
from experiments.seeds import seed_roles
from tests.test_seeds_roles import _cfg, _fleet, _init, _rc, _same_fleet


def _device(cfg: dict) -> DeviceState:
    (dev_id, x, y, xt, yt), *_ = _fleet(cfg)[0]
    return DeviceState(dev_id, DeviceData(x, y, xt, yt))


def _order(rc: dict, state: DeviceState, rnd: int = 1) -> list[list[int]]:
    """The batches device ``state`` takes in round ``rnd`` (two epochs), as it takes them."""
    c = DeviceConfig.from_mapping({**rc, "server-round": rnd, "local-update": "plain"})
    batches = Gradients(c, state, 4, ()).batches("local")
    per_epoch = -(-int(state.data.y_train.shape[0]) // 4)
    return [next(batches).tolist() for _ in range(2 * per_epoch)]


def _trained(rc: dict, state: DeviceState) -> dict:
    shared = initial_weights(rc["model"], rc["model-seed"])  # fedavg: all of it is shared
    out, _, _ = run_device(state, dict(shared), {**rc, "server-round": 1, "batch-size": 4})
    return out


def test_a_new_shuffle_seed_moves_the_batch_order_and_nothing_else():
    # Prepare
    a, b = _cfg(), _cfg(**{"shuffle-seed": 11})
    # Execute
    ra, rb = _rc(a, "fedavg"), _rc(b, "fedavg")
    # Assert: the same fleet, initial weights and sampling seeds ...
    assert _same_fleet(_fleet(a), _fleet(b))
    assert all(np.array_equal(u, _init(b)[k]) for k, u in _init(a).items())
    assert (ra["seed"], rb["seed"]) == (3, 3)  # the server samples nodes with "seed"
    assert seed_roles(a)["sampling"] == seed_roles(b)["sampling"] == 3  # the engine's draws
    assert {k: v for k, v in ra.items() if k != "shuffle-seed"} == \
        {k: v for k, v in rb.items() if k != "shuffle-seed"}
    assert (ra["shuffle-seed"], rb["shuffle-seed"]) == (3, 11)
    # ... and another batch order on the device, so other trained weights
    st = _device(a)
    oa, ob = _order(ra, st), _order(rb, st)
    assert oa != ob and sorted(sum(oa, [])) == sorted(sum(ob, []))  # the same samples
    wa, wb = _trained(ra, st), _trained(rb, st)
    assert not np.array_equal(wa["fc1:weight"], wb["fc1:weight"])


def test_a_new_sampling_seed_keeps_the_batch_order():
    a, c = _cfg(), _cfg(**{"sampling-seed": 11})
    ra, rc = _rc(a, "fedavg"), _rc(c, "fedavg")
    assert (ra["seed"], rc["seed"]) == (3, 11)  # other nodes sampled ...
    st = _device(a)
    assert _order(ra, st) == _order(rc, st)  # ... the same batches on a device
    wa, wc = _trained(ra, st), _trained(rc, st)
    assert all(np.array_equal(wa[k], wc[k]) for k in wa)  # bit for bit the same training


def test_without_sub_seeds_the_batch_order_is_the_one_seed_drove_before():
    # before shuffle-seed, a device's phase seed was crc32("<seed>/<device>/<round>/<phase>")
    # with the forwarded (sampling) seed; a config with one seed keeps that exact order
    rc = _rc(_cfg(), "fedavg")
    for rnd, phase, dev in ((1, "local", 0), (4, "finetune", 7), (2, "adapt", 3)):
        c = DeviceConfig.from_mapping({**rc, "server-round": rnd})
        assert phase_seed(c, dev, phase) == zlib.crc32(f"3/{dev}/{rnd}/{phase}".encode())
    # a device config from a server that forwards no shuffle-seed (an older server, or
    # Flower's run config): its seed, as before
    old = DeviceConfig.from_mapping({"seed": 5, "server-round": 2})
    assert old.shuffle_seed is None
    assert phase_seed(old, 1, "local") == zlib.crc32(b"5/1/2/local")
