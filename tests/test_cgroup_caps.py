"""RAM caps the kernel enforces (issue 14, item 1): every device process of the fleet runs in
a memory cgroup limited at its cap, so a device that allocates past its cap in one native
call (which the runtime's 5 ms sampler cannot interrupt) is killed by the kernel and reported
``cap-exceeded`` with ``oom`` in the reason, while every other device's update, metrics and
state stay bit for bit those of a run without the fault. The cgroup folders go away with the
engine, on Ctrl-C too, and those of a SIGKILLed engine with the next engine's start.

Skipped where this process cannot make a memory cgroup (the tests that need one)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from device_runtime.device import initial_weights, load_state
from device_runtime.errors import ConfigError
from experiments.data import make_fleet_data
from experiments.fleet import DeviceProfile, FleetEngine, Job
from experiments.fleet.cgroup import HEADROOM, open_run
from experiments.fleet.fault_kinds import OOM_OVERSHOOT

MODEL = json.dumps([
    {"type": "input", "name": "in", "input_shape": "20"},
    {"type": "fully_connected", "name": "fc1", "unit": 16, "activation": "relu"},
    {"type": "fully_connected", "name": "fc2", "unit": 10},
])
N = 6
VICTIM = 2  # on worker 0, with devices 0 and 4
CAP = 320 << 20
CONFIG = {"model": MODEL, "lr": 0.1, "batch-size": 8, "local-epochs": 1, "seed": 3,
          "server-round": 1}
EXACT = ("num-examples", "trained", "steps", "train-loss", "loss-before", "accuracy-before",
         "loss-after", "accuracy-after")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cgroups():
    cg, why = open_run("auto")
    if cg is None:
        pytest.skip(why)
    cg.close()


def _engine(isolation: str, cgroups: str = "auto") -> FleetEngine:
    fleet = make_fleet_data("synthetic_fedprox", N, seed=1, dim=20, samples=40)
    profiles = [DeviceProfile(i, CAP, 1.0, 1.0, 0.0) for i in range(N)]
    return FleetEngine(fleet, profiles, workers=2, isolation=isolation, kernels="numpy",
                       faults={"timeout": 60.0}, cgroups=cgroups, quiet=True)


def _run(eng: FleetEngine, key: str, fault: str | None = None) -> dict:
    res = eng.run({0: (initial_weights(MODEL, 0), CONFIG)},
                  [Job("train", d, 0, fault if d == VICTIM else None) for d in range(N)], key)
    assert sorted(r.device for r in res) == list(range(N))
    return {r.device: r for r in res}


def _state(eng: FleetEngine, key: str, device: int) -> dict | None:
    path = os.path.join(eng.workdir, "states", key, f"{device}.npz")
    return load_state(path)[0] if os.path.exists(path) else None


@pytest.mark.parametrize("isolation", ["worker", "fork"])
def test_one_native_allocation_past_the_cap_is_killed_by_the_kernel(isolation):
    _cgroups()
    with _engine(isolation, "require") as eng:
        assert eng.cgroups is not None
        run_dir = eng.cgroups.run
        ref = _run(eng, "ref")
        pids = [p.pid for p in eng.procs]
        got = _run(eng, "oom", "oom")
        r = got[VICTIM]
        print(f"\n[{isolation}, cgroup v{eng.cgroups.version}] device {VICTIM}: "
              f"status {r.status}: {r.error}")
        assert r.status == "cap-exceeded" and r.shared is None and r.fault == "oom"
        assert "oom" in r.error and "killed by the kernel" in r.error
        assert r.metrics["cap-exceeded"] == 1 and r.metrics["trained"] == 0
        # the kernel's own counters: one OOM kill, and never more charged than the limit
        # (but for what the dying process may still take to exit)
        limit, used = (int(x.replace(",", "")) for x in
                       re.search(r"limit of ([\d,]+) bytes .*max usage ([\d,]+) bytes",
                                 r.error).groups())
        assert "oom_kill 1" in r.error and 0 < used <= limit + (1 << 20)
        assert _state(eng, "oom", VICTIM) is None  # its round is lost, not half-saved
        for d in range(N):  # every other device: bit for bit the run without the fault
            if d == VICTIM:
                continue
            assert got[d].error is None and got[d].shared == ref[d].shared, d
            assert {k: got[d].metrics[k] for k in EXACT} == \
                {k: ref[d].metrics[k] for k in EXACT}
            assert 0 < got[d].metrics["cgroup-limit"]
            mine, theirs = _state(eng, "oom", d), _state(eng, "ref", d)
            assert mine is not None and theirs is not None and mine.keys() == theirs.keys()
            assert all((mine[k] == theirs[k]).all() for k in mine)
        eng.wait_ready()  # the pool is whole again (worker isolation: a respawned worker)
        changed = [a != p.pid for a, p in zip(pids, eng.procs)]
        assert changed == ([True, False] if isolation == "worker" else [False, False])
        assert eng.kernel_summary()["cgroups"]["version"] == eng.cgroups.version
    assert not os.path.exists(run_dir)  # closing removed every cgroup folder


def test_without_cgroups_the_same_allocation_goes_through_and_is_seen_after_it():
    # what the kernel prevents: with the runtime's guard alone the process really grows
    # past its cap by the whole allocation before the guard reports it
    with _engine("worker", "off") as eng:
        assert eng.cgroups is None and eng.kernel_summary()["cgroups"]["mode"] == "off"
        r = _run(eng, "oom", "oom")[VICTIM]
        assert r.error is None and r.metrics["cap-exceeded"] == 1
        assert r.metrics["peak-rss"] > CAP + OOM_OVERSHOOT // 2 > CAP + HEADROOM
        assert "cgroup-limit" not in r.metrics


def test_cgroups_key_is_checked_and_named():
    from experiments.config import check_config
    with pytest.raises(ConfigError) as e:
        check_config({"fleet": {"cgroups": "sometimes"}})
    assert "cgroups" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        open_run("sometimes")
    assert "fleet.cgroups" in str(e.value)


ENGINE = """
import signal, sys, time
# as in a terminal (a shell's background job would start with Ctrl-C ignored)
signal.signal(signal.SIGINT, signal.default_int_handler)
from experiments.data import make_fleet_data
from experiments.fleet import DeviceProfile, FleetEngine
fleet = make_fleet_data("synthetic_fedprox", 4, seed=1, dim=20, samples=40)
with FleetEngine(fleet, [DeviceProfile(i, 256 << 20, 1.0, 1.0, 0.0) for i in range(4)],
                 workers=1, kernels="numpy", cgroups="require", quiet=True) as eng:
    eng.wait_ready()
    print(eng.cgroups.run, flush=True)
    time.sleep(600)
