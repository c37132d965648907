"""What a simulate run leaves behind besides its records: per-device results keyed by
device id, the devices' personalized models, the printed table, files written atomically.

Personalized models: ``weights/<algorithm>/<device id>.npz``, one file per device, the
weights its final accuracy was measured with (every parameter of the model, keyed
``<layer>:<param>`` as any weight file: FedPer's shared base with the device's own head,
Ditto's personal model, a local model, FedAvg-FT's fine-tuned copy, FedAvg's global
model), plus ``index.json`` (device id -> file). One file per device rather than one
archive per algorithm: each is what that device keeps and loads alone (``nnfleet train
--init``, ``Model.set_weights``), the worker that evaluated the device writes it (no
process gathers every device's weights), and a folder of them is swapped in whole: the
workers write into ``weights/.<algorithm>.partial/``, which is renamed into place once
every device is done, so a folder under its algorithm's name is always complete.
``save-personal-models = false`` (top level of the config) saves none (the default model
of ``experiments/configs/default.toml`` is 195 KiB: 100 devices x 7 algorithms, 140 MB).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from typing import Any

import numpy as np

from device_runtime.weights import atomic_write, load_npz

NOT_FAILURES = ("ok", "offline", "dropped")  # train statuses that are not a device failure
INDEX = "index.json"


def write_json(path: str, obj: Any) -> None:
    """``obj`` as JSON at ``path``, atomically (a crash leaves the old file or the new)."""
    text = json.dumps(obj, indent=1)
    atomic_write(path, lambda f: f.write(text.encode()), ".json")


def write_text(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()), ".tmp")


def device_results(profiles: list[Any], records: list[dict[str, Any]],
                   device_ids: list[str]) -> list[dict[str, Any]]:
    """Per device (in fleet order): id, index, cap, largest measured peak RSS, whether it
    ever trained, its failures by status."""
    out = [{"device": device_ids[p.index], "index": p.index, "ram_cap": p.ram_cap,
            "kernels": p.kernels, "peak_rss": 0.0, "trained": False, "cap_failures": 0,
            "rounds_trained": 0, "speed": p.speed, "availability": p.availability,
            "failures": {}} for p in profiles]
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


def failures(devices: list[dict[str, Any]]) -> dict[str, int]:
    """Train tasks that failed, by status, over every device and algorithm."""
    total: dict[str, int] = {}
    for d in devices:
        for status, n in d["failures"].items():
            total[status] = total.get(status, 0) + n
    return dict(sorted(total.items()))


def caps_text(profiles: list[Any]) -> str:
    from device_runtime.units import fmt_bytes
    caps = sorted(p.ram_cap for p in profiles if p.ram_cap)
    if not caps:
        return "none"
    median = fmt_bytes(caps[len(caps) // 2])
    return f"{fmt_bytes(caps[0])} .. {fmt_bytes(caps[-1])} (median {median})"


# ---------------------------------------------------------------- personalized models
def file_name(device_id: str, taken: set[str]) -> str:
    """A file name for a device id: the id itself where it is a plain name, else the id
    with every other character replaced by ``_`` (index.json keeps the id)."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", device_id).lstrip(".")[:120] or "device"
    name, k = f"{stem}.npz", 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}.npz"
    taken.add(name)
    return name


def staging_dir(out: str, algorithm: str) -> str:
    """An empty folder for the workers to write ``<device index>.npz`` into."""
    path = os.path.join(out, "weights", f".{algorithm}.partial")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(os.path.join(path, "by-index"))
    return path


def finish_personal(out: str, algorithm: str, device_ids: list[str],
                    evaluated: set[int]) -> str:
    """Name the staged models by device id, write ``index.json`` and swap the folder in as
    ``weights/<algorithm>/``; only devices in ``evaluated`` (their final evaluation
    succeeded) keep a file. Returns the folder."""
    from experiments.resume import fsync_dir, sync_filesystem

    stage = os.path.join(out, "weights", f".{algorithm}.partial")
    raw = os.path.join(stage, "by-index")
    index: dict[str, str] = {}
    taken = {INDEX}
    for i, dev in enumerate(device_ids):
        src = os.path.join(raw, f"{i}.npz")
        if i in evaluated and os.path.exists(src):
            index[dev] = file_name(dev, taken)
            os.rename(src, os.path.join(stage, index[dev]))
    shutil.rmtree(raw)
    write_json(os.path.join(stage, INDEX), index)
    sync_filesystem(stage)  # the models on disk before their folder's name is
    final = os.path.join(out, "weights", algorithm)
    if os.path.exists(final):
        old = os.path.join(out, "weights", f".{algorithm}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(stage, final)
        shutil.rmtree(old)
    else:
        os.rename(stage, final)
    fsync_dir(os.path.dirname(final))
    return final


def load_personal(out: str, algorithm: str, device_id: str) -> dict[str, np.ndarray]:
    """The personalized model of ``device_id`` saved by the run in ``out``."""
    folder = os.path.join(out, "weights", algorithm)
    with open(os.path.join(folder, INDEX)) as f:
        index = json.load(f)
    if device_id not in index:
        raise KeyError(f"no personalized model of device {device_id!r} for {algorithm} in "
                       f"{folder} (its final evaluation failed, or no such device)")
    return load_npz(os.path.join(folder, index[device_id]))


# ---------------------------------------------------------------- printed table
def print_table(summary: dict[str, Any], out: str) -> None:
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
    failed = summary["fleet"]["failures"]
    if failed:
        print("device train tasks that failed: " + ", ".join(
            f"{n} {status}" for status, n in failed.items()) + " (per device: summary.json)")
    kernels = summary["fleet"].get("kernels", {}).get("per_kind", {})
    if kernels:
        from device_runtime.units import fmt_bytes
        print("kernels: " + ", ".join(
            f"{kind} {k['devices']} devices (worker RSS {fmt_bytes(k['worker_rss'][0])})"
            for kind, k in kernels.items() if k["worker_rss"]) + "; accuracy per RAM cap: report")
    print(f"devices unable to train within their cap: {summary['fleet']['unable_to_train']}; "
          f"total {t['total_seconds']:.1f} s (engine start-up {t['startup_seconds']:.2f} s); "
          f"report: {os.path.join(out, 'report.md')}")
