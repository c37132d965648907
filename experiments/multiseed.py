"""``nnfleet simulate --seeds A,B,...``: one complete run per seed, then the figures over
them (see experiments/seeds.py for what each seed drives and the folder layout).

``--resume`` goes on seed by seed: a seed whose ``summary.json`` was written by the same
run (its config fingerprint) is taken as it is, a seed with a checkpoint goes on from it,
and the others start. The figures over seeds are always recomputed from the seeds'
``summary.json`` files, so a seed that is run again changes them accordingly.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

RunOne = Callable[..., dict[str, Any]]


def run_seeds(cfg: dict[str, Any], data: dict[str, Any], algorithms: list[str], out: str,
              args: argparse.Namespace, seeds: list[int], run_one: RunOne) -> int:
    """Run (or resume) every seed, write ``out``/summary.json, report.md and plots, print
    the table over seeds; returns the exit code."""
    from experiments.report.over_seeds import aggregate, render_seeds
    from experiments.report.seed_plots import write_seed_plots
    from experiments.results import print_table, write_json, write_text
    from experiments.seeds import finished_summary, for_seed, has_checkpoint, seed_dir
    from experiments.simulate import run_fingerprint

    os.makedirs(out, exist_ok=True)
    isolation = args.isolation or cfg.get("fleet", {}).get("isolation", "worker")
    summaries: dict[int, dict[str, Any]] = {}
    for i, s in enumerate(seeds):
        sub, one = seed_dir(out, s), for_seed(cfg, s)
        done = finished_summary(sub, run_fingerprint(one, data, algorithms, isolation)) \
            if args.resume else None
        if not args.quiet:
            what = "done before, kept" if done else "resumed" if args.resume and \
                has_checkpoint(sub) else "running"
            print(f"seed {s} ({i + 1}/{len(seeds)}): {what} in {sub}", file=sys.stderr)
        if done is None:
            done = run_one(one, data, algorithms, sub, args,
                           bool(args.resume and has_checkpoint(sub)), label=f"seed {s}: ")
            print(f"== seed {s} ==")
            print_table(done, sub)
        summaries[s] = done
    agg = aggregate(summaries, algorithms, {s: os.path.basename(seed_dir(out, s))
                                            for s in seeds})
    plots = write_seed_plots(agg, out)
    write_text(os.path.join(out, "report.md"), render_seeds(agg, plots))
    write_json(os.path.join(out, "summary.json"), agg)
    print_seed_table(agg, out)
    return 0


def print_seed_table(agg: dict[str, Any], out: str) -> None:
    """Mean over seeds, its 95% CI and the paired test against FedAvg, one row each."""
    seeds = agg["seeds"]
    base = agg["baseline"]
    print(f"== over {len(seeds)} seeds ({', '.join(map(str, seeds))}): mean final accuracy, "
          f"95% CI (Student t), paired t-test against {base or '-'} ==")
    print(f"{'algorithm':12s} {'mean acc':>9s} {'95% CI':>15s} {'vs ' + (base or '-'):>14s} "
          f"{'p':>7s}")
    for algo, a in agg["algorithms"].items():
        m = a["final_accuracy"]
        ci = f"[{100 * m['ci'][0]:.1f}, {100 * m['ci'][1]:.1f}]" if m["ci"] else "n/a"
        vs = a.get("vs_baseline")
        diff = f"{100 * vs['mean_diff']:+.1f} pts" if vs else "-"
        p = ("n/a" if vs["p_value"] is None else f"{vs['p_value']:.3f}") if vs else "-"
        print(f"{algo:12s} {100 * m['mean']:8.1f}% {ci:>15s} {diff:>14s} {p:>7s}")
    print(f"report: {os.path.join(out, 'report.md')} (each seed's own: "
          f"{os.path.join(out, 'seed-<s>', 'report.md')})")
