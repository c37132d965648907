"""``nnfleet simulate [CONFIG.toml] [--devices N] [--rounds R] [--algorithm NAME ...] [--out DIR]``

Runs each algorithm's Flower ServerApp (``server.app``) on the fleet engine, one after the
other on the same fleet, devices and seeds, then measures every device's personalized
accuracy on its own test split and writes ``metrics.jsonl``, ``summary.json`` and
``report.md`` (with PNG plots when matplotlib is installed) to ``--out``.
Without CONFIG, ``experiments/configs/default.toml`` runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Any, TextIO

from device_runtime.modelspec import spec_text
from experiments.config import DEFAULT_CONFIG, load_config  # noqa: F401 (re-exported)


class Progress:
    """A plain-text progress bar on stderr (redrawn in place on a terminal, lines otherwise)."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream, self.quiet = stream or sys.stderr, quiet  # sys.stderr of now, not of import
        self.tty = self.stream.isatty()
        self.t0 = time.perf_counter()
        self.label = ""

    def update(self, label: str, done: int, total: int) -> None:
        if self.quiet:
            return
        width = 24
        fill = int(width * done / max(total, 1))
        text = (f"{label:38s} [{'#' * fill}{'.' * (width - fill)}] {done:5d}/{total:<5d} "
                f"{time.perf_counter() - self.t0:6.1f}s")
        if self.tty:
            self.stream.write("\r" + text)
            if done >= total:
                self.stream.write("\n")
        elif done >= total and "train" not in label:  # a log file: one line per round
            self.stream.write(text + "\n")
        self.stream.flush()


def model_text(cfg: dict[str, Any]) -> str:
    """The ``model`` config value for devices and server (device_runtime.modelspec)."""
    return spec_text(cfg.get("model", {}))


NOT_FAILURES = ("ok", "offline", "dropped")  # train statuses that are not a device failure
SERVER_KEYS = ("timeout", "screen-updates", "max-update-norm", "max-norm-over-median",
               "max-num-examples")


def run_config(cfg: dict[str, Any], algo_name: str, specs: list[Any]) -> dict[str, Any]:
    """The Flower run config of one algorithm (see server/app.py for the keys)."""
    from experiments.algorithms import device_config, get_algorithm

    algo = get_algorithm(algo_name)
    server = cfg.get("server", {})
    rc: dict[str, Any] = {
        "model": model_text(cfg), "model-seed": int(cfg.get("seed", 0)),
        "num-rounds": int(cfg.get("rounds", 10)), "seed": int(cfg.get("seed", 0)),
        "strategy": (algo.strategy if algo.strategy != "fedavg"
                     else server.get("strategy", "fedavg")),
        "fraction-train": float(server.get("fraction-train", 1.0)),
        "fraction-evaluate": float(server.get("fraction-evaluate", 1.0)),
        "min-nodes": int(server.get("min-nodes", 2)),
    }
    # the server's own settings: round timeout and the screening of updates (server/screen.py)
    rc.update({k: server[k] for k in SERVER_KEYS if k in server})
    own = dict(cfg.get("algorithm", {}).get(algo_name, {}))  # [algorithm.<name>] overrides
    args = dict(server.get("strategy-args", {}))
    args.update(algo.strategy_args)
    args.update(own.pop("strategy-args", {}))
    rc["strategy-args"] = json.dumps(args)
    rc.update(cfg.get("train", {}))
    rc.update(device_config(algo, specs, cfg.get("model", {}).get("head", []), own))
    return rc


