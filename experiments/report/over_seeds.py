"""Figures over the seeds of a multi-seed run, from each seed's own ``summary.json``.

Per seed, an algorithm's figure is the mean final personalized accuracy over the devices
of that run (``final_accuracy.mean``; also over the devices that trained,
``final_accuracy_trained_devices.mean``). Over the n seeds (experiments/stats.py):

- mean and 95% confidence interval ``mean ± t_{0.975, n-1} * s / sqrt(n)`` (s: the sample
  standard deviation over seeds, n - 1 in its denominator);
- a paired t-test against FedAvg on the same seeds: ``d_s = acc_s - acc_fedavg_s``,
  ``t = mean(d) / (s_d / sqrt(n))``, n - 1 degrees of freedom, two-sided p-value.

With one seed the interval and the p-value are None ("n/a"). p-values are per algorithm,
not corrected for the number of algorithms compared.

In ``summary.json``: ``algorithms.<name>.<metric>`` = ``{n, mean, std, values (per seed),
level, ci [low, high], half_width}``, ``<metric>_vs_baseline`` = ``{n, mean_diff,
std_diff, df, t, p_value}`` (``vs_baseline``: the one of ``final_accuracy``), and
``accuracy_per_round`` (per round, the same as a metric).
"""

from __future__ import annotations

import math
from typing import Any

from experiments.stats import mean_ci, paired_t

BASELINE = "fedavg"
METRICS = {"final_accuracy": "mean final personalized accuracy over the devices that could "
                             "evaluate",
           "final_accuracy_trained_devices": "mean final personalized accuracy over the "
                                             "devices that trained at least once"}
METHOD = {
    "per_seed": "each seed's run: the mean over its devices (summary.json of seed-<s>)",
    "ci": "mean ± t_{0.975, n-1} * s / sqrt(n) over the n seeds (Student t; s with n - 1)",
    "test": "paired t-test against the baseline over the same seeds: d = acc - acc_baseline, "
            "t = mean(d) / (s_d / sqrt(n)), df = n - 1, two-sided p = 2 * (1 - F_t(|t|)); "
            "not corrected for multiple comparisons",
}


def _json_safe(r: dict[str, Any]) -> dict[str, Any]:
    """t = ±inf (every difference the same, not 0) is not JSON: None, with a note."""
    t = r.get("t")
    if isinstance(t, float) and math.isinf(t):
        return {**r, "t": None, "note": "every seed gives the same difference: t is infinite"}
    return r


