"""PNG plots over the seeds of a multi-seed run: error bars are 95% confidence intervals
(Student t over seeds, experiments/report/over_seeds.py); accuracy in % as in the tables."""

from __future__ import annotations

import os
from typing import Any

from .plots import _plt, _save, have_matplotlib


def _err(m: dict[str, Any]) -> float:
    return 100 * m["half_width"] if m["half_width"] is not None else 0.0


def final_accuracy_over_seeds(agg: dict[str, Any], path: str) -> str:
    """A bar per algorithm: mean over seeds, its 95% CI, and each seed's value as a dot."""
    plt = _plt()
    names = list(agg["algorithms"])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.2))
    ms = [agg["algorithms"][a]["final_accuracy"] for a in names]
    xs = list(range(len(names)))
    ax.bar(xs, [100 * m["mean"] for m in ms], yerr=[_err(m) for m in ms], capsize=5,
           color="C0", alpha=0.6, label="mean over seeds, 95% CI")
    for x, m in zip(xs, ms):
        ax.scatter([x] * len(m["values"]), [100 * v for v in m["values"]], s=14,
                   color="k", zorder=3, label="one seed" if x == 0 else None)
    ax.set_xticks(xs, names, rotation=20)
    ax.set_ylim(0, 100)
    n = len(agg["seeds"])
    return _save(plt, fig, ax, path, None, "final personalized accuracy (%)",
                 f"Mean final accuracy over {n} seed{'s' if n > 1 else ''} (95% CI)",
                 grid_axis="y")


def accuracy_per_round_over_seeds(agg: dict[str, Any], path: str) -> str:
    """Mean accuracy per round over seeds, each round with its 95% CI."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for algo, a in agg["algorithms"].items():
        curve = a["accuracy_per_round"]
        if curve:
            rounds = [int(r) for r in curve]
            ax.errorbar(rounds, [100 * m["mean"] for m in curve.values()],
                        yerr=[_err(m) for m in curve.values()], marker=".", capsize=3,
                        label=algo)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_ylim(0, 100)  # a t interval of few seeds can reach past what accuracy can be
    return _save(plt, fig, ax, path, "round", "mean personalized accuracy (%)",
                 "Accuracy per round over seeds (mean, 95% CI)")


def write_seed_plots(agg: dict[str, Any], out: str) -> list[str]:
    """The plots into ``out``; their file names (empty without matplotlib)."""
    if not have_matplotlib():
        return []
    files = [final_accuracy_over_seeds(agg, os.path.join(out, "accuracy_over_seeds.png")),
             accuracy_per_round_over_seeds(
                 agg, os.path.join(out, "accuracy_per_round_over_seeds.png"))]
    return [os.path.basename(f) for f in files]
