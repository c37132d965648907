"""A result must not depend on numba's cache: the first run of a fresh clone (empty cache)
compiles the kernels once, in a process of its own before any device trains, and gives the
same accuracies and device statuses as a run that loads them from the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from experiments.fleet.kernels import numba_available
from tests.configs import mlp, synthetic_images

pytest.importorskip("flwr")
pytestmark = pytest.mark.skipif(not numba_available(), reason="numba is not installed")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = """
name = "cold"
seed = 0
rounds = 2
algorithms = ["fedavg", "fedper"]
""" + synthetic_images(6, (3, 16, 16), samples=60) + mlp((3, 16, 16), 32, head=True) + """
[train]
lr = 0.05
batch-size = 16

[server]
fraction-train = 1.0

[fleet]  # both kinds: 96 MiB devices run the numpy kernels, the others numba's
ram-cap = {dist = "choice", values = ["96MiB", "224MiB", "1GiB"]}
"""


def _simulate(cfg: str, out: str, cache: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=ROOT, FLWR_TELEMETRY_ENABLED="0")
    env.pop("NNFLEET_NO_NUMBA", None)
    # no timeout: compiling every kernel takes ~15 s idle, minutes on a loaded machine
    return subprocess.run([sys.executable, "-m", "experiments.cli", "simulate", cfg, "--out", out,
                           "--workers", "2"], env=env, capture_output=True, text=True,
                          check=False)


def test_a_cold_cache_gives_the_same_run_as_a_warm_one(tmp_path):
    # Prepare: a new, empty numba cache
    cfg = tmp_path / "cold.toml"
    cfg.write_text(CONFIG)
    cache = str(tmp_path / "numba-cache")
    # Execute: the first run compiles, the second loads
    runs = []
    for name in ("cold", "warm"):
        done = _simulate(str(cfg), str(tmp_path / name), cache)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append((done, json.loads((tmp_path / name / "summary.json").read_text())))
    (cold, a), (warm, b) = runs
    # Assert: compiled once, before any worker, with a progress line; then only loaded
    assert "compiling numba kernels into" in cold.stderr and "first run only" in cold.stderr
    assert "compiling numba kernels" not in warm.stderr
    ca, cb = a["fleet"]["kernels"]["compile"], b["fleet"]["kernels"]["compile"]
    assert ca["cold"] and ca["compiled"] > 0 and ca["cache_dirs"][0].startswith(cache)
    assert not cb["cold"] and cb["compiled"] == 0 and cb["loaded"] > 0
    # the same numbers and the same statuses, device by device
    for algo in ("fedavg", "fedper"):
        assert a["algorithms"][algo]["final_accuracy_by_device"] == \
            b["algorithms"][algo]["final_accuracy_by_device"]
        assert a["algorithms"][algo]["train_status"] == b["algorithms"][algo]["train_status"]
    keys = ("device", "ram_cap", "kernels", "trained", "rounds_trained", "failures")
    assert [{k: d[k] for k in keys} for d in a["devices"]] == \
        [{k: d[k] for k in keys} for d in b["devices"]]
    assert {d["kernels"] for d in a["devices"]} == {"numba", "numpy"}
    assert all(d["trained"] for d in a["devices"]), a["devices"]
    # every worker loaded its kernels from the cache: none carries a compiler's heap
    for s in (a, b):
        per_kind = s["fleet"]["kernels"]["per_kind"]
        assert max(per_kind["numba"]["worker_rss"]) < ca["rss"], (per_kind, ca)
