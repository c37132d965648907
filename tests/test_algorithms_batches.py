"""The batch loop of APFL, pFedMe, Per-FedAvg and FedRoD (device_runtime.device.gradients)
honours ``[train] drop-last``: by default (false, as PyTorch's DataLoader) an epoch's last,
smaller batch is a step too, so every sample contributes; with true it is dropped. Each
rule's epoch on 30 samples in batches of 8 (8, 8, 8, 6) is compared with an independent
float64 numpy reference of the paper's update (tests/refs_more.py)."""

from __future__ import annotations

import numpy as np
import pytest

from device_runtime.device import DeviceState, initial_weights, run_device
from tests import refs_more as R
from tests.test_algorithms_more import KEYS, MODEL, _cfg, _close, make_data
from tests.test_algorithms_more_heads import _algo_cfg

N, B = 30, 8  # the train split (make_data's 60% of 50) and the batch: 30 = 3 * 8 + 6


def _batches(drop_last: bool) -> list[np.ndarray]:
    return R.batch_order(0, 0, 1, "local", N, B, 1, drop_last)


def _far(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(np.asarray(a[k], np.float64) - b[k]))) for k in b)


def test_the_reference_batches_are_the_whole_split_or_all_but_the_last():
    keep, drop = _batches(False), _batches(True)
    assert [len(i) for i in keep] == [8, 8, 8, 6] and [len(i) for i in drop] == [8, 8, 8]
    assert sorted(np.concatenate(keep).tolist()) == list(range(N))  # every sample, once
    assert all(np.array_equal(a, b) for a, b in zip(keep, drop))


@pytest.mark.parametrize("drop_last", [False, True])
def test_apfl_epoch_keeps_or_drops_the_last_batch(drop_last):
    d = make_data(1, [0.5, 0.3, 0.2], n=50)
    assert d.y_train.shape[0] == N
    w0 = initial_weights(MODEL, 0)
    rng = np.random.default_rng(3)
    v0 = {k: (a + rng.normal(0, 0.3, a.shape)).astype(np.float32) for k, a in w0.items()}
    arrays = {"apfl/alpha": np.asarray([0.4]), **{"apfl/v/" + k: a for k, a in v0.items()}}
    cfg = _cfg(**{"local-update": "apfl", "batch-size": B, "drop-last": drop_last})
    out, metrics, new = run_device(DeviceState(0, d, arrays=arrays), dict(w0), cfg)
    x, y = d.x_train, d.y_train
    w, v, alpha = R.apfl(w0, v0, 0.4, x, y, _batches(drop_last), 0.1)
    assert metrics["steps"] == (3 if drop_last else 4)
    _close(out, w)
    _close({k: new.arrays["apfl/v/" + k] for k in KEYS}, v)
    assert float(new.arrays["apfl/alpha"][0]) == pytest.approx(alpha, rel=1e-4, abs=1e-6)
    other, _, _ = R.apfl(w0, v0, 0.4, x, y, _batches(not drop_last), 0.1)
    assert _far(other, w) > 1e-3  # the last batch makes a difference the check would see


@pytest.mark.parametrize("drop_last", [False, True])
def test_pfedme_epoch_keeps_or_drops_the_last_batch(drop_last):
    d = make_data(2, [0.6, 0.2, 0.2], n=50)
    w0 = initial_weights(MODEL, 0)
    lam, lr, plr, k = 15.0, 0.05, 0.02, 3
    cfg = _cfg(lr=lr, **{"local-update": "pfedme", "batch-size": B, "drop-last": drop_last,
                         "pfedme-lambda": lam, "pfedme-k": k, "pfedme-lr": plr})
    out, metrics, new = run_device(DeviceState(0, d), dict(w0), cfg)
    x, y = d.x_train, d.y_train
    w, theta = R.pfedme(w0, x, y, _batches(drop_last), lr, plr, lam, k)
    assert metrics["steps"] == (3 if drop_last else 4)
    _close(out, w)
    _close({key: new.arrays["pfedme/" + key] for key in KEYS}, theta)
    other, _ = R.pfedme(w0, x, y, _batches(not drop_last), lr, plr, lam, k)
    assert _far(other, w) > 1e-3


@pytest.mark.parametrize("drop_last", [False, True])
def test_perfedavg_epoch_keeps_or_drops_the_last_batch(drop_last):
    # first order: one meta step per pair of batches, 2 pairs of the 4 batches (the 6 last
    # samples in the second), 1 pair when the last is dropped (3 // 2)
    d = make_data(4, [0.5, 0.25, 0.25], n=50)
    w0 = initial_weights(MODEL, 0)
    cfg = _cfg(lr=0.2, **{"local-update": "perfedavg", "perfedavg-variant": "fo",
                          "perfedavg-beta": 0.1, "batch-size": B, "drop-last": drop_last})
    out, metrics, _ = run_device(DeviceState(0, d), dict(w0), cfg)
    x, y = d.x_train, d.y_train
    w = R.perfedavg_fo(w0, x, y, _batches(drop_last), 0.2, 0.1)
    assert metrics["steps"] == (1 if drop_last else 2)
    _close(out, w)
    assert _far(R.perfedavg_fo(w0, x, y, _batches(not drop_last), 0.2, 0.1), w) > 1e-3


@pytest.mark.parametrize("drop_last", [False, True])
def test_fedrod_epoch_keeps_or_drops_the_last_batch(drop_last):
    d = make_data(5, [0.7, 0.3, 0.0], n=50)  # no class 2 here: its balanced weight is 0
    cfg = _algo_cfg("fedrod", **{"batch-size": B, "drop-last": drop_last})
    init = initial_weights(cfg["model"], 0)
    rng = np.random.default_rng(8)
    head = {"fc2_p:weight": rng.normal(0, 0.5, (8, 3)).astype(np.float32),
            "fc2_p:bias": np.float32([0.2, -0.1, 0.3])}
    shared = {k: init[k] for k in KEYS}
    out, metrics, new = run_device(
        DeviceState(0, d, arrays={"p/" + k: a for k, a in head.items()}), dict(shared), cfg)
    x, y = d.x_train, d.y_train
    w = R.fedrod({**shared, **head}, x, y, _batches(drop_last), 0.1)
    assert metrics["steps"] == (3 if drop_last else 4)
    _close(out, {k: w[k] for k in KEYS})
    _close({k: new.arrays["p/" + k] for k in head}, {k: w[k] for k in head})
    assert _far(R.fedrod({**shared, **head}, x, y, _batches(not drop_last), 0.1), w) > 1e-3
