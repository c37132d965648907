"""drop_last=False: an epoch's last partial batch is trained on (as PyTorch's DataLoader
does), inside the full batch's memory plan, with the numbers of a run at that batch size."""

import numpy as np
import pytest

import device_runtime as dr
from device_runtime.data import synthetic_classification
from device_runtime.device import DeviceConfig
from device_runtime.model import Model
from device_runtime.spec import layer
from device_runtime.tail import _same_structure, tail_executor


def _mlp(seed: int = 1) -> Model:
    return Model([layer("input", "in", input_shape="1:1:12"),
                  layer("fully_connected", "fc1", unit=7, activation="relu"),
                  layer("fully_connected", "fc2", unit=3)], seed=seed)


def _cnn(seed: int = 1) -> Model:
    return Model([layer("input", "in", input_shape="2:6:6"),
                  layer("conv2d", "c1", filters=3, kernel_size=3, padding=1),
                  layer("batch_normalization", "bn1", activation="relu"),
                  layer("pooling2d", "p1", pooling="max", pool_size=2, stride=2, flatten=True),
                  layer("fully_connected", "fc", unit=4)], seed=seed)


def _cnn_big(seed: int = 1) -> Model:  # blocks over 64 KiB at batch 8: swap candidates
    return Model([layer("input", "in", input_shape="3:24:24"),
                  layer("conv2d", "c1", filters=8, kernel_size=3, padding=1),
                  layer("batch_normalization", "bn1", activation="relu"),
                  layer("pooling2d", "p1", pooling="max", pool_size=2, stride=2),
                  layer("conv2d", "c2", filters=8, kernel_size=3, padding=1, flatten=True),
                  layer("fully_connected", "fc", unit=4)], seed=seed)


def _numpy_sgd(w: dict, x: np.ndarray, y: np.ndarray, lr: float, batch: int,
               epochs: int) -> dict:
    """An independent reference: the MLP above, softmax cross-entropy (mean over the
    batch), plain SGD, batches in file order, the last partial one kept (float64)."""
    w1, b1 = w["fc1:weight"].astype(np.float64), w["fc1:bias"].astype(np.float64)
    w2, b2 = w["fc2:weight"].astype(np.float64), w["fc2:bias"].astype(np.float64)
    n = len(y)
    for _ in range(epochs):
        for a in range(0, n, batch):
            xb, yb = x[a:a + batch].astype(np.float64), y[a:a + batch]
            h = np.maximum(xb @ w1 + b1, 0)
            z = h @ w2 + b2
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(yb)), yb] -= 1
            dz = p / len(yb)
            dh = (dz @ w2.T) * (h > 0)
            w2, b2 = w2 - lr * h.T @ dz, b2 - lr * dz.sum(0)
            w1, b1 = w1 - lr * xb.T @ dh, b1 - lr * dh.sum(0)
    return {"fc1:weight": w1, "fc1:bias": b1, "fc2:weight": w2, "fc2:bias": b2}


def test_kept_last_batch_matches_an_independent_numpy_reference():
    x, y = synthetic_classification((12,), 3, 21, seed=4)  # 2 batches of 8 and one of 5
    m = _mlp()
    w0 = m.get_weights()
    m.compile(batch_size=8, optimizer="sgd", lr=0.2)
    h = m.fit(x, y, epochs=3, shuffle=False, drop_last=False)
    assert h.sizes == [8, 8, 5] * 3 and h.examples == 63
    ref = _numpy_sgd(w0, x.reshape(21, 12), y, 0.2, 8, 3)
    for k, v in m.get_weights().items():
        np.testing.assert_allclose(v.reshape(ref[k].shape), ref[k], rtol=2e-5, atol=2e-6)
    # dropping it is a different run: 2 steps an epoch, and other weights
    d = _mlp()
    d.compile(batch_size=8, optimizer="sgd", lr=0.2)
    assert d.fit(x, y, epochs=3, shuffle=False).sizes == [8, 8] * 3
    assert not np.allclose(d.get_weights()["fc1:weight"], m.get_weights()["fc1:weight"])


# (model, swap, batch, the partial batch r, whether the batch-r graph makes the same layer
# decisions as the full one: then every tensor sits at its full-batch offset)
@pytest.mark.parametrize("build,swap,batch,r,same", [
    (_mlp, "off", 8, 7, True), (_mlp, "off", 8, 5, False),  # at 5 fc1 fuses its gradient
    (_cnn, "off", 8, 5, True), (_cnn_big, "on", 12, 9, True),
    (_cnn_big, "on", 8, 5, False)])  # at 5 conv c2 takes all 5 samples as one chunk
