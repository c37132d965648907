"""NNTrainer's own model files (../shared/nntrainer-ini, not copied into the repo).

Every file either loads, plans and trains one step on random data of its input shape
(batch min(INI batch, 8)), or fails with a one-line ModelError/DataError naming what is
not supported. ``RUNS`` lists the files expected to run: all that need no missing file.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

from device_runtime import DataError, ModelError
from device_runtime.cli import main as cli_main
from device_runtime.ini import read_ini
from tests.conftest import SHARED_INI

FILES = sorted(glob.glob(os.path.join(SHARED_INI, "*.ini")))
pytestmark = pytest.mark.skipif(not FILES, reason=f"no NNTrainer INI corpus at {SHARED_INI}")

# file -> the words its error must contain; every other file must train a step
FAILS = {"TransferLearning_Draw_Classification_Training.ini":
         ("MobilenetV2Backbone", "ssd_mobilenet_v2_coco_feature.tflite", "not supported")}


def _random_batch(m, batch: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vocab = [int(s.props["in_dim"]) for s in m.specs if s.type == "embedding"]
    if vocab:  # ids, as float32, valid for every embedding
        x = rng.integers(0, min(vocab), (batch, *m.input_shape)).astype(np.float32)
    else:
        x = rng.normal(size=(batch, *m.input_shape)).astype(np.float32)
    if m.loss_name == "cross_softmax":
        return x, rng.integers(0, m.output_shape[-1], batch)
    return x, rng.random((batch, int(np.prod(m.output_shape)))).astype(np.float32)


@pytest.mark.parametrize("path", FILES, ids=[os.path.basename(p) for p in FILES])
def test_corpus_file_trains_a_step_or_names_what_is_missing(path):
    name = os.path.basename(path)
    if name in FAILS:
        with pytest.raises((ModelError, DataError)) as e:
            read_ini(path).build()
        msg = str(e.value)
        assert "\n" not in msg and all(w in msg for w in FAILS[name]), msg
        return
    # Prepare
    ini = read_ini(path)
    m = ini.build(seed=0)
    batch = min(ini.batch_size or 8, 8)
    m.compile(batch_size=batch, optimizer=ini.optimizer or "sgd", **ini.optimizer_kwargs)
    x, y = _random_batch(m, batch)
    # Execute
    hist = m.fit(x, y, steps=1, shuffle=False)
    plan = m.plan()
    # Assert
    assert len(hist.losses) == 1 and np.isfinite(hist.losses[0])
    assert plan["pool_bytes"] <= 1.05 * plan["lower_bound_bytes"]


def test_corpus_tally():
    runs = [os.path.basename(p) for p in FILES if os.path.basename(p) not in FAILS]
    assert len(runs) == len(FILES) - len(FAILS) >= 19  # 19 of the 20 files


@pytest.mark.parametrize("name", ["Layers_LSTM.ini", "Resnet_resnet18.ini"])
def test_nnfleet_plan_is_within_5_percent_of_the_lower_bound(name, capsys):
    path = os.path.join(SHARED_INI, name)
    assert cli_main(["plan", path, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert plan["pool_bytes"] <= 1.05 * plan["lower_bound_bytes"], plan["pool_bytes"]
    kinds = {t["name"].split(":")[0] for t in plan["tensors"]}
    assert ("LSTMLayer" in kinds) if name == "Layers_LSTM.ini" else ("concatenate_1" in kinds)
