"""``nnfleet bench fleet``: the same federated workload on nnfleet's fleet engine and on
Flower's simulation runtime (``flwr run`` against a local simulation SuperLink), side by
side in one run: device-rounds per second, start-up time, peak memory of the process tree.

The workload: the ServerApp of ``server/`` with FedAvg, ``--devices`` (1,000) devices of
FedProx's Synthetic(0.5, 0.5) with 40 samples each, a logistic regression (60 -> 10),
``--rounds`` (3) rounds, every device trained each round, no evaluation at all. On
the fleet engine every device runs under a RAM cap (``--cap``) that the runtime enforces
(planned step, psutil sampler, high-water mark); Flower cannot cap a client's memory.

- *start-up*: from the start (before any import of the runtime) to the moment the first
  round can begin: Flower's SuperLink, run submission, simulation process, Ray and the
  ServerApp; for nnfleet, data packing and warm workers.
- *device-rounds/s*: devices x rounds / the strategy's own time for all rounds.
- *CPU ms/dr*: CPU time (user + system) of the whole process tree during the rounds, per
  device-round: what the work costs, whatever else the machine runs (on a loaded machine
  the rounds' wall time also depends on how many processes each side has in the queue).
- *peak memory*: the largest sum of RSS over the whole process tree, sampled every 50 ms.

    python -m experiments.bench.fleet                       # 1,000 devices, both sides
    python -m experiments.bench.fleet --devices 10000 --rounds 1 --no-flower
    python -m experiments.bench.fleet --backend ray         # + the fleet engine on Ray
    python -m experiments.bench.fleet --profile             # + where a device-round goes

With ``--backend ray`` the fleet engine also runs on a Ray started in this process (its
start, its processes and its memory counted like the rest), and the bench prints what the
Ray backend costs per device-round: worker time, the head's CPU, the bytes it moves.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, cast

MIB = 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOGREG = json.dumps([{"type": "input", "name": "in", "input_shape": "60"},
                     {"type": "fully_connected", "name": "fc", "unit": 10}])


def workload(devices: int, rounds: int) -> dict[str, Any]:
    """The run config both runtimes get (keys of ``[tool.flwr.app.config]``)."""
    return {"model": LOGREG, "num-rounds": rounds, "fraction-train": 1.0,
            "fraction-evaluate": 0.0, "min-nodes": 2, "personal": "", "seed": 0,
            "local-epochs": 1, "lr": 0.05, "batch-size": 16, "data-devices": devices,
            "eval-before": False, "eval-after": False,  # training only, on both runtimes
            "data-kind": "synthetic_fedprox", "data-seed": 0,
            "data-params": json.dumps({"alpha": 0.5, "beta": 0.5, "samples": 40})}


class TreeSampler:
    """Peak of the summed RSS of a process and all its descendants, sampled in a thread;
    and the CPU time they used (the last seen of each process: one that ends between two
    samples loses at most one interval's CPU)."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil
        self.root = psutil.Process(pid)
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._cpu: dict[int, float] = {}

    def now(self) -> int:
        import psutil
        total = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return 0
        for p in procs:
            try:
                total += p.memory_info().rss
                t = p.cpu_times()
                self._cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        return total

    def cpu(self) -> float:
        """CPU seconds (user + system) the tree used so far (sampled now)."""
        self.now()
        return sum(self._cpu.values())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> "TreeSampler":
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join(timeout=2)
        self.peak = max(self.peak, self.now())


def run_fleet(devices: int, rounds: int, cap: int, workers: int,
              backend: str = "local", profile: bool = False) -> dict[str, Any]:
    """The workload on the fleet engine, in this process plus its workers; ``backend="ray"``:
    on a Ray cluster started here (``ray.init``, counted in start-up and memory)."""
    t0 = time.perf_counter()
    with TreeSampler(os.getpid()) as mem:
        import logging

        import psutil

        from experiments.fleet import DeviceProfile
        from experiments.fleet.backends import open_engine
        from experiments.fleet.flower_data import fleet_from_run_config

        rc = workload(devices, rounds)
        profiles = [DeviceProfile(i, cap, 1.0, 1.0, 0.0) for i in range(devices)]

        def prepare() -> Any:  # runs while the workers warm up
            os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
            import experiments.fleet.grid  # noqa: F401
            import server  # noqa: F401
            return fleet_from_run_config(rc)

        # the model's own kernel specialisations compiled with the rest, before any worker
        with open_engine(backend, fleet=prepare, profiles=profiles, workers=workers,
                         warm_models=[rc["model"]]) as eng:
            startup = time.perf_counter() - t0
            import server
            from experiments.fleet.grid import FleetGrid, run_serverapp

            logging.getLogger("flwr").setLevel(logging.WARNING)
            from server.logs import plain_when_not_a_terminal
            plain_when_not_a_terminal()
            before = mem.now()
            if profile:  # phase clocks (experiments/bench/fleet_profile.py)
                from . import fleet_profile
                grid: FleetGrid = fleet_profile.TimedGrid(eng, "bench")
                cpu0 = fleet_profile.reset(eng)
            else:
                grid = FleetGrid(eng, "bench")
            t1, cpu1 = time.perf_counter(), sum(psutil.Process().cpu_times()[:2])
            tree_cpu = mem.cpu()
            ctx = run_serverapp(server.app, grid, rc)
            rounds_s = time.perf_counter() - t1
            tree_cpu = mem.cpu() - tree_cpu
            # this process only (ServerApp, grid, engine): the part no worker can take over
            head_cpu = sum(psutil.Process().cpu_times()[:2]) - cpu1
            ok = sum(r["ok"] for r in grid.rounds)
            n_workers = len(eng.procs)
            kernels = {k: v["devices"] for k, v in eng.kernel_summary()["per_kind"].items()}
            if profile:
                extra = {"profile": fleet_profile.collect(eng, cast(Any, grid), rounds_s,
                                                          devices * rounds, cpu0)}
            extra = {**(extra if profile else {}),
                     **(ray_figures(eng) if backend == "ray" else {})}
        assert ctx.state["final-arrays"]
    name = "nnfleet fleet engine" + (" on Ray" if backend == "ray" else "")
    return {**extra, "runtime": name, "startup_s": startup, "rounds_s": rounds_s,
            "head_cpu_ms_per_device_round": 1000 * head_cpu / (devices * rounds),
            "device_rounds": devices * rounds, "ok_device_rounds": ok,
            "device_rounds_per_s": devices * rounds / rounds_s, "peak_tree_bytes": mem.peak,
            "cpu_ms_per_device_round": 1000 * tree_cpu / (devices * rounds),
            "before_first_round_bytes": before, "workers": n_workers, "kernels": kernels,
            "ram_cap": cap,
            "caps_enforced": True}


def ray_figures(eng: Any) -> dict[str, Any]:
    """What the Ray backend moved and what each of its workers costs."""
    infos = [s.info for s in eng.slots]
    return {"moved_bytes": dict(eng.moved), "ray_start_s": eng.ray_start_seconds,
            "actor_rss": [int(i["actor_rss"]) for i in infos],
            "worker_rss": [int(i["worker_rss"]) for i in infos],
            "placement": eng.placement()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_flower(devices: int, rounds: int, timeout: float) -> dict[str, Any]:
    """The workload on Flower's simulation runtime (``flwr run``, local SuperLink)."""

    bindir = os.path.dirname(sys.executable)
    exe = {n: shutil.which(n, path=bindir + os.pathsep + os.environ.get("PATH", "")) or n
           for n in ("flower-superlink", "flwr")}
    home = tempfile.mkdtemp(prefix="nnfleet-flwr-")
    port = _free_port()
    with open(os.path.join(home, "config.toml"), "w") as f:
        f.write(f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\n'
                f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    env = dict(os.environ, FLWR_HOME=home, FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1", PYTHONPATH=ROOT)
    overrides = os.path.join(home, "workload.toml")  # JSON values are valid TOML values
    with open(overrides, "w") as f:
        f.writelines(f"{k} = {json.dumps(v)}\n" for k, v in workload(devices, rounds).items())
    t0 = time.perf_counter()
    link = subprocess.Popen([exe["flower-superlink"], "--insecure", "--simulation",
                             "--disable-runtime-dependency-installation", "--host", "127.0.0.1",
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    procs: list[subprocess.Popen[Any]] = [link]
    out: dict[str, Any] = {"runtime": "Flower simulation (flwr run)", "caps_enforced": False}
    try:
        with TreeSampler(link.pid) as mem:
            end = time.monotonic() + 60
            while time.monotonic() < end:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.1)
            run = subprocess.Popen([exe["flwr"], "run", ROOT, "bench", "--stream", "-c", overrides,
                                    "--federation-config",
                                    f"num-supernodes={devices} client-resources-num-cpus=1"],
                                   env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
            procs.append(run)
            first_round = finished = None
            cpu_first = cpu_rounds = 0.0
            aggregated: list[float] = []  # when each round's aggregation was logged
            before = 0
            deadline = time.monotonic() + timeout
            assert run.stdout is not None
            tail: list[str] = []
            for line in run.stdout:
                tail = (tail + [line])[-30:]
                if first_round is None and "[ROUND 1/" in line:
                    first_round = time.perf_counter() - t0
                    before = mem.now()
                    cpu_first = mem.cpu()
                m = re.search(r"Strategy execution finished in ([0-9.]+)s", line)
                if m:
                    finished = float(m.group(1))
                    cpu_rounds = mem.cpu() - cpu_first
                if "aggregate_train: Received" in line:  # when the stream ends early
                    aggregated.append(time.perf_counter() - t0)
                    cpu_rounds = mem.cpu() - cpu_first
                if time.monotonic() > deadline:
                    raise TimeoutError(f"flwr run took more than {timeout}s")
            run.wait(timeout=30)
        if finished is None and first_round is not None and len(aggregated) == rounds:
            # under load Flower's Ray can abort at shutdown, before the line that gives the
            # strategy's time: the rounds' time from the log lines' arrival instead
            finished = aggregated[-1] - first_round
            out["rounds_from"] = "log lines (flwr run ended before its summary)"
        if first_round is None or finished is None:
            raise RuntimeError("flwr run ended without running the rounds:\n" + "".join(tail))
        out.update(startup_s=first_round, rounds_s=finished, device_rounds=devices * rounds,
                   device_rounds_per_s=devices * rounds / finished, peak_tree_bytes=mem.peak,
                   cpu_ms_per_device_round=1000 * cpu_rounds / (devices * rounds),
                   before_first_round_bytes=before)
    finally:
        from experiments.fleet.procs import kill_trees
        kill_trees(procs, 10)
        shutil.rmtree(home, ignore_errors=True)
    return out


def _row(r: dict[str, Any]) -> str:
    return (f"{r['runtime']:32s} {r['startup_s']:9.2f} {r['rounds_s']:9.2f} "
            f"{r['device_rounds_per_s']:12.0f} {r['cpu_ms_per_device_round']:9.2f} "
            f"{r['peak_tree_bytes'] / MIB:10.0f} "
            f"{r['before_first_round_bytes'] / MIB:12.0f}  {'yes' if r['caps_enforced'] else 'no'}")


def main(argv: list[str] | None = None) -> int:
    from device_runtime.cli_args import HelpFormatter
    from device_runtime.units import parse_size

    p = argparse.ArgumentParser(prog="nnfleet bench fleet", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter,
                                epilog="examples:\n  nnfleet bench fleet\n"
                                       "  nnfleet bench fleet --devices 10000 --rounds 1 "
                                       "--no-flower")
    p.add_argument("--devices", type=int, default=1000, help="simulated devices")
    p.add_argument("--rounds", type=int, default=3, help="federated rounds")
    p.add_argument("--cap", default="512MiB", help="RAM cap of every device on the fleet engine")
    p.add_argument("--workers", type=int, default=0, help="fleet engine workers (0 = CPUs)")
    p.add_argument("--no-flower", action="store_true", help="only the fleet engine")
    p.add_argument("--backend", choices=["local", "ray"], default="local", help="ray: the "
                   "fleet engine on a local Ray cluster too, beside the local engine "
                   "(default: local only)")
    p.add_argument("--flower-timeout", type=float, default=900.0,
                   help="seconds Flower's run may take")
    p.add_argument("--profile", action="store_true", help="also print where a device-round's "
                   "time goes on the fleet engine (head and worker phases, microseconds)")
    p.add_argument("--json", help="also write the results to this file (None = not written)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.devices < 2 or args.rounds < 1:
        print("nnfleet: error: need --devices >= 2 and --rounds >= 1", file=sys.stderr)
        return 2
    print(f"workload: {args.devices} devices x {args.rounds} rounds, logistic regression 60->10, "
          f"FedAvg, 40 samples per device", flush=True)
    results = [run_fleet(args.devices, args.rounds, parse_size(args.cap), args.workers,
                         profile=args.profile)]
    print(f"fleet engine done ({results[0]['rounds_s']:.1f} s for the rounds)", flush=True)
    if args.backend == "ray":
        from experiments.fleet.backends import need_ray
        need_ray()
        results.append(run_fleet(args.devices, args.rounds, parse_size(args.cap), args.workers,
                                 "ray"))
        print(f"fleet engine on Ray done ({results[-1]['rounds_s']:.1f} s for the rounds)",
              flush=True)
    if not args.no_flower:
        try:
            results.append(run_flower(args.devices, args.rounds, args.flower_timeout))
        except (OSError, RuntimeError, TimeoutError) as e:
            print(f"Flower simulation failed: {e}", file=sys.stderr)
    print(f"\n{'runtime':32s} {'start-up s':>9s} {'rounds s':>9s} {'device-rds/s':>12s} "
          f"{'CPU ms/dr':>9s} "
          f"{'peak MiB':>10s} {'MiB@round1':>12s}  caps")
    for r in results:
        print(_row(r))
    summary: dict[str, Any] = {"devices": args.devices, "rounds": args.rounds, "results": results}
    rows = {("flower" if r["runtime"].startswith("Flower") else
             "ray" if r["runtime"].endswith("on Ray") else "local"): r for r in results}
    ratios: dict[str, dict[str, float]] = {}
    for a, b in (("local", "flower"), ("ray", "flower"), ("local", "ray")):
        if a in rows and b in rows:  # how much a beats b, measured side by side
            ours, other = rows[a], rows[b]
            ratios[f"{a}_vs_{b}"] = {
                "device_rounds_per_s": ours["device_rounds_per_s"] / other["device_rounds_per_s"],
                "startup": other["startup_s"] / ours["startup_s"],
                "cpu_per_device_round": other["cpu_ms_per_device_round"] /
                max(ours["cpu_ms_per_device_round"], 1e-9),
                "peak_memory": other["peak_tree_bytes"] / max(ours["peak_tree_bytes"], 1)}
            r = ratios[f"{a}_vs_{b}"]
            print(f"ratios ({a} vs {b}): device-rounds/s {r['device_rounds_per_s']:.2f}x, "
                  f"CPU per device-round {r['cpu_per_device_round']:.2f}x less, "
                  f"start-up {r['startup']:.2f}x faster, peak memory {r['peak_memory']:.2f}x "
                  f"smaller")
    summary["ratios"] = ratios
    for key in ("local", "ray"):
        if key in rows:
            print(f"{key}: head (this process) CPU "
                  f"{rows[key]['head_cpu_ms_per_device_round']:.2f} ms per device-round")
    if "ray" in rows:
        r = rows["ray"]
        per = r["rounds_s"] * r["workers"] / r["device_rounds"]
        moved = {k: v / r["device_rounds"] for k, v in r["moved_bytes"].items()}
        print(f"Ray: {1000 * per:.2f} worker-ms per device-round (rounds time x workers / "
              f"device-rounds); Ray's own start {r['ray_start_s']:.1f} s; per worker: actor "
              f"RSS {max(r['actor_rss']) / MIB:.0f} MiB + device worker RSS "
              f"{max(r['worker_rss']) / MIB:.0f} MiB; bytes per device-round: " +
              ", ".join(f"{k} {v:.0f}" for k, v in moved.items()))
    if args.profile:
        from .fleet_profile import table
        print(table(results[0]["profile"]))
    if "flower" not in rows:
        print(f"\nstart-up {results[0]['startup_s']:.2f} s (target <= 2 s); peak memory of the "
              f"process tree {results[0]['peak_tree_bytes'] / MIB:.0f} MiB for "
              f"{args.devices} devices")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
