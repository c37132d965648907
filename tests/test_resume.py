"""Crash and resume: ``nnfleet simulate`` is SIGKILLed for real (mid-round, between two
algorithms, at a random moment), started again with ``--resume`` each time, and finishes
with the records, accuracies and final weights of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from tests.configs import mlp, synthetic_images

pytest.importorskip("flwr")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# FedAdam keeps moments on the server, half of the devices are sampled per round (Python's
# random), FedPer and Ditto keep personal state on the devices: all of it must survive
CONFIG = """
name = "resume"
seed = 2
rounds = 3
algorithms = ["fedper", "ditto"]
""" + synthetic_images(6, (3, 8, 8), samples=40, noise=6.0) + mlp((3, 8, 8), hidden=16) + """
[train]
lr = 0.05
batch-size = 8
local-epochs = 4  # long enough rounds for the kills to land inside them

[server]
strategy = "fedadam"
strategy-args = {eta = 0.05}
fraction-train = 0.5

# every device that trains in round 2 hangs until the timeout: a round that lasts, so a
# kill can be aimed into it (and one the resumed run must replay the same way)
[faults]
timeout = 2.0

[faults.at]
hang = {rounds = [2]}
"""
MEASURED = {"peak-rss", "baseline-rss", "worker-rss", "train-seconds", "sim_seconds"}  # vary
WAIT = 120.0  # seconds any one step may take, at most


def _start(cfg: str, out: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT, FLWR_TELEMETRY_ENABLED="0")
    return subprocess.Popen([sys.executable, "-m", "experiments.simulate", cfg, "--out", out,
                             "--quiet", "--workers", "2", *extra], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def _latest(out: str) -> tuple[dict, int] | tuple[None, int]:
    """The meta of the newest complete checkpoint and its time (None while there is none)."""
    root = os.path.join(out, "checkpoint")
    try:
        last = max(n for n in os.listdir(root) if n.startswith("ckpt-"))
        path = os.path.join(root, last, "meta.json")
        with open(path) as f:
            return json.load(f), os.stat(path).st_mtime_ns
    except (OSError, ValueError):  # none yet, or replaced while we looked
        return None, 0


def mid_round(out: str) -> bool:
    """Round 2 of FedPer is under way (round 1 is checkpointed): its devices hang for the
    faults' timeout, so a kill a moment later lands inside the round."""
    m, _ = _latest(out)
    return bool(m and m["algorithm"] == "fedper" and m["round"] == 1)


def between_algorithms(out: str) -> bool:
    m, _ = _latest(out)
    return bool(m and m["algorithm"] is None and m["finished"] == ["fedper"])


def started(out: str) -> bool:
    return _latest(out)[0] is not None


def _kill_when(proc: subprocess.Popen, out: str, ready, delay: float = 0.0) -> bool:
    """SIGKILL ``proc`` when ``ready(out)`` holds, or ``delay`` seconds after; False if it
    finished first. ``ready`` is checked with ``proc`` stopped (SIGSTOP), so it still holds
    when the kill lands. The orphaned workers must exit by themselves."""
    end = time.monotonic() + WAIT
    while True:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < end, f"{ready.__name__} never happened"
        proc.send_signal(signal.SIGSTOP)
        if ready(out):
            break
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.001)
    if delay:
        proc.send_signal(signal.SIGCONT)
        time.sleep(delay)
        proc.send_signal(signal.SIGSTOP)
        if proc.poll() is not None:
            return False
    kids = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(WAIT) == -signal.SIGKILL
    proc.stderr.close()
    _, alive = psutil.wait_procs(kids, timeout=30)
    assert not alive, f"workers of the killed run still running: {alive}"
    return True


def _records(out: str) -> list[tuple]:
    rows = []
    with open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            rows.append(json.dumps({k: v for k, v in r.items() if k not in MEASURED},
                                   sort_keys=True))
    return sorted(rows)


def _json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _history(path: str) -> dict:
    """The server's aggregated metrics per round (but for measured ones) and rejections."""
    h = _json(path)
    for phase in ("train", "evaluate"):
        h[phase] = {r: {k: v for k, v in m.items() if k not in MEASURED}
                    for r, m in h[phase].items()}
    return h


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err.decode()[-2000:]


