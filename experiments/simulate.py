"""``nnfleet simulate [CONFIG.toml] [--devices N] [--rounds R] [--algorithm NAME ...] [--out DIR]
[--seed N | --seeds A,B,...]``

Runs each algorithm's Flower ServerApp (``server.app``) on the fleet engine, one after the
other on the same fleet, devices and seeds, then measures every device's personalized
accuracy on its own test split and writes ``metrics.jsonl``, ``summary.json``,
``report.md`` (with PNG plots when matplotlib is installed), the final shared weights and
every device's personalized model (experiments/results.py) to ``--out``.
With ``--seeds`` (or ``seeds = [...]`` in the config) the run is repeated once per seed,
each in ``--out``/seed-<s>/, and ``--out`` gets the figures over seeds: mean, 95%
confidence interval and a paired t-test against FedAvg (experiments/seeds.py,
experiments/multiseed.py). Without CONFIG, ``experiments/configs/default.toml`` runs.
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


SERVER_KEYS = ("timeout", "screen-updates", "max-update-norm", "max-norm-over-median",
               "max-num-examples")


def run_config(cfg: dict[str, Any], algo_name: str, specs: list[Any]) -> dict[str, Any]:
    """The Flower run config of one algorithm (see server/app.py for the keys)."""
    from experiments.algorithms import device_config, get_algorithm
    from experiments.seeds import seed_roles

    algo = get_algorithm(algo_name)
    server = cfg.get("server", {})
    seeds = seed_roles(cfg)
    rc: dict[str, Any] = {
        # "seed": the server's node sampling; "shuffle-seed", forwarded: the batch order
        "model": model_text(cfg), "model-seed": seeds["model"],
        "num-rounds": int(cfg.get("rounds", 10)), "seed": seeds["sampling"],
        "shuffle-seed": seeds["shuffle"],
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
    from device_runtime.cli_args import HelpFormatter

    p = _Parser(prog="nnfleet simulate", description="Simulate a fleet of RAM-capped devices "
                "and compare personalization algorithms (see experiments/configs/).",
                formatter_class=HelpFormatter, epilog="examples:\n  nnfleet simulate\n"
                "  nnfleet simulate experiments/configs/fedprox_synthetic.toml --rounds 10\n"
                "  nnfleet simulate --devices 50 --algorithm fedavg --algorithm fedper "
                "--out runs/x")
    p.add_argument("config", nargs="?", help="experiment TOML (default: configs/default.toml)")
    p.add_argument("--devices", type=int,
                   help="number of devices (default: the config's [data] devices)")
    p.add_argument("--rounds", type=int, help="federated rounds (default: the config's rounds)")
    p.add_argument("--algorithm", action="append", help="algorithm to run (repeatable; "
                   "default: the config's list)")
    p.add_argument("--out", help="output folder (default: runs/<config name>)")
    p.add_argument("--workers", type=int, help="worker processes (default: CPU count)")
    p.add_argument("--isolation", choices=["worker", "fork"], help="per-device isolation "
                   "(default: the config's [fleet] isolation, else worker)")
    p.add_argument("--backend", choices=["local", "ray"], help="fleet engine: this machine "
                   "(default) or a Ray cluster ([fleet] backend)")
    p.add_argument("--ray-address", help="Ray cluster to join (default: [fleet] ray-address, "
                   "else a local Ray on this machine)")
    p.add_argument("--seed", type=int, help="one run with this seed (the default of data-seed, "
                   "model-seed, sampling-seed and shuffle-seed; see experiments/seeds.py; "
                   "default: the config's seed)")
    p.add_argument("--seeds", metavar="A,B,...", help="one run per seed (e.g. 0,1,2), each "
                   "in OUT/seed-<s>/, then mean, 95%% CI and a paired t-test against FedAvg "
                   "over them in OUT (default: the config's seeds, else one run)")
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
    from experiments.seeds import has_checkpoint

    runs = [out] + sorted((os.path.join(out, d) for d in os.listdir(out)
                           if d.startswith("seed-")), key=os.path.getmtime) \
        if os.path.isdir(out) else []
    runs = [r for r in runs if has_checkpoint(r)]
    if not runs:
        return "no checkpoint was written yet"
    ckpt = os.path.join(runs[-1], "checkpoint")
    cmd = " ".join(["nnfleet simulate", *[a for a in argv if a != "--resume"], "--resume"])
    return f"the last complete checkpoint is in {ckpt}; go on with: {cmd}"


def prepare(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The config with the command line's overrides, checked; its [data]; the algorithms."""
    from device_runtime.errors import ConfigError

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
        cfg.pop("seeds", None)  # --seed N: one run
    if args.devices is not None or args.rounds is not None or args.seed is not None:
        from experiments.config import check_config
        check_config({**cfg, "data": data})  # the same checks as the file's own values
    algorithms = args.algorithm or list(cfg.get("algorithms", ["local", "fedavg", "fedper"]))
    from experiments.algorithms import get_algorithm
    for a in algorithms:
        get_algorithm(a)  # fail early on a typo
    fleet_cfg = dict(cfg.get("fleet", {}))
    backend = args.backend or fleet_cfg.get("backend", "local")
    if args.ray_address and backend != "ray":
        raise ConfigError("--ray-address needs --backend ray (or [fleet] backend = \"ray\")")
    if backend == "ray":  # before anything is written: Ray is an extra
        from experiments.fleet.backends import check_address, need_ray
        need_ray()
        check_address(args.ray_address or fleet_cfg.get("ray-address"))
    return cfg, data, algorithms