def test_the_partial_step_is_the_step_of_a_model_compiled_at_that_batch(build, swap, batch, r,
                                                                         same):
    x, y = synthetic_classification(build().input_shape, 3 if build is _mlp else 4, batch + r,
                                    seed=2)
    full = build()
    full.compile(batch_size=batch, optimizer="adam", lr=0.01, swap=swap)
    h = full.fit(x, y, epochs=1, shuffle=False, drop_last=False)
    assert h.sizes == [batch, r]
    # the same two steps by hand: one at the full batch, then a model compiled at batch r
    a = build()
    a.compile(batch_size=batch, optimizer="adam", lr=0.01)
    a.fit(x[:batch], y[:batch], steps=1, shuffle=False)
    b = build()
    b.set_weights(a.get_weights())
    b.compile(batch_size=r, optimizer=a.optimizer)  # Adam's moments and step count go on
    hb = b.fit(x[batch:], y[batch:], steps=1, shuffle=False)
    assert h.losses[1] == hb.losses[0]
    for k, v in full.get_weights().items():
        np.testing.assert_array_equal(v, b.get_weights()[k], err_msg=k)
    # inside the full batch's plan: the same pool, never more of it
    main, tail = full.train_executor, tail_executor(full, r)
    assert tail.pool is main.pool and tail.step.plan.pool_bytes <= main.step.plan.pool_bytes
    assert (swap == "on") == bool(main.slots)
    assert _same_structure(tail.step, main.step) == same
    if same:
        assert tail.step.plan is main.step.plan and tail.swap_device is main.swap_device
        for i, rec in enumerate(tail.step.records):
            assert rec.nbytes <= main.step.records[i].nbytes
            assert tail.view(i).ctypes.data == main.view(i).ctypes.data


def test_micro_batches_weight_the_partial_batch_by_its_pieces():
    # a RAM cap's gradient accumulation (micro-batches of 4 for batch 8): the partial batch
    # of 7 runs as 4 + 3 and must equal one step at batch 7
    x, y = synthetic_classification((12,), 3, 15, seed=5)
    m = _mlp()
    m.compile(batch_size=8, optimizer="sgd", lr=0.2)
    m.micro_batch = 4  # what the cap fit picks when it needs to
    m.fit(x, y, epochs=1, shuffle=False, drop_last=False)
    r = _mlp()
    r.compile(batch_size=8, optimizer="sgd", lr=0.2)
    r.fit(x[:8], y[:8], steps=1, shuffle=False)
    r.compile(batch_size=7, optimizer="sgd", lr=0.2)
    r.fit(x[8:], y[8:], steps=1, shuffle=False)
    for k, v in m.get_weights().items():
        np.testing.assert_allclose(v, r.get_weights()[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_fewer_samples_than_a_batch_is_one_partial_batch():
    x, y = synthetic_classification((12,), 3, 5, seed=1)
    m = _mlp()
    m.compile(batch_size=8, optimizer="sgd", lr=0.1)
    with pytest.raises(dr.errors.DataError, match="fewer than one batch"):
        m.fit(x, y, epochs=1)
    assert m.fit(x, y, epochs=2, drop_last=False).sizes == [5, 5]


def test_the_device_config_keeps_the_last_batch_unless_told():
    assert DeviceConfig().drop_last is False
    assert DeviceConfig.from_mapping({"drop-last": True}).drop_last is True


def test_a_device_round_keeps_or_drops_the_last_batch_as_its_config_says():
    import json

    from device_runtime.device import DeviceData, DeviceSettings, DeviceState, run_device
    from device_runtime.device.trainers import initial_weights

    model = json.dumps([{"type": "input", "name": "in", "input_shape": "12"},
                        {"type": "fully_connected", "name": "fc", "unit": 3}])
    x, y = synthetic_classification((12,), 3, 30, seed=3)
    state = DeviceState(0, DeviceData(x[:21], y[:21], x[21:], y[21:]), DeviceSettings())
    out = {}
    for drop in (False, True):
        cfg = {"model": model, "lr": 0.1, "batch-size": 8, "local-epochs": 2,
               "server-round": 1, "drop-last": drop}
        w, metrics, _ = run_device(state, initial_weights(model, 0), cfg)
        out[drop] = w
        assert metrics["steps"] == (4 if drop else 6)  # 21 = 2 x 8 + 5, two epochs
    assert not np.allclose(out[False]["fc:weight"], out[True]["fc:weight"])
