"""The same apps on Flower's own runtimes: ``flwr run`` (simulation) gives the fleet
engine's global weights, and a real SuperLink with two SuperNodes on 127.0.0.1 runs two
rounds with the devices enforcing their RAM caps.

Every Flower process is started in its own session and killed with all its descendants
when the test ends, pass or fail; every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pytest

pytest.importorskip("flwr")
psutil = pytest.importorskip("psutil")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
RUN_TIMEOUT = 240  # seconds for one `flwr run`
pytestmark = pytest.mark.skipif(not shutil.which("flower-superlink", path=BIN + os.pathsep
                                                 + os.environ.get("PATH", "")),
                                reason="flower-superlink not installed (pip install .[flower])")


def _exe(name: str) -> str:
    return shutil.which(name, path=BIN + os.pathsep + os.environ.get("PATH", "")) or name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@contextmanager
def _flower_home(tmp_path, name: str, port: int) -> Iterator[dict]:
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1", PYTHONPATH=ROOT)
    procs: list[subprocess.Popen] = []
    try:
        yield {"env": env, "procs": procs, "home": home}
    finally:
        for p in procs:  # the process and everything it started, even in new sessions
            try:
                kids = psutil.Process(p.pid).children(recursive=True)
            except psutil.Error:
                kids = []
            for q in [*kids, psutil.Process(p.pid) if p.poll() is None else None]:
                if q is not None:
                    try:
                        q.kill()
                    except psutil.Error:
                        pass
            p.wait(timeout=10)
            if p.stdout:
                p.stdout.close()


def _start(h: dict, args: list[str], log: str) -> subprocess.Popen:
    p = subprocess.Popen(args, env=h["env"], cwd=ROOT, stdout=open(h["home"] / log, "w"),
                         stderr=subprocess.STDOUT, start_new_session=True,
                         stdin=subprocess.DEVNULL)
    h["procs"].append(p)
    return p


def _flwr_run(h: dict, connection: str, overrides: str, extra: list[str]) -> str:
    r = subprocess.run([_exe("flwr"), "run", ROOT, connection, "--stream", "-c", overrides,
                        *extra], env=h["env"], cwd=ROOT, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return out


class _ClientAppPeaks:
    """Samples the RSS of every ``flwr-clientapp`` process every 20 ms while in use."""

    def __init__(self) -> None:
        import threading

        self.rss: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for p in psutil.process_iter(["pid", "cmdline"]):
                if any("flwr-clientapp" in a for a in p.info["cmdline"] or []):
                    try:
                        rss = p.memory_info().rss
                    except psutil.Error:
                        continue
                    self.rss[p.pid] = max(self.rss.get(p.pid, 0), rss)

    def __enter__(self) -> "_ClientAppPeaks":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _app_config() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def test_flwr_run_simulation_gives_the_fleet_engine_weights(tmp_path):
    # Prepare: the pyproject's app with 6 devices and 2 rounds, on both runtimes
    out_npz = tmp_path / "flower.npz"
    overrides = {"num-rounds": 2, "data-devices": 6, "result-path": str(out_npz)}
    port = _free_port()
    with _flower_home(tmp_path, "local", port) as h:
        sl = _start(h, [_exe("flower-superlink"), "--insecure", "--simulation",
                        "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                        "--port", str(port)], "superlink.log")
        _wait_port(port, sl)
        # Execute: Flower's simulation runtime...
        text = " ".join(f"{k}={json.dumps(v)}" for k, v in overrides.items())
        _flwr_run(h, "local", text, ["--federation-config", "num-supernodes=6"])
    flower = dict(np.load(out_npz))

    # ...and the fleet engine, with the very same ServerApp and run config
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import server
    from experiments.fleet import FleetEngine
    from experiments.fleet.flower_data import fleet_from_run_config
    from experiments.fleet.grid import FleetGrid, run_serverapp

    logging.getLogger("flwr").setLevel(logging.WARNING)
    rc = {**_app_config(), **overrides, "result-path": ""}
    with FleetEngine(fleet_from_run_config(rc), workers=2) as eng:
        ctx = run_serverapp(server.app, FleetGrid(eng, "fleet"), rc)
    ours = {k: a.numpy() for k, a in ctx.state["final-arrays"].items()}

    # Assert: same keys, same numbers up to float32 summation order
    assert set(ours) == set(flower)
    for k in ours:
        np.testing.assert_allclose(ours[k], flower[k], rtol=1e-5, atol=1e-6)


def test_superlink_and_two_supernodes_on_loopback_enforce_ram_caps(tmp_path):
    # Prepare: two devices' data files; device A has room, device B a cap it cannot meet
    from experiments.fleet.flower_data import partition

    cfg = _app_config()
    for i in range(2):
        partition(i, cfg).save(str(tmp_path / f"device{i}.npz"))
    caps = {0: 1 << 30, 1: 32 << 20}
    result = tmp_path / "deploy.npz"
    port = _free_port()
    with _flower_home(tmp_path, "deploy", port) as h:
        sl = _start(h, [_exe("flower-superlink"), "--insecure",
                        "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                        "--port", str(port)], "superlink.log")
        _wait_port(port, sl)
        for i in range(2):
            node_port = _free_port()
            sn = _start(h, [_exe("flower-supernode"), "--insecure", "--superlink",
                            f"127.0.0.1:{port}", "--host", "127.0.0.1", "--port", str(node_port),
                            "--max-wait-time", "60", "--node-config",
                            f"data-path='{tmp_path / f'device{i}.npz'}' ram-cap={caps[i]}"],
                        f"supernode{i}.log")
            _wait_port(node_port, sn)
        # Execute: two rounds; min-nodes=2 makes the server wait for both SuperNodes
        with _ClientAppPeaks() as peaks:  # what each message's ClientApp process costs
            _flwr_run(h, "deploy", f"num-rounds=2 min-nodes=2 result-path='{result}'", [])
        logs = "".join((h["home"] / f"supernode{i}.log").read_text() for i in range(2))
    # Flower 1.41 starts a ClientApp process per message (measured: 9 for these 2 nodes x 2
    # rounds, each peaking at ~244 MiB with numba's kernels): each must stay far from what a
    # device gives a job (a model cache that grew per message would show here)
    assert len(peaks.rss) >= 2, peaks.rss
    assert max(peaks.rss.values()) < 400 << 20, sorted(peaks.rss.values())
    # Assert: the run finished and only device A's updates were aggregated: B could not
    # train under 32 MiB and replied with an error instead of a silent update
    assert result.exists()
    history = json.loads(result.with_suffix(".json").read_text())
    assert sorted(history["train"]) == ["1", "2"]
    for metrics in history["train"].values():
        assert metrics["ram-cap"] == caps[0]  # a weighted mean over A alone
        assert metrics["cap-exceeded"] == 0
        assert metrics["peak-rss"] <= caps[0]
    assert "MemoryCapExceeded" in logs and f"the RAM cap is {caps[1]:,} bytes" in logs
