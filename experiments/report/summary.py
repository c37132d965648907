"""Numbers of a simulate run, from its per-device records (``metrics.jsonl`` rows).

Per-device figures are keyed by device id (``d07``, a file's or a LEAF user's name) in
fleet order; records carry both the id and the device's index in the fleet."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Iterable

import numpy as np


def spread(values: Iterable[float]) -> dict[str, float]:
    """mean, std and quantiles of a list (empty -> zeros, n=0)."""
    v = np.asarray([x for x in values if x is not None and x >= 0], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, "mean": 0.0, "std": 0.0, "min": 0.0, "p10": 0.0, "median": 0.0,
                "p90": 0.0, "max": 0.0}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()),
            "min": float(v.min()), "p10": float(np.percentile(v, 10)),
            "median": float(np.median(v)), "p90": float(np.percentile(v, 90)),
            "max": float(v.max())}


def _id(r: dict[str, Any]) -> str:
    """A record's device id (records also carry the device's index in the fleet)."""
    return str(r.get("device_id", r["device"]))


def summarize_algorithm(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One algorithm's records -> final accuracy spread, curves, participation, memory."""
    # devices finish in any order: sort, so that means are summed in the same order always
    records = sorted(records, key=lambda r: (r["phase"], r["round"], r["device"]))
    final = {_id(r): r.get("accuracy", -1.0) for r in records
             if r["phase"] == "final" and r["status"] == "ok"}
    train = [r for r in records if r["phase"] == "train"]
    evals = [r for r in records if r["phase"] == "evaluate" and r["status"] == "ok"]
    by_round: dict[int, list[float]] = defaultdict(list)
    for r in evals:
        by_round[int(r["round"])].append(r.get("accuracy", -1.0))
    trained = {_id(r) for r in train if r["status"] == "ok"}
    tried = {_id(r) for r in train if r["status"] not in ("offline", "dropped", "no-data")}
    order = {_id(r): r["device"] for r in train}  # fleet order (ids need not sort so)
    unable = sorted({_id(r) for r in train if r["status"] == "cap-exceeded"} - trained,
                    key=order.__getitem__)
    status: dict[str, int] = defaultdict(int)
    for r in train:
        status[r["status"]] += 1
    peak: dict[str, float] = {}
    for r in train:
        if r.get("peak-rss", -1) and r.get("peak-rss", -1) > 0:
            peak[_id(r)] = max(peak.get(_id(r), 0.0), float(r["peak-rss"]))
    before = [r.get("accuracy-before", -1.0) for r in train if r["status"] == "ok"]
    after = [r.get("accuracy-after", -1.0) for r in train if r["status"] == "ok"]
    return {
        "final_accuracy": spread(final.values()),
        "final_accuracy_trained_devices": spread(v for d, v in final.items() if d in trained),
        "final_accuracy_by_device": {d: float(v) for d, v in final.items()},  # fleet order
        "accuracy_per_round": {int(k): float(np.mean([x for x in v if x >= 0] or [0.0]))
                               for k, v in sorted(by_round.items())},
        "train_status": dict(status),
        "devices_trained": len(trained),
        "devices_tried": len(tried),
        "devices_unable_to_train": unable,
        "accuracy_before_training": spread(before),
        "accuracy_after_training": spread(after),
        "peak_rss_by_device": {d: v for d, v in sorted(peak.items(), key=lambda kv:
                                                       order.get(kv[0], 0))},
        "peak_rss": spread(peak.values()),
        "rejected_updates": rejections(records),
    }


def rejections(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Updates the server rejected (``rejected`` records): counts per round, kind and device,
    and each device's reasons."""
    rej = [r for r in records if r["phase"] == "rejected"]
    per_device: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rej, key=lambda r: (r["device"], r["round"])):  # fleet order
        per_device[_id(r)].append({k: r[k] for k in ("round", "kind", "reason")})
    return {"total": len(rej), "per_round": dict(Counter(int(r["round"]) for r in rej)),
            "per_kind": dict(Counter(r["kind"] for r in rej)),
            "per_device": dict(per_device)}


def wins(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Per-device comparison of two final-accuracy maps: how often a beats, ties, loses."""
    common = sorted(set(a) & set(b))
    d = np.array([a[k] - b[k] for k in common])
    if d.size == 0:
        return {"devices": 0, "better": 0.0, "tie": 0.0, "worse": 0.0, "mean_gain": 0.0}
    return {"devices": int(d.size), "better": float((d > 1e-9).mean()),
            "tie": float((np.abs(d) <= 1e-9).mean()), "worse": float((d < -1e-9).mean()),
            "mean_gain": float(d.mean())}


def summarize(records: list[dict[str, Any]], algorithms: list[str],
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's summary: per algorithm, plus per-device wins against FedAvg and local."""
    per: dict[str, dict[str, Any]] = {}
    for algo in algorithms:
        per[algo] = summarize_algorithm([r for r in records if r.get("algorithm") == algo])
    # devices that could not train under any algorithm (their cap is below the runtime)
    unable: set[str] = set().union(*[set(per[a]["devices_unable_to_train"]) for a in algorithms])
    for algo in algorithms:
        for base in ("fedavg", "local"):
            if base in per and base != algo:
                a, b = per[algo]["final_accuracy_by_device"], per[base]["final_accuracy_by_device"]
                per[algo][f"vs_{base}"] = wins(a, b)
                per[algo][f"vs_{base}_trained_devices"] = wins(
                    {d: v for d, v in a.items() if d not in unable},
                    {d: v for d, v in b.items() if d not in unable})
    out: dict[str, Any] = {"algorithms": per}
    out.update(extra or {})
    if out.get("devices"):
        out["accuracy_by_cap"] = accuracy_by_cap(out["devices"], per)
    return out


MAX_CAP_GROUPS = 8  # more distinct caps than this (a continuous draw) are binned


def accuracy_by_cap(devices: list[dict[str, Any]],
                    per: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per RAM cap (or cap range): devices, their kernels, how many trained, and each
    algorithm's mean final accuracy over them (what small devices get)."""
    capped = sorted((d for d in devices if d.get("ram_cap")), key=lambda d: d["ram_cap"])
    groups = [[d for d in capped if d["ram_cap"] == c]
              for c in sorted({d["ram_cap"] for d in capped})]
    if len(groups) > MAX_CAP_GROUPS:  # equal-count bins of the sorted caps
        groups = [list(g) for g in np.array_split(np.array(capped, dtype=object),
                                                  MAX_CAP_GROUPS) if len(g)]
    uncapped = [d for d in devices if not d.get("ram_cap")]
    final = {a: s["final_accuracy_by_device"] for a, s in per.items()}  # by device id
    rows = []
    for g in groups + ([uncapped] if uncapped else []):
        ids = [d["device"] for d in g]
        rows.append({
            "cap_low": g[0].get("ram_cap"), "cap_high": g[-1].get("ram_cap"),
            "devices": len(g), "trained": sum(1 for d in g if d["trained"]),
            "kernels": dict(Counter(str(d.get("kernels", "")) for d in g)),
            "accuracy": {a: spread(acc[i] for i in ids if i in acc)
                         for a, acc in final.items()}})
    return rows
