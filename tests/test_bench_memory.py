"""The memory benchmark runs end to end (lenet5, 3 steps) and reports sane numbers."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from experiments.bench import memory

MIB = 1024 * 1024
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def test_memory_benchmark_runs_on_lenet5(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    out = tmp_path / "bench.json"
    frameworks = "nnfleet,torch" if HAVE_TORCH else "nnfleet"
    # Execute
    rc = memory.main(["--models", "lenet5", "--optimizers", "sgd", "--steps", "3",
                      "--frameworks", frameworks, "--json", str(out),
                      "--footprint", "none"])  # footprint rows: tests/test_footprint.py
    text = capsys.readouterr().out
    # Assert: the report has the table, a lenet5 row and the targets
    assert rc == 0, text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model"))
    for col in ("pool", "lower", "naive", "plan WS", "nnf WS", "torch WS", "pool/LB", "meas/plan"):
        assert col in lines[header]
    row = lines[header + 2].split()
    assert row[:2] == ["lenet5", "sgd"]
    assert "targets:" in text and "pool <= 1.05 x lower bound" in text
    # Assert: the numbers are sane
    data = json.loads(out.read_text())
    runs = {(r["framework"], r["warm"]): r for r in data["results"]}
    assert set(runs) == {(fw, w) for fw in frameworks.split(",") for w in (False, True)}
    for r in runs.values():
        assert "error" not in r, r
        assert r["rss_after_build"] > 0 and r["peak_rss"] >= r["rss_after_build"]
        assert r["working_set"] >= 0 and r["step_ms"] > 0
        assert len(r["losses"]) == 3 and all(math.isfinite(v) for v in r["losses"])
    for warm in (False, True):
        n = runs[("nnfleet", warm)]
        assert 0 < n["lower_bound_bytes"] <= n["pool_bytes"] <= n["naive_bytes"]
        assert n["planned_working_set_bytes"] == n["pool_bytes"] + n["optimizer_state_bytes"]
        assert n["optimizer_state_bytes"] == 0  # plain SGD (torch.optim.SGD default) keeps no state
    # Warm, nothing but the planned tensors is new: within the benchmark's own target.
    warm = runs[("nnfleet", True)]
    assert abs(warm["working_set"] - warm["planned_working_set_bytes"]) <= 8 * MIB


def test_targets_are_judged_from_the_figures() -> None:
    # Prepare: hand-made results, numbers chosen to sit on either side of each target
    n = {"framework": "nnfleet", "model": "vgg16", "optimizer": "sgd", "warm": False,
         "pool_bytes": 104 * MIB, "lower_bound_bytes": 100 * MIB, "naive_bytes": 300 * MIB,
         "optimizer_state_bytes": 50 * MIB, "planned_working_set_bytes": 154 * MIB,
         "working_set": 200 * MIB, "peak_rss": 500 * MIB, "step_ms": 30.0}
    t = {"framework": "torch", "model": "vgg16", "optimizer": "sgd", "warm": False,
         "working_set": 900 * MIB, "peak_rss": 1200 * MIB, "step_ms": 10.0}
    # Execute
    (row,) = memory.build_rows([n, t])
    checks = {name: (verdict, fig) for name, verdict, fig in memory.check_targets(row)}
    table = memory.format_table([row])
    # Assert: 104/100 <= 1.05; 200 vs 154 is off by 46 > 15.4 MiB; 200/900 <= 1/3; 30/10 > 1.5
    assert checks["pool <= 1.05 x lower bound"] == ("MET", "1.040x")
    assert checks["measured WS within 10% (or 8 MiB) of planned [cold]"][0] == "NOT MET"
    assert checks["WS <= 1/3 of torch's [cold]"] == ("MET", "0.22x")
    assert checks["step time <= 1.5 x torch"][0] == "NOT MET"
    assert "vgg16" in table.splitlines()[2] and "1.04" in table.splitlines()[2]
