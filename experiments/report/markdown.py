"""The Markdown report of a simulate run: what ran, accuracy per algorithm, memory."""

from __future__ import annotations

from typing import Any

from device_runtime.units import fmt_bytes


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _seeds(cfg: dict[str, Any]) -> str:
    """The sub-seeds where one differs from ``seed`` (experiments/seeds.py)."""
    roles = cfg.get("seed_roles") or {}
    if all(v == cfg["seed"] for v in roles.values()):
        return ""
    return " (" + ", ".join(f"{k}-seed {v}" for k, v in roles.items()) + ")"


def accuracy_table(summary: dict[str, Any]) -> list[str]:
    rows = ["| algorithm | mean | std | p10 | median | p90 | mean, devices that trained | "
            "better than FedAvg on | mean gain vs FedAvg | devices trained |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for algo, s in summary["algorithms"].items():
        f, ft = s["final_accuracy"], s["final_accuracy_trained_devices"]
        vs = s.get("vs_fedavg_trained_devices")
        better = f"{_pct(vs['better'])}% of devices" if vs else "-"
        gain = f"{100 * vs['mean_gain']:+.1f} pts" if vs else "-"
        rows.append(f"| {algo} | {_pct(f['mean'])} | {_pct(f['std'])} | {_pct(f['p10'])} | "
                    f"{_pct(f['median'])} | {_pct(f['p90'])} | {_pct(ft['mean'])} | {better} | "
                    f"{gain} | {s['devices_trained']}/{f['n']} |")
    return rows


def _cap(row: dict[str, Any]) -> str:
    lo, hi = row["cap_low"], row["cap_high"]
    if lo is None:
        return "uncapped"
    return fmt_bytes(lo) if lo == hi else f"{fmt_bytes(lo)} .. {fmt_bytes(hi)}"


def cap_table(summary: dict[str, Any]) -> list[str]:
    """Mean final accuracy per RAM cap and algorithm, with the devices' kernels."""
    rows = summary.get("accuracy_by_cap") or []
    if not rows:
        return []
    algos = list(summary["algorithms"])
    out = ["| RAM cap | devices | kernels | trained | " + " | ".join(algos) + " |",
           "|---|---:|---|---:|" + "---:|" * len(algos)]
    for r in rows:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(r["kernels"].items()))
        acc = " | ".join(_pct(r["accuracy"][a]["mean"]) if r["accuracy"][a]["n"] else "-"
                         for a in algos)
        out.append(f"| {_cap(r)} | {r['devices']} | {kinds} | {r['trained']} | {acc} |")
    return out


def kernel_table(summary: dict[str, Any]) -> list[str]:
    """Kernel kind -> devices, caps, workers and what a worker of the kind costs."""
    info = summary["fleet"].get("kernels")
    if not info:
        return []
    out = ["| kernels | devices | RAM caps | trained | workers | worker RSS before any device |",
           "|---|---:|---|---:|---:|---:|"]
    for kind, k in info["per_kind"].items():
        mine = [d for d in summary["devices"] if d.get("kernels") == kind]
        caps = sorted(d["ram_cap"] for d in mine if d.get("ram_cap"))
        span = (f"{fmt_bytes(caps[0])} .. {fmt_bytes(caps[-1])}" if caps else "uncapped") + \
            (" and uncapped" if caps and len(caps) < len(mine) else "")
        rss = k["worker_rss"]
        out.append(f"| {kind} | {k['devices']} | {span} | "
                   f"{sum(1 for d in mine if d['trained'])} | {k['workers']} | "
                   f"{fmt_bytes(rss[len(rss) // 2]) if rss else '-'} |")
    c = info.get("compile") or {}
    if c:
        how = (f"compiled {c['compiled']} kernel signatures (empty cache)" if c["compiled"]
               else f"loaded {c['loaded']} kernel signatures from the cache")
        out += ["", f"numba: {how} in {c['seconds']:.1f} s, in a process of its own before "
                f"any worker started (it reached {fmt_bytes(c['rss'])} RSS); workers load the "
                f"machine code from the cache ({', '.join(c['cache_dirs'])}), so no device is "
                "measured while compiling."]
    return out


