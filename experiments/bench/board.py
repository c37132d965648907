"""``nnfleet bench board``: what Flower costs a device, per isolation mode and ClientApp kind.

One run measures, side by side on this machine, a real SuperLink and one SuperNode on
127.0.0.1 in four set-ups: Flower's two isolation modes (``subprocess``: the SuperNode
starts ``flower-superexec``; ``process``: it is started on its own, as a systemd unit
would) times two ClientApps (training inside each message's ``flwr-clientapp`` process, or
forwarding to a device service, ``device_runtime.service``). For each: the idle RSS of the
SuperNode and the SuperExec, each message process's peak RSS and lifetime, the device
service's peak, and the run's wall time. Flower 1.41 starts one ``flwr-clientapp`` per
message in both modes, so what a message costs is paid again each time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _exe(name: str) -> str:
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return shutil.which(name, path=path) or name


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, proc: subprocess.Popen[Any], timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class _Sampler:
    """Peak RSS and lifetime of each process whose command line names a watched program."""

    def __init__(self, names: tuple[str, ...], roots: list[int]) -> None:
        self.names, self.roots = names, set(roots)
        self.peak: dict[tuple[str, int], int] = {}
        self.seen: dict[tuple[str, int], tuple[float, float]] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.02):
            for p in psutil.process_iter(["pid", "cmdline"]):
                cmd = " ".join(p.info["cmdline"] or [])
                name = next((n for n in self.names if n in cmd), None)
                if name is None:
                    continue
                try:
                    if p.pid not in self.roots and not any(
                            q.pid in self.roots for q in p.parents()):
                        continue  # not this set-up's (another run on the machine)
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                key = (name, p.pid)
                self.peak[key] = max(self.peak.get(key, 0), rss)
                first = self.seen.get(key, (time.monotonic(),))[0]
                self.seen[key] = (first, time.monotonic())

    def of(self, name: str) -> list[tuple[int, float]]:
        return [(r, self.seen[k][1] - self.seen[k][0]) for k, r in self.peak.items()
                if k[0] == name]

    def __enter__(self) -> _Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def _app_config() -> dict[str, Any]:
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return dict(tomllib.load(f)["tool"]["flwr"]["app"]["config"])


class Board:
    """Where the device's processes run: here, or in an emulated board's root file system
    (``--board-root``: chroot + qemu, with Flower and nnfleet installed in ``venv`` there)."""

    def __init__(self, root: str | None, venv: str = "/opt/nnfleet-flwr") -> None:
        self.root, self.venv = root, venv

    def tmp(self) -> tuple[str, str]:
        """A new folder: (its path here, its path as the device's processes see it)."""
        if self.root is None:
            path = tempfile.mkdtemp(prefix="nnfleet-board-")
            return path, path
        path = tempfile.mkdtemp(prefix="nnfleet-board-", dir=os.path.join(self.root, "tmp"))
        return path, "/tmp/" + os.path.basename(path)

    def command(self, args: list[str], env: dict[str, str]) -> list[str]:
        """``args`` (a program of the device and its arguments) as run on the device."""
        if self.root is None:
            return [sys.executable if args[0] == "python" else _exe(args[0]), *args[1:]]
        keep = {k: v for k, v in env.items() if k.startswith(("FLWR_", "NNFLEET_"))}
        return ["chroot", self.root, "/usr/bin/env", "-i", f"PATH={self.venv}/bin:/usr/bin:/bin",
                "HOME=/root", "OPENBLAS_NUM_THREADS=1", *(f"{k}={v}" for k, v in keep.items()),
                f"{self.venv}/bin/{args[0]}", *args[1:]]


def run_setup(isolation: str, service: bool, rounds: int, kernels: str,
              board: Board | None = None) -> dict[str, Any]:
    """One SuperLink + one SuperNode (+ SuperExec, + device service): ``rounds`` rounds."""
    from experiments.fleet.flower_data import partition
    from experiments.fleet.procs import kill_trees

    board = board or Board(None)
    tmp, dev_tmp = board.tmp()  # the device's files (data, socket, state, FLWR_HOME)
    home = os.path.join(tmp, "flwr")
    os.makedirs(home)
    port, node_port = _port(), _port()  # the SuperNode's port: its Runtime API
    with open(os.path.join(home, "config.toml"), "w") as f:
        f.write(f'[superlink]\ndefault = "b"\n\n[superlink.b]\naddress = "127.0.0.1:{port}"\n'
                'insecure = true\n')
    env = dict(os.environ, FLWR_HOME=home, FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1", PYTHONPATH=ROOT)
    dev_env = dict(env, FLWR_HOME=dev_tmp + "/flwr")
    if kernels == "numpy":
        dev_env["NNFLEET_NO_NUMBA"] = "1"
    partition(0, _app_config()).save(os.path.join(tmp, "device.npz"))
    data = dev_tmp + "/device.npz"
    procs: list[subprocess.Popen] = []

    def start(args: list[str], device: bool = False) -> subprocess.Popen:
        cmd = board.command(args, dev_env) if device else args
        p = subprocess.Popen(cmd, env=dev_env if device else env, cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, stdin=subprocess.DEVNULL)
        procs.append(p)
        return p

    try:
        sl = start([_exe("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
                    str(port), "--disable-runtime-dependency-installation"])
        _wait(port, sl)
        node_config = f"data-path='{data}' ram-cap=1073741824"
        if service:
            sock = dev_tmp + "/run/device.sock"
            svc = start(["python", "-m", "device_runtime.service", "--socket", sock,
                         "--data-path", data, "--state-dir", dev_tmp + "/state",
                         "--ram-cap", "1GiB"], device=True)
            end = time.monotonic() + 600  # under emulation the imports take minutes
            here = os.path.join(tmp, "run", "device.sock")
            while not os.path.exists(here) and svc.poll() is None and time.monotonic() < end:
                time.sleep(0.1)
            node_config = f"device-socket='{sock}'"
        args = ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--host", "127.0.0.1", "--port", str(node_port), "--node-config", node_config,
                "--isolation", isolation]
        sn = start(args, device=True)
        _wait(node_port, sn, 600)
        if isolation == "process":
            start(["flower-superexec", "--insecure", "--runtime-api-address",
                   f"127.0.0.1:{node_port}"], device=True)
        time.sleep(2.0)  # idle: let the SuperNode and SuperExec settle before sampling
        with _Sampler(("flwr-clientapp", "flower-supernode", "flower-superexec",
                       "device_runtime.service"), [q.pid for q in procs]) as s:
            t0 = time.perf_counter()
            r = subprocess.run([_exe("flwr"), "run", ROOT, "b", "--stream", "-c",
                                f"num-rounds={rounds} min-nodes=1"], env=env, cwd=ROOT,
                               capture_output=True, text=True,
                               timeout=60 * (5 + rounds) * (10 if board.root else 1),
                               stdin=subprocess.DEVNULL)
            wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"flwr run failed: {(r.stdout + r.stderr)[-500:]}")
    finally:
        kill_trees(procs)
        shutil.rmtree(tmp, ignore_errors=True)
    apps = s.of("flwr-clientapp")

    def peak(name: str) -> int:
        return max((rss for rss, _ in s.of(name)), default=0)

    return {"isolation": isolation, "clientapp": "service" if service else "in-process",
            "supernode": peak("flower-supernode"), "superexec": peak("flower-superexec"),
            "service": peak("device_runtime.service"), "messages": len(apps),
            "message-peak": max((r for r, _ in apps), default=0),
            "message-seconds": statistics.median([t for _, t in apps]) if apps else 0.0,
            "wall": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="nnfleet bench board", description=__doc__.split("\n\n")[0],
        epilog="example: nnfleet bench board --rounds 3 --kernels numpy")
    p.add_argument("--rounds", type=int, default=3, help="rounds per set-up (default: 3)")
    p.add_argument("--kernels", choices=["numba", "numpy"], default="numba",
                   help="kernels of the processes that train (default: numba)")
    p.add_argument("--board-root", default=None, help="run the device's processes in this "
                   "emulated board's root file system (scripts/board-check makes it, with "
                   "BOARD_FLOWER=1 Flower in /opt/nnfleet-flwr there; default: none, they "
                   "run on this machine)")
    p.add_argument("--isolation", choices=["both", "subprocess", "process"], default="both",
                   help="Flower isolation modes to measure (default: both)")
    args = p.parse_args(argv)
    board = Board(args.board_root)
    modes = ("subprocess", "process") if args.isolation == "both" else (args.isolation,)
    rows = [run_setup(iso, svc, args.rounds, args.kernels, board)
            for iso in modes for svc in (False, True)]
    mib = 1 << 20
    where = f"emulated board {args.board_root}" if args.board_root else "this machine"
    print(f"Flower 1.41 on one device ({where}), {args.rounds} rounds, {args.kernels} kernels "
          "(peak RSS in MiB; a message's time is its flwr-clientapp process's lifetime)")
    print(f"{'isolation':10s} {'ClientApp':10s} {'supernode':>9s} {'superexec':>9s} "
          f"{'message':>8s} {'msg s':>6s} {'msgs':>5s} {'service':>8s} {'run s':>6s}")
    for r in rows:
        print(f"{r['isolation']:10s} {r['clientapp']:10s} {r['supernode'] / mib:9.0f} "
              f"{r['superexec'] / mib:9.0f} {r['message-peak'] / mib:8.0f} "
              f"{r['message-seconds']:6.2f} {r['messages']:5d} {r['service'] / mib:8.0f} "
              f"{r['wall']:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
