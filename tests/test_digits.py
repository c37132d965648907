"""Real data shipped inside a package: scikit-learn's digits (and its small tables) as
fleet data kinds, their partitions, the shipped configs, and a short simulate run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from device_runtime.errors import ConfigError
from experiments.config import check_config, load_config
from experiments.data import make_fleet_data
from tests.configs import mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")
sklearn_datasets = pytest.importorskip("sklearn.datasets")


def _tv_to_global(fleet) -> np.ndarray:
    """Each device's total-variation distance between its label mix and the fleet's,
    from the raw labels (not FleetData.stats)."""
    hists = np.array([np.bincount(np.concatenate([d.y_train, d.y_test]), minlength=10)
                      for d in fleet.devices], np.float64)
    glob = hists.sum(0) / hists.sum()
    return 0.5 * np.abs(hists / hists.sum(1, keepdims=True) - glob).sum(1)


def test_digits_are_the_packaged_images_in_natural_file_order_blocks():
    raw = sklearn_datasets.load_digits()
    fleet = make_fleet_data("digits")  # natural: 13 contiguous blocks of file order
    assert len(fleet) == 13 and fleet.input_shape == (1, 8, 8) and fleet.num_classes == 10
    bounds = np.cumsum([0] + [d.num_train + d.num_test for d in fleet.devices])
    assert bounds[-1] == 1797
    for d, a, b in zip(fleet.devices, bounds[:-1], bounds[1:]):
        x = np.concatenate([d.x_train, d.x_test]).reshape(-1, 64)
        assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
        # the device's samples are exactly the rows a:b of the file, pixels / 16
        want = raw.data[a:b] / 16
        order = np.lexsort(x.T), np.lexsort(want.T)
        np.testing.assert_array_equal(x[order[0]], want[order[1]].astype(np.float32))
        assert sorted(np.concatenate([d.y_train, d.y_test])) == sorted(raw.target[a:b])
    # file order is not writer order: its blocks are near-uniform in labels
    assert _tv_to_global(fleet).max() < 0.1


def test_dirichlet_alpha_sets_the_label_skew_of_digits():
    tv = {a: _tv_to_global(make_fleet_data("digits", 40, 0, partition="dirichlet", alpha=a,
                                           min_size=10)) for a in (0.1, 0.3, 100.0)}
    assert tv[0.1].mean() > tv[0.3].mean() > 0.35 > 0.15 > tv[100.0].mean()
    iid = _tv_to_global(make_fleet_data("digits", 40, 0, partition="iid"))
    assert iid.mean() < 0.2
    k2 = make_fleet_data("digits", 20, 0, partition="k_classes", k=2)
    assert all(len(set(np.concatenate([d.y_train, d.y_test]))) == 2 for d in k2.devices)


def test_sklearn_tables_are_standardized_and_natural_blocks_follow_file_order():
    f = make_fleet_data("sklearn", 3, 0, dataset="iris")  # iris is sorted by class
    assert f.input_shape == (4,) and f.num_classes == 3
    assert [set(np.concatenate([d.y_train, d.y_test])) for d in f.devices] == [{0}, {1}, {2}]
    x = np.concatenate([np.concatenate([d.x_train, d.x_test]) for d in f.devices])
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(0), 1, atol=1e-4)


def test_shipped_real_data_configs_load():
    cfg = load_config(os.path.join(CONFIGS, "digits.toml"))
    assert cfg["data"]["kind"] == "digits"
    for name in ("leaf_femnist.toml", "leaf_shakespeare.toml"):
        cfg = load_config(os.path.join(CONFIGS, name))
        assert cfg["data"]["kind"] == "leaf" and os.path.isabs(cfg["data"]["path"])
    with pytest.raises(ConfigError, match="digits has 1797 samples"):
        check_config({"data": {"kind": "digits", "devices": 1798}})
    with pytest.raises(ConfigError, match="cannot cut 1797 samples into 1798 devices"):
        make_fleet_data("digits", 1798)


def test_without_the_extra_a_digits_config_is_one_line_naming_it(tmp_path):
    code = ("import sys; sys.modules['sklearn'] = None; sys.modules['sklearn.datasets'] = None\n"
            "from experiments.cli import main\n"
            f"sys.exit(main(['simulate', {os.path.join(CONFIGS, 'digits.toml')!r}, "
            f"'--out', {str(tmp_path / 'out')!r}]))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=600)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "nnfleet[data]" in lines[0] and "scikit-learn" in lines[0], p.stderr
    assert not (tmp_path / "out").exists()


QUICK = """
name = "digits_quick"
seed = 0
rounds = 4
algorithms = ["fedavg"]
[data]
kind = "digits"
devices = 8
partition = "iid"
""" + mlp((1, 8, 8), hidden=32) + """
[train]
lr = 0.1
batch-size = 16
local-epochs = 2
[server]
fraction-train = 1.0
[fleet]
kernels = "numpy"
workers = 1
"""


def test_a_short_simulate_run_on_digits_learns(tmp_path):
    pytest.importorskip("flwr")
    cfg = tmp_path / "quick.toml"
    cfg.write_text(QUICK)
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "experiments.cli", "simulate", str(cfg), "--out",
                        str(out), "--quiet"], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())["algorithms"]["fedavg"]
    per_round = [s["accuracy_per_round"][str(r)] for r in range(1, 5)]
    # 10 classes (chance 0.1); measured 0.33, 0.55, 0.76, 0.77 on this machine
    assert s["final_accuracy"]["mean"] > 0.6 and per_round[-1] > per_round[0]
    assert s["devices_trained"] == 8