def render(summary: dict[str, Any], plots: list[str]) -> str:
    """The report text (Markdown)."""
    cfg, fleet, timing = summary["config"], summary["fleet"], summary["timing"]
    lines = [f"# nnfleet simulate: {cfg.get('name', 'experiment')}", ""]
    lines += [f"- data: {fleet['data']['name']}, {fleet['data']['num_devices']} devices, "
              f"{fleet['data']['train_samples']} train / {fleet['data']['test_samples']} test "
              f"samples; classes per device (median) "
              f"{fleet['data']['classes_per_device']['median']:.0f}; label skew "
              f"(total variation to the fleet's mix, median) "
              f"{fleet['data']['label_tv_to_global']['median']:.2f}",
              f"- model: {cfg['model_summary']}",
              f"- rounds: {cfg['rounds']}, fraction of devices trained per round: "
              f"{cfg['fraction_train']}, local epochs: {cfg['local_epochs']}, seed {cfg['seed']}"
              + _seeds(cfg),
              f"- fleet engine: {timing['workers']} warm workers "
              f"({timing['isolation']} isolation), "
              f"start-up {timing['startup_seconds']:.2f} s, total {timing['total_seconds']:.1f} s",
              f"- RAM caps: {fleet['caps']}; devices unable to train within their cap: "
              f"{fleet['unable_to_train']}",
              "- device train tasks that failed: " + (", ".join(
                  f"{n} {status}" for status, n in fleet.get("failures", {}).items()) or "none")
              + " (per device in summary.json, each with its reason in metrics.jsonl)", ""]
    lines += ["## Personalized accuracy on each device's own test split (final round, %)", "",
              *accuracy_table(summary), "",
              "Statistics are over the devices that could run the runtime at the end (a device "
              "whose RAM cap is below the runtime's own size can neither train nor evaluate; "
              "such devices are counted above as unable to train). *mean, devices that "
              "trained*: devices that trained at least once with this algorithm. *better than "
              "FedAvg on*: among devices that could train, the share whose own accuracy is "
              "higher than with FedAvg's global model (ties are not better).", ""]
    if cap_table(summary):
        lines += ["## Accuracy against RAM cap (final round, %)", "", *cap_table(summary), "",
                  "Mean over the devices of each cap that could evaluate; *trained*: devices "
                  "that trained at least once.", ""]
    if kernel_table(summary):
        lines += ["## Kernels", "", *kernel_table(summary), "",
                  "A device whose cap cannot hold numba's fixed cost (numba + LLVM) trains with "
                  "the plain-numpy kernels (same numbers within float32 rounding, slower); "
                  "see experiments/fleet/kernels.py.", ""]
    for p in plots:
        lines += [f"![{p}]({p})", ""]
    lines += ["## Per algorithm", ""]
    for algo, s in summary["algorithms"].items():
        st = s["train_status"]
        lines.append(f"- **{algo}** ({summary['algorithm_info'][algo]['summary']}; "
                     f"{summary['algorithm_info'][algo]['reference']}): "
                     f"{timing['per_algorithm'][algo]:.1f} s wall, "
                     f"{summary['simulated_seconds'][algo]:.1f} s simulated; train replies "
                     + ", ".join(f"{k} {v}" for k, v in sorted(st.items()))
                     + f"; peak RSS median {fmt_bytes(s['peak_rss']['median'])}")
        rej = s.get("rejected_updates", {})
        if rej.get("total"):
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(rej["per_kind"].items()))
            lines.append(f"  - updates rejected by the server before aggregation: "
                         f"{rej['total']} ({kinds}) from devices "
                         f"{', '.join(map(str, rej['per_device']))}")
    lines += ["", "## Files", "", "- `metrics.jsonl`: one line per device and message "
              "(train, evaluate, final), with the device's metrics and status; one line per "
              "update the server rejected (rejected, with its kind and reason)",
              "- `summary.json`: these numbers (per-device figures keyed by device id)",
              "- `weights/<algorithm>.npz`: the final shared weights; `.json` beside them: the "
              "server's aggregated metrics per round and the updates it rejected",
              "- `weights/<algorithm>/<device id>.npz`: each device's personalized model, "
              "the weights its final accuracy above was measured with (`index.json`: device "
              "id -> file)",
              "- `checkpoint/`: the last round's checkpoint (`nnfleet simulate ... --resume` "
              "continues a run that was stopped)", ""]
    return "\n".join(lines)
