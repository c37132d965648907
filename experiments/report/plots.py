"""PNG plots of a simulate run (matplotlib, the ``plot`` extra; skipped without it)."""

from __future__ import annotations

import os
from typing import Any

MIB = 1024 * 1024


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plt() -> Any:
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _save(plt: Any, fig: Any, ax: Any, path: str, xlabel: str | None, ylabel: str, title: str,
          grid_axis: str = "both") -> str:
    """Label, grid, legend (when something is labelled), write the PNG, close the figure."""
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis=grid_axis)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = os.path.join(os.path.dirname(path), f".tmp-{os.path.basename(path)}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)  # no half-written plot under its name
    return path


def accuracy_per_round(summary: dict[str, Any], path: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for algo, s in summary["algorithms"].items():
        curve = s["accuracy_per_round"]
        if curve:
            ax.plot(list(curve), list(curve.values()), marker=".", label=algo)
    return _save(plt, fig, ax, path, "round", "mean personalized accuracy (own test split)",
                 "Accuracy per round (mean over evaluated devices)")


def accuracy_spread(summary: dict[str, Any], path: str) -> str:
    plt = _plt()
    names = list(summary["algorithms"])
    data = [list(summary["algorithms"][a]["final_accuracy_by_device"].values()) or [0.0]
            for a in names]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=20)
    return _save(plt, fig, ax, path, None, "final personalized accuracy per device",
                 "Spread of personalized accuracy across devices", grid_axis="y")


def memory_vs_cap(devices: list[dict[str, Any]], path: str) -> str:
    """Each device's measured peak RSS against its RAM cap; unable-to-train devices in red."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ok = [(d["ram_cap"] / MIB, d["peak_rss"] / MIB) for d in devices
          if d.get("ram_cap") and d.get("peak_rss") and d.get("trained")
          and not d.get("cap_failures")]
    some = [(d["ram_cap"] / MIB, d["peak_rss"] / MIB) for d in devices
            if d.get("ram_cap") and d.get("peak_rss") and d.get("trained")
            and d.get("cap_failures")]
    bad = [(d["ram_cap"] / MIB, (d.get("peak_rss") or d["ram_cap"]) / MIB) for d in devices
           if d.get("ram_cap") and not d.get("trained")]
    if ok:
        ax.scatter(*zip(*ok), s=12, label="trained", alpha=0.7)
    if some:
        ax.scatter(*zip(*some), s=16, marker="^", color="orange",
                   label="over its cap in some rounds (those updates dropped)")
    if bad:
        ax.scatter(*zip(*bad), s=20, marker="x", color="red", label="unable to train (cap)")
    pts = ok + some + bad
    if pts:
        lo = min(min(p) for p in pts) * 0.95
        hi = max(max(p) for p in pts) * 1.05
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="peak = cap")
    return _save(plt, fig, ax, path, "RAM cap (MiB)", "measured peak RSS (MiB)",
                 "Per-device peak memory against its cap")


def accuracy_vs_cap(summary: dict[str, Any], path: str) -> str:
    """Each device's final accuracy against its RAM cap, per algorithm, with the mean per cap;
    devices on the numpy kernels as hollow markers."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    caps = {d["device"]: d["ram_cap"] / MIB for d in summary["devices"] if d.get("ram_cap")}
    numpy = {d["device"] for d in summary["devices"] if d.get("kernels") == "numpy"}
    rows = [r for r in summary.get("accuracy_by_cap", []) if r["cap_low"]]
    for i, (algo, s) in enumerate(summary["algorithms"].items()):
        color = f"C{i % 10}"
        acc = s["final_accuracy_by_device"]  # by device id
        jitter = 1.0 + 0.015 * (i - len(summary["algorithms"]) / 2)  # algorithms side by side
        for hollow in (False, True):
            sel = [(caps[d] * jitter, v) for d, v in acc.items()
                   if d in caps and (d in numpy) == hollow]
            if sel:
                ax.scatter(*zip(*sel), s=10, alpha=0.35, color=color,
                           facecolors="none" if hollow else color)
        means = [((r["cap_low"] + r["cap_high"]) / 2 / MIB, r["accuracy"][algo]["mean"])
                 for r in rows if r["accuracy"][algo]["n"]]
        if means:
            ax.plot(*zip(*means), marker="o", color=color, label=algo)
    if caps:
        ax.set_xscale("log", base=2)
    return _save(plt, fig, ax, path, "RAM cap (MiB, log scale; hollow: numpy kernels)",
                 "final personalized accuracy", "Accuracy against RAM cap (mean per cap)")


def write_plots(summary: dict[str, Any], devices: list[dict[str, Any]], out: str) -> list[str]:
    """All plots into ``out``; returns their file names (empty without matplotlib)."""
    if not have_matplotlib():
        return []
    files = [accuracy_per_round(summary, os.path.join(out, "accuracy_per_round.png")),
             accuracy_spread(summary, os.path.join(out, "accuracy_spread.png")),
             memory_vs_cap(devices, os.path.join(out, "memory_vs_cap.png"))]
    if summary.get("accuracy_by_cap"):
        files.append(accuracy_vs_cap(summary, os.path.join(out, "accuracy_vs_cap.png")))
    return [os.path.basename(f) for f in files]