def parse_args(argv: list[str]) -> argparse.Namespace:
    from device_runtime.cli import _Parser

    p = _Parser(prog="nnfleet simulate", description="Simulate a fleet of RAM-capped devices "
                "and compare personalization algorithms (see experiments/configs/).")
    p.add_argument("config", nargs="?", help="experiment TOML (default: configs/default.toml)")
    p.add_argument("--devices", type=int, help="number of devices (overrides [data] devices)")
    p.add_argument("--rounds", type=int, help="federated rounds (overrides rounds)")
    p.add_argument("--algorithm", action="append", help="algorithm to run (repeatable; "
                   "default: the config's list)")
    p.add_argument("--out", help="output folder (default: runs/<config name>)")
    p.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    p.add_argument("--isolation", choices=["worker", "fork"], help="per-device isolation")
    p.add_argument("--seed", type=int, help="seed of data, profiles, sampling and training")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its "
                   "last checkpoint (written after every round)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nnfleet simulate``; returns the exit code."""
    from device_runtime.cli import one_line
    from device_runtime.errors import NNFleetError

    argv = list(sys.argv[1:] if argv is None else argv)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM ends a run as Ctrl-C does: workers stopped first

    old = signal.signal(signal.SIGTERM, stop)
    try:
        return _main(argv)
    except NNFleetError as e:
        print(f"nnfleet: error: {one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the engine's context has stopped the workers by now
        print(f"nnfleet: interrupted: {_resume_hint(argv)}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)


def _resume_hint(argv: list[str]) -> str:
    """Where the last checkpoint is and the command that goes on from it."""
    try:
        args = parse_args(argv)
        cfg = load_config(args.config)
        out = args.out or os.path.join("runs", str(cfg.get("name", "simulate")))
    except Exception:  # noqa: BLE001 - a hint only
        return "nothing to resume"
    from experiments.resume import PREFIX

    ckpt = os.path.join(out, "checkpoint")
    if not os.path.isdir(ckpt) or not any(d.startswith(PREFIX) for d in os.listdir(ckpt)):
        return "no checkpoint was written yet"
    cmd = " ".join(["nnfleet simulate", *[a for a in argv if a != "--resume"], "--resume"])
    return f"the last complete checkpoint is in {ckpt}; go on with: {cmd}"


def _main(argv: list[str]) -> int:
    from device_runtime.errors import ConfigError

    t_start = time.perf_counter()
    args = parse_args(argv)
    cfg = load_config(args.config)
    data = dict(cfg.get("data", {}))
    if args.devices is not None:
        if args.devices < 2:
            raise ConfigError(f"--devices must be >= 2, got {args.devices}")
        data["devices"] = args.devices
    if args.rounds is not None:
        if args.rounds < 1:
            raise ConfigError(f"--rounds must be >= 1, got {args.rounds}")
        cfg["rounds"] = args.rounds
    if args.seed is not None:
        cfg["seed"] = args.seed
    if args.devices is not None or args.rounds is not None or args.seed is not None:
        from experiments.config import check_config
        check_config({**cfg, "data": data})  # the same checks as the file's own values
    algorithms = args.algorithm or list(cfg.get("algorithms", ["local", "fedavg", "fedper"]))
    from experiments.algorithms import get_algorithm
    for a in algorithms:
        get_algorithm(a)  # fail early on a typo
    fleet_cfg = dict(cfg.get("fleet", {}))
    out = args.out or os.path.join("runs", str(cfg.get("name", "simulate")))
    os.makedirs(out, exist_ok=True)
    seed = int(cfg.get("seed", 0))
    isolation = args.isolation or fleet_cfg.get("isolation", "worker")
    from experiments.resume import RunLog, fingerprint
    log = RunLog(out, fingerprint({"config": cfg, "data": data, "algorithms": algorithms,
                                   "isolation": isolation}), resume=args.resume)
    progress = Progress(quiet=args.quiet)

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.app import RecordDict

    import server
    from device_runtime.modelspec import load_model
    from experiments.data import make_fleet_data
    from experiments.fleet import FleetEngine, draw_profiles
    from experiments.fleet.grid import FleetGrid, run_serverapp
    from experiments.report import render, summarize, write_plots

    logging.getLogger("flwr").setLevel(logging.WARNING)  # after import: flwr sets DEBUG
    from server.logs import plain_when_not_a_terminal
    plain_when_not_a_terminal()
    kind = str(data.pop("kind", "synthetic_images"))
    n = int(data.pop("devices", 100))
    if "shape" in data:
        data["shape"] = tuple(data["shape"])
    fleet = make_fleet_data(kind, n, seed, **data)
    specs = load_model(model_text(cfg), seed)[0].specs
    profiles = draw_profiles(len(fleet.devices), fleet_cfg, seed)
    records = log.records
    timing: dict[str, Any] = {"per_algorithm": log.meta["timing"]}
    sim: dict[str, float] = log.meta["sim"]
    os.makedirs(os.path.join(out, "weights"), exist_ok=True)
    from device_runtime.units import parse_size
    from experiments.fleet.kernels import NUMBA_MIN_CAP
    with FleetEngine(fleet, profiles, workers=int(args.workers or fleet_cfg.get("workers", 0)),
                     isolation=isolation, faults=cfg.get("faults"), seed=seed,
                     workdir=log.ckpt.work, state_dir=log.ckpt.live,
                     kernels=str(fleet_cfg.get("kernels", "auto")).strip().lower(),
                     numba_min_cap=parse_size(fleet_cfg.get("numba_min_cap", NUMBA_MIN_CAP)),
                     warm_models=[model_text(cfg)], quiet=args.quiet,
                     cgroups=str(fleet_cfg.get("cgroups", "auto"))) as eng:
        timing.update(startup_seconds=eng.startup_seconds, workers=len(eng.procs),
                      isolation=eng.isolation)
        kernels = eng.kernel_summary()
        for p, kind in zip(profiles, eng.kernels):
            p.kernels = kind
        for algo in [a for a in algorithms if a not in log.meta["finished"]]:
            snap = log.resume_point(algo)
            t0 = time.perf_counter() - (snap.meta["elapsed"] if snap else 0.0)
            rc = run_config(cfg, algo, specs)
            # the server may trust no claim above the largest training split of the fleet
            # (server/screen.py rule 3); a config can set its own bound
            rc.setdefault("max-num-examples",
                          float(max(d.y_train.shape[0] for d in fleet.devices)))
            rc["result-path"] = os.path.join(out, "weights", f"{algo}.npz")

            def record(rec: dict[str, Any], algo: str = algo) -> None:
                rec["algorithm"] = algo
                log.record(rec)

            rnd = [snap.meta["round"] if snap else 0]

            def show(phase: str, done: int, total: int, algo: str = algo, rnd: list[int] = rnd,
                     rc: dict[str, Any] = rc) -> None:
                if phase == "train" and done == 1:
                    rnd[0] += 1
                progress.update(f"{algo} round {rnd[0]}/{rc['num-rounds']} {phase}", done, total)

            rounds = list(snap.meta["grid_rounds"]) if snap else []  # the grid appends to it

            def round_end(server_round: int, context: Any, algo: str = algo,
                          rounds: list[dict[str, Any]] = rounds, t0: float = t0) -> None:
                for r in json.loads(str(context.state["server-state"]["rejected"])):
                    if r["round"] == server_round:  # node i + 1 is device i
                        record({"run": algo, "phase": "rejected", "round": server_round,
                                "device": r["node"] - 1, "status": "rejected",
                                "kind": r["kind"], "reason": r["reason"]}, algo)
                log.round_done(algo, server_round, context.state, rounds,
                               time.perf_counter() - t0)

            grid = FleetGrid(eng, run_key=algo, seed=seed, on_record=record, on_progress=show,
                             on_round_end=round_end, rounds=rounds)
            ctx = run_serverapp(server.app, grid, rc,
                                state=snap.server_state() if snap else RecordDict())
            final = {k: a.numpy() for k, a in ctx.state["final-arrays"].items()}
            grid.evaluate_all(final, rc, rnd=int(rc["num-rounds"]))
            eng.reset(algo)
            sim[algo] = sum(r["sim_seconds"] for r in grid.rounds)
            log.algorithm_done(algo, time.perf_counter() - t0, sim[algo])
            progress.update(f"{algo} done", 1, 1)
    log.close()
    devices = _devices(profiles, records)
    timing["total_seconds"] = time.perf_counter() - t_start
    from experiments.algorithms import ALGORITHMS
    summary = summarize(records, algorithms, {
        "config": {"name": cfg.get("name", "simulate"), "rounds": int(cfg.get("rounds", 10)),
                   "seed": seed, "model": model_text(cfg), "algorithms": algorithms,
                   "model_summary": ", ".join(f"{s.name}({s.type})" for s in specs[1:]),
                   "fraction_train": cfg.get("server", {}).get("fraction-train", 1.0),
                   "local_epochs": cfg.get("train", {}).get("local-epochs", 1)},
        "fleet": {"data": fleet.stats(), "profiles": [p.as_dict() for p in profiles],
                  "caps": _caps(profiles), "kernels": kernels,
                  "unable_to_train": sum(1 for d in devices
                                         if d["cap_failures"] and not d["trained"]),
                  "failures": _failures(devices)},
        "algorithm_info": {a: {"summary": ALGORITHMS[a].summary,
                               "reference": ALGORITHMS[a].reference} for a in algorithms},
        "simulated_seconds": sim, "timing": timing, "devices": devices})
    plots = write_plots(summary, devices, out)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(render(summary, plots))
    _print_table(summary, out)
    return 0


def _devices(profiles: list[Any], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per device: cap, largest measured peak RSS, whether it ever trained."""
    out = [{"device": p.index, "ram_cap": p.ram_cap, "kernels": p.kernels, "peak_rss": 0.0,
            "trained": False,
            "cap_failures": 0, "rounds_trained": 0, "speed": p.speed,
            "availability": p.availability, "failures": {}} for p in profiles]
    for r in records:
        if r["phase"] != "train":
            continue
        d = out[r["device"]]
        if r.get("peak-rss", -1) > 0:
            d["peak_rss"] = max(d["peak_rss"], float(r["peak-rss"]))
        if r["status"] == "ok":
            d["trained"] = True
            d["rounds_trained"] += 1
        if r["status"] == "cap-exceeded":
            d["needed_bytes"] = r.get("needed-bytes")
            d["cap_failures"] += 1
        if r["status"] not in NOT_FAILURES:  # killed, timeout, raised, crashed, cap-exceeded...
            d["failures"][r["status"]] = d["failures"].get(r["status"], 0) + 1
    return out


def _failures(devices: list[dict[str, Any]]) -> dict[str, int]:
    """Train tasks that failed, by status, over every device and algorithm."""
    total: dict[str, int] = {}
    for d in devices:
        for status, n in d["failures"].items():
            total[status] = total.get(status, 0) + n
    return dict(sorted(total.items()))


def _caps(profiles: list[Any]) -> str:
    from device_runtime.units import fmt_bytes
    caps = sorted(p.ram_cap for p in profiles if p.ram_cap)
    if not caps:
        return "none"
    median = fmt_bytes(caps[len(caps) // 2])
    return f"{fmt_bytes(caps[0])} .. {fmt_bytes(caps[-1])} (median {median})"


def _print_table(summary: dict[str, Any], out: str) -> None:
    """Accuracy over every device, and over the devices that could train ('acc trained')."""
    print(f"{'algorithm':12s} {'mean acc':>9s} {'std':>6s} {'p10':>6s} {'acc trained':>13s} "
          f"{'better than fedavg':>19s}")
    for algo, s in summary["algorithms"].items():
        f, vs = s["final_accuracy"], s.get("vs_fedavg_trained_devices")
        ft = s["final_accuracy_trained_devices"]
        better = f"{100 * vs['better']:.0f}% of devices" if vs else "-"
        print(f"{algo:12s} {100 * f['mean']:8.1f}% {100 * f['std']:5.1f} {100 * f['p10']:6.1f} "
              f"{100 * ft['mean']:12.1f}% {better:>19s}")
    rejected = {a: s["rejected_updates"]["total"] for a, s in summary["algorithms"].items()}
    if any(rejected.values()):
        print("updates rejected by the server: " + ", ".join(
            f"{a} {n}" for a, n in rejected.items() if n) + " (see report)")
    t = summary["timing"]
    failures = summary["fleet"]["failures"]
    if failures:
        print("device train tasks that failed: " + ", ".join(
            f"{n} {status}" for status, n in failures.items()) + " (per device: summary.json)")
    kernels = summary["fleet"].get("kernels", {}).get("per_kind", {})
    if kernels:
        from device_runtime.units import fmt_bytes
        print("kernels: " + ", ".join(
            f"{kind} {k['devices']} devices (worker RSS {fmt_bytes(k['worker_rss'][0])})"
            for kind, k in kernels.items() if k["worker_rss"]) + "; accuracy per RAM cap: report")
    print(f"devices unable to train within their cap: {summary['fleet']['unable_to_train']}; "
          f"total {t['total_seconds']:.1f} s (engine start-up {t['startup_seconds']:.2f} s); "
          f"report: {os.path.join(out, 'report.md')}")


if __name__ == "__main__":
    sys.exit(main())
