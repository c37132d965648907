"""The Markdown report of a simulate run: what ran, accuracy per algorithm, memory."""

from __future__ import annotations

from typing import Any

from device_runtime.units import fmt_bytes


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


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
              f"{cfg['fraction_train']}, local epochs: {cfg['local_epochs']}, seed {cfg['seed']}",
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
              "- `summary.json`: these numbers",
              "- `weights/<algorithm>.npz`: the final shared weights; `.json` beside them: the "
              "server's aggregated metrics per round and the updates it rejected",
              "- `checkpoint/`: the last round's checkpoint (`nnfleet simulate ... --resume` "
              "continues a run that was stopped)", ""]
    return "\n".join(lines)