def test_killed_at_any_moment_resumes_to_identical_results(tmp_path, capsys):
    # Prepare: the uninterrupted run
    cfg = str(tmp_path / "resume.toml")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    ref, out = str(tmp_path / "ref"), str(tmp_path / "out")
    _finish(_start(cfg, ref))

    # Execute: killed mid-round, between the two algorithms, then at a random moment;
    # each time started again with --resume, the last one left to finish
    rng = random.Random(int(os.environ.get("NNFLEET_TEST_SEED", "0")))
    delay = rng.uniform(0.0, 1.5)
    kills = [(mid_round, 1.0), (between_algorithms, 0.0), (started, delay)]
    proc = _start(cfg, out)
    killed = []
    for ready, wait in kills:
        killed.append(_kill_when(proc, out, ready, wait))
        proc = _start(cfg, out, "--resume")
    _finish(proc)

    # Assert: really killed mid-run (the first two at least), then the same records
    # (but for measured times and memory), accuracies, weights and server history
    assert killed[:2] == [True, True], f"kills that landed: {killed} (random delay {delay:.2f})"
    assert _records(out) == _records(ref)
    assert not [r for r in _records(ref) if '"phase": "rejected"' in r]
    a, b = (_json(os.path.join(d, "summary.json")) for d in (ref, out))
    # the hung devices of round 2 are counted as failures, once each, in both runs
    hung = sum(1 for r in _records(ref) if '"status": "timeout"' in r)
    assert hung > 0 and a["fleet"]["failures"] == b["fleet"]["failures"] == {"timeout": hung}
    for algo in ("fedper", "ditto"):
        for key in ("final_accuracy_by_device", "accuracy_per_round", "train_status"):
            assert a["algorithms"][algo][key] == b["algorithms"][algo][key], (algo, key)
        with np.load(os.path.join(ref, "weights", f"{algo}.npz")) as x, \
                np.load(os.path.join(out, "weights", f"{algo}.npz")) as y:
            assert x.files == y.files and x.files
            for k in x.files:
                assert np.array_equal(x[k], y[k]) and x[k].dtype == y[k].dtype, (algo, k)
        hist = [_history(os.path.join(d, "weights", f"{algo}.json")) for d in (ref, out)]
        assert hist[0] == hist[1] and hist[0]["train"]
    # a checkpoint is only resumed by the run that wrote it: not with one more round,
    # another seed, fewer algorithms or another learning rate
    _refused(cfg, out, capsys, "--rounds", "4")
    _refused(cfg, out, capsys, "--seed", "3")
    _refused(cfg, out, capsys, "--algorithm", "ditto")
    with open(cfg, "w") as f:
        f.write(CONFIG.replace("lr = 0.05", "lr = 0.04"))
    _refused(cfg, out, capsys)
    # the checkpoint is private: folders 0700, files 0600
    for top, dirs, files in os.walk(os.path.join(out, "checkpoint")):
        assert stat.S_IMODE(os.stat(top).st_mode) == 0o700, top
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(top, name)).st_mode) == 0o600, name


def test_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    from experiments.simulate import main

    cfg = tmp_path / "resume.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    # nothing to resume in an empty folder
    assert main([str(cfg), "--out", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--resume: no checkpoint in" in err and err.count("\n") == 1
    # a checkpoint whose meta is not ours
    os.makedirs(out / "checkpoint" / "ckpt-000007")
    (out / "checkpoint" / "ckpt-000007" / "meta.json").write_text("{not json")
    assert main([str(cfg), "--out", str(out), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "ckpt-000007 has no readable manifest.json" in err and err.count("\n") == 1


def _refused(cfg: str, out: str, capsys, *extra: str) -> None:
    from experiments.simulate import main

    assert main([cfg, "--out", out, "--resume", "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert "was made with a different config" in err and err.count("\n") == 1


def test_sigterm_mid_round_stops_workers_and_says_how_to_resume(tmp_path):
    cfg = str(tmp_path / "resume.toml")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    out = str(tmp_path / "out")
    proc = _start(cfg, out)
    end = time.monotonic() + WAIT
    while not mid_round(out):
        assert proc.poll() is None and time.monotonic() < end, "round 2 never started"
        time.sleep(0.01)
    kids = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)  # what a scheduler or `kill` sends; Ctrl-C acts the same
    assert proc.wait(WAIT) == 130
    err = proc.stderr.read().decode()
    proc.stderr.close()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnfleet: interrupted:"), err[-3000:]
    assert "--resume" in lines[0] and os.path.join(out, "checkpoint") in lines[0]
    _, alive = psutil.wait_procs(kids, timeout=30)
    assert not alive, f"workers still running: {alive}"
    # the checkpoint it names is whole: --resume finishes the run
    _finish(_start(cfg, out, "--resume"))
    assert os.path.exists(os.path.join(out, "summary.json"))
