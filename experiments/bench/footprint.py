"""The runtime's own size: total RSS of one device training run, per kernel kind.

Each row is ``python -m device_runtime train MODEL --kernels KIND --steps N --json`` in a
fresh interpreter (kernels are chosen once per process; ``NNFLEET_NO_NUMBA=1`` for
numpy), read from the run's own JSON: RSS after each phase (``rss_phases``: imports,
model built, data, compile, warm-up = the baseline) and the peak of the whole process
(``process_peak_rss_bytes``), with what ``/usr/bin/time`` measures beside it (where GNU
time is installed): the run resets the kernel's high-water mark before training, which
``ru_maxrss`` and so ``time`` also lose, so theirs is the larger of the training peak and
what came after; a higher earlier peak shows only in the JSON's figure.

numba compiles its kernels once and caches the machine code on disk (``__pycache__``
next to the kernels, or ``NUMBA_CACHE_DIR``): a run with a cold cache compiles, which
costs time and memory a board pays once. The numba row is measured *warm*: one run first
fills the cache (its figure is dropped), then the measured run loads from it. With
``cold=True`` a second numba row is measured with an empty ``NUMBA_CACHE_DIR``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

MIB = 1024 * 1024
KINDS = ("numba", "numpy")
TIME = "/usr/bin/time"  # GNU time, for the figure a user would measure
PHASES = ("imports", "model", "data", "compile", "warm_up")


def run_train(kernels: str, model: str = "lenet5", steps: int = 3,
              env_extra: dict[str, str] | None = None, timeout: float = 1800.0) -> dict[str, Any]:
    """One ``train`` run in a fresh process: its JSON, plus ``time_maxrss_bytes``, what GNU
    ``/usr/bin/time`` reports for it where that is installed (else None). (Not this
    process's own ``wait4``: a child forked from it counts this process's RSS too.)"""
    env = dict(os.environ, **(env_extra or {}))
    if kernels == "numpy":
        env["NNFLEET_NO_NUMBA"] = "1"
    else:
        env.pop("NNFLEET_NO_NUMBA", None)
    cmd = [sys.executable, "-m", "device_runtime", "train", model, "--kernels", kernels,
           "--steps", str(steps), "--json"]
    with tempfile.TemporaryDirectory(prefix="nnfleet-footprint-") as d:
        timed = os.path.join(d, "maxrss")
        if os.access(TIME, os.X_OK):
            cmd = [TIME, "-f", "%M", "-o", timed, *cmd]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        try:
            with open(timed) as f:
                kib: int | None = int(f.read().split()[-1])  # GNU time: %M is in KiB
        except (OSError, ValueError, IndexError):
            kib = None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit code {proc.returncode}: {tail}"}
    return {**json.loads(lines[-1]), "time_maxrss_bytes": None if kib is None else kib * 1024}


def footprint_row(kernels: str, model: str = "lenet5", steps: int = 3,
                  cache: str = "warm") -> dict[str, Any]:
    """The footprint of ``kernels`` ("numba" or "numpy") for ``model``; numba ``cache`` is
    "warm" (a first run fills numba's cache, the second is measured) or "cold" (an empty
    ``NUMBA_CACHE_DIR``: everything compiled in the measured run)."""
    head: dict[str, Any] = {"kernels": kernels, "model": model, "steps": steps,
                            "numba_cache": cache if kernels == "numba" else "-"}
    if kernels == "numba" and importlib.util.find_spec("numba") is None:
        return {**head, "error": "numba is not installed"}
    if kernels == "numba" and cache == "cold":
        with tempfile.TemporaryDirectory(prefix="nnfleet-numba-cold-") as d:
            got = run_train(kernels, model, steps, {"NUMBA_CACHE_DIR": d})
    else:
        if kernels == "numba":
            run_train(kernels, model, 1)  # fills the cache (its figure is not the row's)
        got = run_train(kernels, model, steps)
    if "error" in got:
        return {**head, **got}
    if got.get("kernels") != kernels:
        return {**head, "error": f"ran the {got.get('kernels')} kernels"}
    phases = got["rss_phases"]  # bytes after each phase
    return {**head, "rss": {p: phases[p] for p in PHASES},
            "training_peak": phases["training_peak"],
            "process_peak": got["process_peak_rss_bytes"], "time_maxrss": got["time_maxrss_bytes"],
            "pool_bytes": got["pool_bytes"], "final_loss": got["final_loss"]}


def footprint_rows(kinds: list[str], model: str = "lenet5", steps: int = 3,
                   cold: bool = False) -> list[dict[str, Any]]:
    """A row per kernel kind (numba warm, and with ``cold`` numba cold too)."""
    rows = []
    for k in kinds:
        print(f"running footprint {k} {model} ...", file=sys.stderr, flush=True)
        rows.append(footprint_row(k, model, steps))
        if k == "numba" and cold:
            rows.append(footprint_row(k, model, steps, cache="cold"))
    return rows


def format_footprint(rows: list[dict[str, Any]]) -> str:
    """The footprint table (MiB), with what each column means."""
    head = ["kernels", "numba cache", "model", "imports", "built", "data", "compile",
            "warm-up", "train peak", "process peak", "time -v"]
    body = []
    notes = []
    for r in rows:
        if "error" in r:
            notes.append(f"  footprint {r['kernels']} {r['model']}: {r['error']}")
            continue
        body.append([r["kernels"], r["numba_cache"], r["model"],
                     *(f"{r['rss'][k] / MIB:.1f}" for k in PHASES),
                     *("-" if r[k] is None else f"{r[k] / MIB:.1f}"
                       for k in ("training_peak", "process_peak", "time_maxrss"))])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]

    def fmt(x: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(x, widths)))
    return "\n".join(
        ["footprint: total RSS (MiB) of `python -m device_runtime train MODEL --steps N "
         "--json`, one fresh process per row;",
         "columns are RSS after imports, model built, data, compile, warm-up (the "
         "baseline), then the peak during training",
         "and of the whole process; 'time -v' is GNU time's maximum RSS of the run (it "
         "misses peaks before the run's reset).",
         "numba 'warm': its on-disk cache was filled by an earlier run; 'cold': an empty "
         "NUMBA_CACHE_DIR (compiles).",
         fmt(head), "  ".join("-" * w for w in widths), *(fmt(b) for b in body), *notes])
