"""``nnfleet bench soak``: a long federated run with faults injected on purpose, in which
every device-round must be accounted for and the memory of the process tree stay flat.

The workload of ``nnfleet bench fleet`` (FedProx's Synthetic(0.5, 0.5), 40 samples per
device, logistic regression 60 -> 10, the ServerApp of ``server/`` with FedAvg on the fleet
engine), ``--devices`` (1,000) x ``--rounds`` (10) device-rounds, every device trained each
round under a ``--cap`` RAM cap, with faults at ``--rate`` (5%) per device-round drawn
uniformly from every kind of :mod:`experiments.fleet.faults` (kill, cap, hang, raise and
the hostile updates). It prints:

- the outcomes: each status with its count, which must add up to the device-rounds run,
  and for each injected kind what became of it (a device fault must end with its status,
  a hostile update with a normal reply);
- whether devices ran in memory cgroups (``--cgroups``, :mod:`experiments.fleet.cgroup`) and
  how many device-rounds the kernel killed at their cgroup's limit;
- what the server did with the hostile updates: rejected before aggregation or not
  (``context.state["server-state"]["rejected"]`` of ``server/``, matched by round and node);
- the summed RSS of this process and all its descendants (engine, workers, forked
  devices; psutil) after each round, with the pool whole again (respawned workers warm):
  first, last and max after ``--warmup`` rounds, and the least-squares slope per round.

    python -m experiments.bench.soak                     # 20,000 device-rounds
    python -m experiments.bench.soak --devices 50 --rounds 4 --rate 0.1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import Counter
from typing import Any

import numpy as np

MIB = 1024 * 1024


def soak(devices: int = 1000, rounds: int = 20, rate: float = 0.05, cap: int = 256 * MIB,
         timeout: float = 1.0, workers: int = 0, isolation: str = "worker", seed: int = 0,
         warmup: int = 2, progress: bool = False, kinds: list[str] | None = None,
         cgroups: str = "auto") -> dict[str, Any]:
    """Run the soak; returns outcome counts and RSS samples (see the module docstring)."""
    from experiments.bench.fleet import TreeSampler, workload
    from experiments.fleet import DeviceProfile, FleetEngine
    from experiments.fleet.faults import EXPECTED_STATUS, HOSTILE, FaultPlan
    from experiments.fleet.flower_data import fleet_from_run_config

    rc = workload(devices, rounds)
    rc["seed"] = seed
    plan = FaultPlan.from_config({"rate": rate, "timeout": timeout,
                                  **({"kinds": kinds} if kinds is not None else {})}, seed)
    profiles = [DeviceProfile(i, cap, 1.0, 1.0, 0.0) for i in range(devices)]
    status: Counter[str] = Counter()
    by_fault: Counter[tuple[str, str]] = Counter()
    os_kills = [0]  # device-rounds the kernel killed at their cgroup's limit
    hostile: dict[tuple[int, int], str] = {}  # (round, node) -> kind, for the server's verdict
    tree = TreeSampler(os.getpid())
    rss: list[int] = []
    t0 = time.perf_counter()

    def prepare() -> Any:  # runs while the workers warm up
        os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        import experiments.fleet.grid  # noqa: F401
        import server  # noqa: F401
        fleet = fleet_from_run_config(rc)
        # the server trusts no claim above the largest training split (server/screen.py)
        rc["max-num-examples"] = float(max(d.y_train.shape[0] for d in fleet.devices))
        return fleet

    with FleetEngine(prepare, profiles, workers=workers, isolation=isolation,
                     faults=plan, cgroups=cgroups) as eng:
        cgroup = eng.kernel_summary()["cgroups"]
        import server
        from experiments.fleet.grid import FleetGrid, run_serverapp
        from server.logs import plain_when_not_a_terminal

        logging.getLogger("flwr").setLevel(logging.WARNING)
        plain_when_not_a_terminal()

        def record(rec: dict[str, Any]) -> None:  # counted, not kept: memory must stay flat
            if rec["phase"] == "train":
                status[rec["status"]] += 1
                if "killed by the kernel (oom)" in rec.get("error", ""):
                    os_kills[0] += 1
                if "fault" in rec:
                    by_fault[(rec["fault"], rec["status"])] += 1
                    if rec["fault"] in HOSTILE and rec["status"] == "ok":
                        hostile[(int(rec["round"]), int(rec["device"]) + 1)] = rec["fault"]

        def after_round(info: dict[str, Any]) -> None:
            eng.wait_ready()  # measure the whole pool, respawned workers included
            rss.append(tree.now())
            if progress:
                print(f"round {info['round']:3d}: {info['ok']:5d}/{info['devices']} ok, "
                      f"{info['wall_seconds']:6.1f} s, tree RSS {rss[-1] / MIB:7.1f} MiB, "
                      f"respawned {eng.respawned}", file=sys.stderr, flush=True)

        grid = FleetGrid(eng, "soak", seed, on_record=record, keep_messages=False,
                         on_round=after_round)
        t1 = time.perf_counter()
        ctx = run_serverapp(server.app, grid, rc)
        rounds_s = time.perf_counter() - t1
        startup, respawned, n_workers = eng.startup_seconds, eng.respawned, len(eng.procs)
    total = devices * rounds
    rejected = None  # per hostile kind: rejected / not, when the server reports rejections
    if "server-state" in ctx.state and "rejected" in ctx.state["server-state"]:
        seen = {(int(r["round"]), int(r["node"]))
                for r in json.loads(str(ctx.state["server-state"]["rejected"]))}
        verdict = Counter((k, "rejected" if key in seen else "accepted")
                          for key, k in hostile.items())
        rejected = {f"{k}->{v}": n for (k, v), n in sorted(verdict.items())}
    mismatched = {f"{k}->{s}": n for (k, s), n in by_fault.items()
                  if s != EXPECTED_STATUS.get(k, "ok")}
    after = np.asarray(rss[warmup:] if len(rss) > warmup else rss, np.float64)
    slope = float(np.polyfit(np.arange(after.size), after, 1)[0]) if after.size > 1 else 0.0
    return {
        "device_rounds": total, "outcomes": dict(status), "accounted": sum(status.values()),
        "injected": dict(Counter(k for k, _ in by_fault.elements())),
        "injected_outcomes": {f"{k}->{s}": n for (k, s), n in sorted(by_fault.items())},
        "mismatched": mismatched, "hostile_at_server": rejected,
        "respawned_workers": respawned, "workers": n_workers,
        "isolation": isolation, "rate": rate, "timeout_s": timeout, "ram_cap": cap,
        "cgroups": cgroup, "os_kills": os_kills[0],
        "rss_per_round": rss, "warmup_rounds": warmup,
        "rss_first": int(after[0]) if after.size else 0,
        "rss_last": int(after[-1]) if after.size else 0,
        "rss_max": int(after.max()) if after.size else 0,
        "rss_slope_per_round": slope, "startup_s": startup, "rounds_s": rounds_s,
        "total_s": time.perf_counter() - t0,
    }


def report(r: dict[str, Any]) -> str:
    """The soak's figures as text."""
    ok = r["accounted"] == r["device_rounds"] and not r["mismatched"]
    head = (f"device-rounds: {r['device_rounds']:,} ({r['workers']} workers, "
            f"{r['isolation']} isolation, faults at {100 * r['rate']:g}%, timeout "
            f"{r['timeout_s']:g} s); {r['rounds_s']:.1f} s for the rounds")
    lines = [head, "outcomes:"]
    for s, n in sorted(r["outcomes"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {s:14s} {n:7,d}")
    lines.append(f"  {'= total':14s} {r['accounted']:7,d} of {r['device_rounds']:,} "
                 f"({'all accounted for' if r['accounted'] == r['device_rounds'] else 'MISSING'})")
    lines.append("injected faults -> outcome: " + ", ".join(
        f"{k} {n}" for k, n in r["injected_outcomes"].items()))
    if r["mismatched"]:
        lines.append(f"UNEXPECTED outcomes of injected faults: {r['mismatched']}")
    if r["hostile_at_server"] is not None:
        lines.append("hostile updates at the server: " + (", ".join(
            f"{k} {n}" for k, n in r["hostile_at_server"].items()) or "none sent"))
    cg = r["cgroups"]
    lines.append(f"cgroups: device processes in cgroup v{cg['version']} memory cgroups "
                 f"({cg['swap']} against swap); {r['os_kills']} device-rounds killed by the "
                 f"kernel (oom)"
                 if cg["mode"] == "on" else f"cgroups: none ({cg['note']})")
    lines.append(f"workers respawned: {r['respawned_workers']}")
    mib = [f"{x / MIB:.0f}" for x in r["rss_per_round"]]
    lines.append(f"process-tree RSS per round (MiB): {' '.join(mib)}")
    lines.append(f"after {r['warmup_rounds']} warm-up rounds: first {r['rss_first'] / MIB:.1f} "
                 f"MiB, last {r['rss_last'] / MIB:.1f} MiB, max {r['rss_max'] / MIB:.1f} MiB, "
                 f"slope {r['rss_slope_per_round'] / MIB:+.2f} MiB/round")
    lines.append("verdict: " + ("every outcome accounted for" if ok else "FAILED"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from device_runtime.cli_args import HelpFormatter
    from device_runtime.units import parse_size

    p = argparse.ArgumentParser(prog="nnfleet bench soak", description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter,
                                epilog="examples:\n  nnfleet bench soak\n"
                                       "  nnfleet bench soak --devices 200 --rounds 5 --rate 0.1 "
                                       "--isolation fork")
    p.add_argument("--devices", type=int, default=1000, help="simulated devices")
    p.add_argument("--rounds", type=int, default=20, help="federated rounds")
    p.add_argument("--rate", type=float, default=0.05, help="faults per device-round")
    p.add_argument("--cap", default="256MiB", help="RAM cap of every device")
    p.add_argument("--timeout", type=float, default=1.0, help="per-task timeout, seconds")
    p.add_argument("--workers", type=int, default=0, help="fleet engine workers (0 = CPUs)")
    p.add_argument("--isolation", choices=["worker", "fork"], default="worker",
                   help="a device in a warm worker, or in a child forked from it")
    p.add_argument("--warmup", type=int, default=2, help="rounds left out of the RSS figures")
    p.add_argument("--seed", type=int, default=0, help="seed of the faults and the fleet")
    p.add_argument("--cgroups", choices=["auto", "off", "require"], default="auto",
                   help="devices in memory cgroups limited at their cap (where they can be made)")
    p.add_argument("--json", help="also write the results to this file (None = not written)")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.devices < 2 or args.rounds < 1 or not 0 <= args.rate <= 1 or args.timeout <= 0:
        print("nnfleet: error: need --devices >= 2, --rounds >= 1, --rate in [0, 1] and "
              "--timeout > 0", file=sys.stderr)
        return 2
    r = soak(args.devices, args.rounds, args.rate, parse_size(args.cap), args.timeout,
             args.workers, args.isolation, args.seed, args.warmup, progress=True,
             cgroups=args.cgroups)
    print(report(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0 if r["accounted"] == r["device_rounds"] and not r["mismatched"] else 1


if __name__ == "__main__":
    sys.exit(main())
