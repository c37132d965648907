"""A harness for tests that run Flower's own processes (SuperLink, SuperNodes, ``flwr run``)
on 127.0.0.1: every process is started in its own session and killed with all its
descendants when the test ends, pass or fail; every wait is bounded."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from contextlib import contextmanager
from typing import Iterator

import pytest

psutil = pytest.importorskip("psutil")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
RUN_TIMEOUT = 240  # seconds for one `flwr run`
NEEDS_FLOWER = pytest.mark.skipif(not shutil.which("flower-superlink", path=BIN + os.pathsep
                                                  + os.environ.get("PATH", "")),
                                  reason="flower-superlink not installed (pip install .[flower])")


def exe(name: str) -> str:
    return shutil.which(name, path=BIN + os.pathsep + os.environ.get("PATH", "")) or name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
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
def flower_home(tmp_path, name: str, port: int) -> Iterator[dict]:
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


def start(h: dict, args: list[str], log: str) -> subprocess.Popen:
    p = subprocess.Popen(args, env=h["env"], cwd=ROOT, stdout=open(h["home"] / log, "w"),
                         stderr=subprocess.STDOUT, start_new_session=True,
                         stdin=subprocess.DEVNULL)
    h["procs"].append(p)
    return p


def start_superlink(h: dict, port: int, *flags: str) -> subprocess.Popen:
    """An insecure SuperLink on 127.0.0.1:``port`` (``flags`` besides, e.g. ``--simulation``),
    returned once it listens."""
    sl = start(h, [exe("flower-superlink"), "--insecure", *flags,
                   "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                   "--port", str(port)], "superlink.log")
    wait_port(port, sl)
    return sl


def start_supernode(h: dict, superlink: int, node_config: str, log: str) -> subprocess.Popen:
    """An insecure SuperNode of the SuperLink on port ``superlink`` with its ``--node-config``,
    logging to ``log``, returned once it listens."""
    port = free_port()
    sn = start(h, [exe("flower-supernode"), "--insecure", "--superlink",
                   f"127.0.0.1:{superlink}", "--host", "127.0.0.1", "--port", str(port),
                   "--max-wait-time", "60", "--node-config", node_config], log)
    wait_port(port, sn)
    return sn


def flwr_run(h: dict, connection: str, overrides: str, extra: list[str]) -> str:
    r = subprocess.run([exe("flwr"), "run", ROOT, connection, "--stream", "-c", overrides,
                        *extra], env=h["env"], cwd=ROOT, capture_output=True, text=True,
                       timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    return out


class ClientAppPeaks:
    """Samples the RSS of every ``flwr-clientapp`` process every 20 ms while in use.

    ``roots`` (pid -> name) attributes each ClientApp to the SuperNode that started it
    (``owner``); ``watch`` (name -> pid) samples other processes too (``peak``)."""

    def __init__(self, roots: dict[int, str] | None = None,
                 watch: dict[str, int] | None = None) -> None:
        import threading

        self.rss: dict[int, int] = {}
        self.owner: dict[int, str] = {}
        self.peak: dict[str, int] = {}
        self._roots, self._watch = roots or {}, watch or {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for name, pid in self._watch.items():
                try:
                    rss = psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak.get(name, 0), rss)
            for p in psutil.process_iter(["pid", "cmdline"]):
                if any("flwr-clientapp" in a for a in p.info["cmdline"] or []):
                    try:
                        rss = p.memory_info().rss
                        if p.pid not in self.owner:
                            for q in p.parents():
                                if q.pid in self._roots:
                                    self.owner[p.pid] = self._roots[q.pid]
                    except psutil.Error:
                        continue
                    self.rss[p.pid] = max(self.rss.get(p.pid, 0), rss)

    def by_owner(self, name: str) -> list[int]:
        """The peaks of the ClientApp processes ``name`` started."""
        return sorted(r for pid, r in self.rss.items() if self.owner.get(pid) == name)

    def __enter__(self) -> "ClientAppPeaks":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def app_config() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["tool"]["flwr"]["app"]["config"]


def device_files(folder, devices: int) -> None:
    """Devices 0 .. ``devices``-1's data of the pyproject's app, each in its own file
    ``folder/device<i>.npz`` (what a board's ``data-path`` names)."""
    from experiments.fleet.flower_data import partition

    cfg = app_config()
    for i in range(devices):
        partition(i, cfg).save(os.path.join(folder, f"device{i}.npz"))