def aggregate(summaries: dict[int, dict[str, Any]], algorithms: list[str],
              folders: dict[int, str]) -> dict[str, Any]:
    """The multi-seed summary: per algorithm mean, CI and paired test per metric, and the
    accuracy per round (mean and CI over seeds, rounds every seed has)."""
    seeds = list(summaries)
    base = BASELINE if BASELINE in algorithms else None
    per: dict[str, dict[str, Any]] = {}
    for algo in algorithms:
        runs = [summaries[s]["algorithms"][algo] for s in seeds]
        entry: dict[str, Any] = {}
        for key in METRICS:
            entry[key] = mean_ci([r[key]["mean"] for r in runs])
            if base is not None and algo != base:
                ref = [summaries[s]["algorithms"][base][key]["mean"] for s in seeds]
                entry[f"{key}_vs_baseline"] = _json_safe(paired_t(entry[key]["values"], ref))
        if "final_accuracy_vs_baseline" in entry:
            entry["vs_baseline"] = entry["final_accuracy_vs_baseline"]
        curves = [{int(k): v for k, v in r["accuracy_per_round"].items()} for r in runs]
        common = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
        entry["accuracy_per_round"] = {rnd: mean_ci([c[rnd] for c in curves]) for rnd in common}
        entry["devices_trained"] = [r["devices_trained"] for r in runs]
        per[algo] = entry
    first = summaries[seeds[0]]
    config = {k: v for k, v in first["config"].items() if k not in ("seed", "seed_roles",
                                                                     "fingerprint")}
    return {
        "seeds": seeds, "baseline": base, "metrics": METRICS, "method": METHOD,
        "runs": {str(s): {"folder": folders[s],
                          "seed_roles": summaries[s]["config"].get("seed_roles"),
                          "fleet": summaries[s]["fleet"]["data"]["name"],
                          "total_seconds": summaries[s]["timing"]["total_seconds"]}
                 for s in seeds},
        "config": config, "algorithms": per,
        "algorithm_info": first.get("algorithm_info", {}),
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _ci(m: dict[str, Any]) -> str:
    return "n/a" if m["ci"] is None else f"[{_pct(m['ci'][0])}, {_pct(m['ci'][1])}]"


def _p(vs: dict[str, Any] | None) -> str:
    if vs is None:
        return "-"
    p = vs["p_value"]
    return "n/a" if p is None else ("< 0.001" if p < 1e-3 else f"{p:.3f}")


def seed_table(agg: dict[str, Any], key: str) -> list[str]:
    """One row per algorithm: mean, CI, std over seeds, per-seed values, the paired test."""
    base = agg["baseline"] or "-"
    seeds = ", ".join(map(str, agg["seeds"]))
    rows = [f"| algorithm | mean | 95% CI | std over seeds | per seed ({seeds}) | "
            f"mean difference vs {base} | t | p (paired, two-sided) |",
            "|---|---:|---:|---:|---|---:|---:|---:|"]
    for algo, a in agg["algorithms"].items():
        m, vs = a[key], a.get(f"{key}_vs_baseline")
        diff = f"{100 * vs['mean_diff']:+.1f} pts" if vs else "-"
        t = "-" if vs is None else "n/a" if vs["t"] is None else f"{vs['t']:.2f}"
        rows.append(f"| {algo} | {_pct(m['mean'])} | {_ci(m)} | "
                    f"{_pct(m['std']) if m['n'] > 1 else 'n/a'} | "
                    f"{', '.join(_pct(v) for v in m['values'])} | {diff} | {t} | {_p(vs)} |")
    return rows


def render_seeds(agg: dict[str, Any], plots: list[str]) -> str:
    """The multi-seed report (Markdown)."""
    cfg, seeds = agg["config"], agg["seeds"]
    n = len(seeds)
    lines = [f"# nnfleet simulate: {cfg.get('name', 'experiment')}, {n} seed"
             f"{'s' if n > 1 else ''} ({', '.join(map(str, seeds))})", "",
             f"- model: {cfg.get('model_summary', '')}",
             f"- rounds: {cfg.get('rounds')}, fraction of devices trained per round: "
             f"{cfg.get('fraction_train')}, local epochs: {cfg.get('local_epochs')}",
             "- each seed is one complete run of its own (its report: `seed-<s>/report.md`); "
             "the seeds each run used:", "",
             "| run | data-seed | model-seed | sampling-seed | fleet | wall time |",
             "|---|---:|---:|---:|---|---:|"]
    for s, r in agg["runs"].items():
        sd = r["seed_roles"] or {}
        lines.append(f"| [{r['folder']}]({r['folder']}/report.md) | {sd.get('data', '-')} | "
                     f"{sd.get('model', '-')} | {sd.get('sampling', '-')} | {r['fleet']} | "
                     f"{r['total_seconds']:.1f} s |")
    for key, what in agg["metrics"].items():
        lines += ["", f"## {what[0].upper() + what[1:]} (%), over seeds", "",
                  *seed_table(agg, key)]
    m = agg["method"]
    lines += ["", "Per seed: " + m["per_seed"] + ". Confidence interval: " + m["ci"] + ". "
              "Test: " + m["test"] + "." + (" With one seed there is no interval and no "
                                            "test (n/a)." if n == 1 else ""), ""]
    for p in plots:
        lines += [f"![{p}]({p})", ""]
    lines += ["## Files", "", "- `summary.json`: these numbers (per algorithm and metric: "
              "per-seed values, mean, std, ci, the paired test), recomputed from the seeds' "
              "own `seed-<s>/summary.json`",
              "- `seed-<s>/`: each seed's complete run (records, per-device results keyed by "
              "device id, weights, personalized models, checkpoint; `--resume` goes on "
              "seed by seed)", ""]
    return "\n".join(lines)
