"""``nnfleet simulate --seeds``: one complete run per seed, the figures over seeds recomputed
from the seeds' own summaries (checked by hand against t-table values), and a resume that
goes on seed by seed."""

from __future__ import annotations

import importlib.util
import json
import math
import os

import pytest

from tests.configs import mlp, synthetic_images

CONFIG = """
name = "seeds"
rounds = 2
data-seed = 5  # one fleet for every seed: the seeds vary the model init and the sampling
save-personal-models = false  # (tests/test_personal_models.py saves them)
algorithms = ["fedavg", "fedper", "local"]
""" + synthetic_images(6, (3, 4, 4), samples=30, noise=4.0) + mlp((3, 4, 4), hidden=8) + """
[train]
lr = 0.1
batch-size = 8

[server]
fraction-train = 0.5

[fleet]
workers = 2
kernels = "numpy"
"""
T975_1 = 12.706  # t table: two-sided 95%, 1 degree of freedom


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _sampled(folder: str) -> list[set[int]]:
    """Per round, the devices the server picked for FedAvg's training."""
    per: dict[int, set[int]] = {}
    with open(os.path.join(folder, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r["phase"] == "train" and r["algorithm"] == "fedavg":
                per.setdefault(r["round"], set()).add(r["device"])
    return [per[k] for k in sorted(per)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if importlib.util.find_spec("flwr") is None:
        pytest.skip("needs flwr (pip install .[flower])")
    from experiments.simulate import main

    tmp = tmp_path_factory.mktemp("seeds")
    cfg = tmp / "seeds.toml"
    cfg.write_text(CONFIG)
    out = str(tmp / "out")
    assert main([str(cfg), "--out", out, "--quiet", "--seeds", "0,1"]) == 0
    return str(cfg), out


def test_each_seed_is_a_run_of_its_own_with_the_seeds_it_was_given(run):
    _, out = run
    a, b = (_json(os.path.join(out, f"seed-{s}", "summary.json")) for s in (0, 1))
    assert a["config"]["seed_roles"] == {"data": 5, "model": 0, "sampling": 0, "shuffle": 0}
    assert b["config"]["seed_roles"] == {"data": 5, "model": 1, "sampling": 1, "shuffle": 1}
    # the fixed data-seed: the same fleet (data and profiles) in both runs
    assert a["fleet"]["data"] == b["fleet"]["data"]
    assert a["fleet"]["profiles"] == b["fleet"]["profiles"]
    # the sampling seed differs: other devices picked in some round
    assert _sampled(os.path.join(out, "seed-0")) != _sampled(os.path.join(out, "seed-1"))
    for s in (0, 1):
        for f in ("metrics.jsonl", "report.md", "weights/fedper.npz"):
            assert os.path.getsize(os.path.join(out, f"seed-{s}", f)) > 0
        assert sorted(os.listdir(os.path.join(out, f"seed-{s}", "weights"))) == sorted(
            f"{a}.{x}" for a in ("fedavg", "fedper", "local") for x in ("npz", "json"))


def test_the_figures_over_seeds_worked_out_by_hand(run):
    _, out = run
    agg = _json(os.path.join(out, "summary.json"))
    per_seed = [_json(os.path.join(out, f"seed-{s}", "summary.json")) for s in (0, 1)]
    assert agg["seeds"] == [0, 1] and agg["baseline"] == "fedavg"

    def acc(algo: str) -> list[float]:
        return [s["algorithms"][algo]["final_accuracy"]["mean"] for s in per_seed]

    for algo in ("fedavg", "fedper", "local"):
        m = agg["algorithms"][algo]["final_accuracy"]
        x = acc(algo)
        mean, sd = (x[0] + x[1]) / 2, abs(x[0] - x[1]) / math.sqrt(2)
        assert m["values"] == x and m["n"] == 2
        assert m["mean"] == pytest.approx(mean) and m["std"] == pytest.approx(sd)
        half = T975_1 * sd / math.sqrt(2)
        assert m["ci"] == pytest.approx([mean - half, mean + half], abs=1e-3 * max(sd, 1e-9))
    assert "vs_baseline" not in agg["algorithms"]["fedavg"]
    for algo in ("fedper", "local"):
        vs = agg["algorithms"][algo]["vs_baseline"]
        d = [p - q for p, q in zip(acc(algo), acc("fedavg"))]
        assert vs["n"] == 2 and vs["df"] == 1 and vs["mean_diff"] == pytest.approx(sum(d) / 2)
        if d[0] != d[1]:
            t = (sum(d) / 2) / (abs(d[0] - d[1]) / math.sqrt(2) / math.sqrt(2))
            assert vs["t"] == pytest.approx(t)
            # 1 degree of freedom: Cauchy, two-sided p = 1 - 2 atan(|t|) / pi
            assert vs["p_value"] == pytest.approx(1 - 2 * math.atan(abs(t)) / math.pi)
    report = open(os.path.join(out, "report.md")).read()
    assert "95% CI" in report and "p (paired, two-sided)" in report
    assert "| fedper |" in report and "(seed-0/report.md)" in report
    from experiments.report import have_matplotlib
    if have_matplotlib():
        for f in ("accuracy_over_seeds.png", "accuracy_per_round_over_seeds.png"):
            assert f"![{f}]({f})" in report and os.path.getsize(os.path.join(out, f)) > 0


def test_one_seed_has_no_interval_and_no_test(run):
    from experiments.report import aggregate, render_seeds

    _, out = run
    one = aggregate({0: _json(os.path.join(out, "seed-0", "summary.json"))},
                    ["fedavg", "fedper"], {0: "seed-0"})
    per = one["algorithms"]["fedper"]
    m, vs = per["final_accuracy"], per["vs_baseline"]
    assert m["ci"] is None and vs["p_value"] is None and vs["t"] is None
    text = render_seeds(one, [])
    assert "| n/a | n/a |" in text and "no interval and no test (n/a)" in text


def test_resume_goes_on_seed_by_seed(run, capsys):
    from experiments.simulate import main

    cfg, out = run
    s0 = os.path.join(out, "seed-0", "summary.json")
    s1 = os.path.join(out, "seed-1", "summary.json")
    before0, before1 = open(s0, "rb").read(), _json(s1)
    os.remove(s1)  # as if seed 1 was stopped after its last checkpoint
    capsys.readouterr()
    # Execute: one more seed, resumed
    assert main([cfg, "--out", out, "--seeds", "0,1,2", "--resume"]) == 0
    err = capsys.readouterr().err
    # Assert: seed 0 kept as it was, seed 1 from its checkpoint, seed 2 run
    assert "seed 0 (1/3): done before, kept" in err
    assert "seed 1 (2/3): resumed" in err and "seed 2 (3/3): running" in err
    assert open(s0, "rb").read() == before0
    after1 = _json(s1)
    for algo in ("fedavg", "fedper", "local"):
        assert after1["algorithms"][algo]["final_accuracy_by_device"] == \
            before1["algorithms"][algo]["final_accuracy_by_device"]
    agg = _json(os.path.join(out, "summary.json"))
    assert agg["seeds"] == [0, 1, 2]
    s2 = _json(os.path.join(out, "seed-2", "summary.json"))
    assert agg["algorithms"]["fedper"]["final_accuracy"]["values"][2] == \
        s2["algorithms"]["fedper"]["final_accuracy"]["mean"]