"""


def _engine_process() -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", ENGINE], stdout=subprocess.PIPE, text=True,
                         env=env, start_new_session=True)
    assert p.stdout is not None
    run_dir = p.stdout.readline().strip()
    assert os.path.isdir(run_dir), run_dir
    # the worker makes its cgroup when its Setup message arrives, after it is ready: wait
    end = time.monotonic() + 120
    while not [n for n in os.listdir(run_dir) if n.startswith("w")]:  # the worker's cgroup
        assert time.monotonic() < end, f"no worker cgroup in {run_dir} after 120 s"
        time.sleep(0.05)
    return p, run_dir


def test_no_cgroup_folder_is_left_after_ctrl_c_or_a_killed_engine():
    _cgroups()
    p, run_dir = _engine_process()
    os.killpg(p.pid, signal.SIGINT)  # Ctrl-C reaches the engine and its workers
    p.wait(timeout=120)
    assert not os.path.exists(run_dir)
    p, run_dir = _engine_process()
    os.kill(p.pid, signal.SIGKILL)  # no cleanup at all: the next engine's start sweeps it
    p.wait(timeout=120)
    assert os.path.isdir(run_dir)
    cg, _ = open_run("require")
    assert cg is not None
    cg.close()
    assert not os.path.exists(run_dir) and not os.path.exists(cg.run)


def test_where_no_cgroup_can_be_made_the_run_says_so_once_and_falls_back(monkeypatch, capfd):
    import experiments.fleet.cgroup as cgroup
    monkeypatch.setattr(cgroup, "_mounts", lambda: [])  # a machine without cgroup mounts
    monkeypatch.setattr(cgroup, "_NOTED", [])
    with pytest.raises(ConfigError) as e:
        open_run("require")
    assert "no memory cgroup can be made" in str(e.value) and "\n" not in str(e.value)
    cg, why = open_run("auto")
    assert cg is None and "runtime's own guard" in why
    for _ in range(2):
        cgroup.note_once(why)
    err = capfd.readouterr().err
    assert err.count("no memory cgroup can be made") == 1 and len(err.splitlines()) == 1