def run_fingerprint(cfg: dict[str, Any], data: dict[str, Any], algorithms: list[str],
                    isolation: str) -> str:
    """What a checkpoint (and a finished seed's summary) must match to be resumed; where
    the fleet runs is not part of a run's identity: a run goes on on either backend."""
    from experiments.resume import fingerprint
    same = {**cfg, "fleet": {k: v for k, v in dict(cfg.get("fleet", {})).items()
                             if k not in ("backend", "ray-address")}}
    return fingerprint({"config": same, "data": data, "algorithms": algorithms,
                        "isolation": isolation})


def _main(argv: list[str]) -> int:
    t_start = time.perf_counter()
    args = parse_args(argv)
    cfg, data, algorithms = prepare(args)
    out = args.out or os.path.join("runs", str(cfg.get("name", "simulate")))
    from experiments.seeds import seed_list
    seeds = seed_list(cfg, args.seeds, args.seed)
    if seeds is None:
        from experiments.results import print_table
        print_table(run_one(cfg, data, algorithms, out, args, args.resume, t_start), out)
        return 0
    from experiments.multiseed import run_seeds
    return run_seeds(cfg, data, algorithms, out, args, seeds, run_one)


def build_fleet(cfg: dict[str, Any], data: dict[str, Any]) -> tuple[Any, list[Any]]:
    """The fleet's data and the devices' profiles: what ``data-seed`` drives."""
    from experiments.data import make_fleet_data
    from experiments.fleet import draw_profiles
    from experiments.seeds import seed_roles

    data, seed = dict(data), seed_roles(cfg)["data"]
    kind = str(data.pop("kind", "synthetic_images"))
    n = data.pop("devices", None)  # None: the kind's default (every device of a folder)
    if "shape" in data:
        data["shape"] = tuple(data["shape"])
    fleet = make_fleet_data(kind, n, seed, **data)
    return fleet, draw_profiles(len(fleet.devices), dict(cfg.get("fleet", {})), seed)


def run_one(cfg: dict[str, Any], data: dict[str, Any], algorithms: list[str], out: str,
            args: argparse.Namespace, resume: bool, t_start: float | None = None,
            label: str = "") -> dict[str, Any]:
    """One complete run of ``cfg`` into ``out`` (records, checkpoints, weights, personalized
    models, summary.json, report.md, plots); returns its summary. ``label`` starts every
    progress line (a multi-seed run's ``seed 1: ``)."""
    t_start = time.perf_counter() if t_start is None else t_start
    data = dict(data)
    fleet_cfg = dict(cfg.get("fleet", {}))
    os.makedirs(out, exist_ok=True)
    from experiments.seeds import seed_roles
    seeds = seed_roles(cfg)  # data, model and sampling seeds
    isolation = args.isolation or fleet_cfg.get("isolation", "worker")
    backend = args.backend or fleet_cfg.get("backend", "local")
    from experiments.resume import RunLog
    fp = run_fingerprint(cfg, data, algorithms, isolation)
    log = RunLog(out, fp, resume=resume)
    progress = Progress(quiet=args.quiet)

    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    from flwr.app import RecordDict

    import server
    from device_runtime.modelspec import load_model
    from experiments.fleet.backends import open_engine
    from experiments.fleet.grid import FleetGrid, run_serverapp
    from experiments.fleet.worker import PERSONAL_DIR
    from experiments.report import render, summarize, write_plots
    from experiments.results import finish_personal, staging_dir

    logging.getLogger("flwr").setLevel(logging.WARNING)  # after import: flwr sets DEBUG
    from server.logs import plain_when_not_a_terminal
    plain_when_not_a_terminal()
    fleet, profiles = build_fleet(cfg, data)
    from device_runtime.errors import ConfigError
    if int(cfg.get("server", {}).get("min-nodes", 2)) > len(fleet.devices):
        raise ConfigError(f"[server] min-nodes = {cfg['server']['min-nodes']} but the fleet has "
                          f"{len(fleet.devices)} devices: the server would wait for ever")
    ids = [d.device_id for d in fleet.devices]
    specs = load_model(model_text(cfg), seeds["model"])[0].specs
    records = log.records
    timing: dict[str, Any] = {"per_algorithm": log.meta["timing"]}
    sim: dict[str, float] = log.meta["sim"]
    os.makedirs(os.path.join(out, "weights"), exist_ok=True)
    from device_runtime.units import parse_size
    from experiments.fleet.kernels import NUMBA_MIN_CAP
    with open_engine(backend, args.ray_address or fleet_cfg.get("ray-address"), fleet=fleet,
                     profiles=profiles, workers=int(args.workers or fleet_cfg.get("workers", 0)),
                     isolation=isolation, faults=cfg.get("faults"), seed=seeds["sampling"],
                     workdir=log.ckpt.work, state_dir=log.ckpt.live,
                     kernels=str(fleet_cfg.get("kernels", "auto")).strip().lower(),
                     numba_min_cap=parse_size(fleet_cfg.get("numba-min-cap", NUMBA_MIN_CAP)),
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
                progress.update(f"{label}{algo} round {rnd[0]}/{rc['num-rounds']} {phase}",
                                done, total)

            rounds = list(snap.meta["grid_rounds"]) if snap else []  # the grid appends to it

            def round_end(server_round: int, context: Any, algo: str = algo,
                          rounds: list[dict[str, Any]] = rounds, t0: float = t0) -> None:
                for r in json.loads(str(context.state["server-state"]["rejected"])):
                    if r["round"] == server_round:  # node i + 1 is device i
                        record({"run": algo, "phase": "rejected", "round": server_round,
                                "device": r["node"] - 1, "device_id": ids[r["node"] - 1],
                                "status": "rejected", "kind": r["kind"],
                                "reason": r["reason"]}, algo)
                log.round_done(algo, server_round, context.state, rounds,
                               time.perf_counter() - t0)

            grid = FleetGrid(eng, run_key=algo, seed=seeds["sampling"], on_record=record,
                             on_progress=show, on_round_end=round_end, rounds=rounds)
            ctx = run_serverapp(server.app, grid, rc,
                                state=snap.server_state() if snap else RecordDict())
            final = {k: a.numpy() for k, a in ctx.state["final-arrays"].items()}
            # the final measurement; each device's worker saves the model it evaluated
            save = bool(cfg.get("save-personal-models", True))
            stage = os.path.join(staging_dir(out, algo), "by-index") if save else ""
            recs = grid.evaluate_all(final, {**rc, PERSONAL_DIR: stage},
                                     rnd=int(rc["num-rounds"]))
            if save:
                finish_personal(out, algo, ids,
                                {r["device"] for r in recs if r["status"] == "ok"})
            eng.reset(algo)
            sim[algo] = sum(r["sim_seconds"] for r in grid.rounds)
            log.algorithm_done(algo, time.perf_counter() - t0, sim[algo])
            progress.update(f"{label}{algo} done", 1, 1)
    log.close()
    from experiments.results import caps_text, device_results, failures, write_json, write_text
    devices = device_results(profiles, records, ids)
    timing["total_seconds"] = time.perf_counter() - t_start
    from experiments.algorithms import ALGORITHMS
    summary = summarize(records, algorithms, {
        "config": {"name": cfg.get("name", "simulate"), "rounds": int(cfg.get("rounds", 10)),
                   "seed": int(cfg.get("seed", 0)), "seed_roles": seeds, "fingerprint": fp,
                   "model": model_text(cfg), "algorithms": algorithms,
                   "model_summary": ", ".join(f"{s.name}({s.type})" for s in specs[1:]),
                   "fraction_train": cfg.get("server", {}).get("fraction-train", 1.0),
                   "local_epochs": cfg.get("train", {}).get("local-epochs", 1)},
        "fleet": {"data": fleet.stats(), "profiles": [p.as_dict() for p in profiles],
                  "caps": caps_text(profiles), "kernels": kernels,
                  "unable_to_train": sum(1 for d in devices
                                         if d["cap_failures"] and not d["trained"]),
                  "failures": failures(devices)},
        "algorithm_info": {a: {"summary": ALGORITHMS[a].summary,
                               "reference": ALGORITHMS[a].reference} for a in algorithms},
        "simulated_seconds": sim, "timing": timing, "devices": devices})
    plots = write_plots(summary, devices, out)
    write_text(os.path.join(out, "report.md"), render(summary, plots))
    write_json(os.path.join(out, "summary.json"), summary)  # last: it marks the run complete
    return summary


if __name__ == "__main__":
    sys.exit(main())
