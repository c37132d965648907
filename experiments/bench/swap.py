"""``nnfleet bench swap``: RAM cap vs measured peak RSS vs step time, with proactive swap.

For each model (batch 32 by default) it first trains unswapped to measure the baseline
RSS and working set, then sweeps the cap (baseline + a fraction of that working set, down
to 0.05) each run in a fresh process (``nnfleet train --ram-cap``), ``--repeat`` times
per cap (a cap that fits must fit every time); with ``--torch`` also at baseline + 5% of
PyTorch's working set, measured side by side (issue 13's target). Below the floor of
batch 32 the cap fit chooses micro-batches whose gradients accumulate into a mostly
swapped sum (device_runtime/accumulate.py).
Then the run with every swap candidate swapped is repeated with prefetch lookahead 0
(read when needed, no overlap), the default 3, and 8, side by side, with the time the
training thread spent blocked on swap I/O.
Prints a table with ratios and writes a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

MiB = 1 << 20
# over the smallest full-batch plan, its optimizer state and the fit's margin: page
# rounding and a baseline that moves a little between processes
FLOOR_SLACK = 512 * 1024


def _train(model: str, steps: int, batch: int, extra: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "device_runtime", "train", model, "--steps", str(steps),
           "--batch-size", str(batch), "--samples", str(batch * 2), "--no-shuffle", "--json",
           *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    lines = p.stdout.strip().splitlines()
    out: dict[str, Any] = {"returncode": p.returncode}
    if lines:
        try:
            out.update(json.loads(lines[-1]))
        except json.JSONDecodeError:
            pass
    if p.returncode != 0:
        out["error"] = (p.stderr.strip().splitlines() or ["?"])[-1]
    out["load"] = os.getloadavg()[0]
    return out


def torch_working_set(model: str, steps: int, batch: int) -> int | None:
    """PyTorch's working set for the same model and batch (the memory benchmark's worker)."""
    from experiments.bench.memory import run_worker

    r = run_worker("torch", model, "sgd", batch, steps)
    return None if "error" in r else int(r["working_set"])


def sweep(model: str, steps: int, batch: int, fractions: list[float], repeat: int = 1,
          torch: bool = False, prefetch_runs: bool = True,
          floor_run: bool = False) -> dict[str, Any]:
    # one untimed process first: it compiles numba's kernels into the cache (LLVM's memory
    # would otherwise swell the reference's baseline alone: +26 MiB seen on a cold cache,
    # which moved every cap) and every measured process then starts alike
    _train(model, 1, batch, ["--swap", "off"])
    ref = _train(model, steps, batch, ["--swap", "off"])
    if ref["returncode"] != 0:
        raise SystemExit(f"unswapped {model} failed: {ref.get('error')}")
    base, ws = ref["baseline_rss_bytes"], ref["working_set_bytes"]
    rows = [{"fraction": None, "cap": None, **ref}]
    caps = [(f, "ws", int(base + f * ws)) for f in fractions]
    floors = None
    if floor_run:  # the smallest full-batch plan (tiled), as a cap: its step time
        from device_runtime.cap.fit import MARGIN_BYTES
        from experiments.bench.floor import batch_floors

        floors = batch_floors(model, batch)
        cap = base + floors["tiled_pool"] + floors["state"] + MARGIN_BYTES + FLOOR_SLACK
        caps.insert(0, ((cap - base) / ws, f"b{batch} floor", cap))
    tws = torch_working_set(model, steps, batch) if torch else None
    if tws:
        caps.append((0.05, "torch ws", int(base + 0.05 * tws)))
    smallest = None
    for f, of, cap in caps:
        for i in range(repeat):
            r = _train(model, steps, batch, ["--ram-cap", str(cap)])
            rows.append({"fraction": f, "of": of, "cap": cap, "run": i + 1, **r})
            if r["returncode"] == 0:
                smallest = cap if smallest is None else min(smallest, cap)
    prefetch = []
    if smallest is not None and prefetch_runs:
        for la in (0, 3, 8):
            r = _train(model, steps, batch, ["--swap", "on", "--lookahead", str(la)])
            prefetch.append({"lookahead": la, **r})
    return {"model": model, "baseline": base, "working_set": ws, "ref": ref, "rows": rows,
            "prefetch": prefetch, "torch_working_set": tws, "smallest_cap": smallest,
            "floors": floors}


def _fmt(r: dict[str, Any], ref: dict[str, Any]) -> str:
    if r["returncode"] != 0:
        cap = f"{r['cap'] / MiB:8.1f}" if r.get("cap") else "       -"
        return f"  cap {cap} MiB  REFUSED/STOPPED: {r.get('error', '')[:90]}"
    cap = f"{r['cap'] / MiB:8.1f}" if r.get("cap") else "    none"
    step = r["step_seconds_median"] * 1e3
    steps = max(r["steps"], 1)
    under = "yes" if not r.get("cap") or r["peak_rss_bytes"] <= r["cap"] else "NO"
    guard = 100 * r.get("guard_seconds", 0) / max(r.get("wall_seconds", 1), 1e-9)
    return (f"  cap {cap} MiB  peak {r['peak_rss_bytes'] / MiB:8.1f} MiB  under cap {under:3s}  "
            f"pool {r['pool_bytes'] / MiB:6.1f}  "
            f"swap/step {r.get('swap_bytes_written', 0) / steps / MiB:6.1f} MiB  "
            f"micro {r.get('micro_batch', '-')}{_acc(r)}{_tile(r)}{_remat(r)}  "
            f"step {step:7.1f} ms  "
            f"x{step / (ref['step_seconds_median'] * 1e3):.2f} of unswapped  "
            f"guard {guard:.2f}% of wall  "
            f"I/O stall {1e3 * r.get('swap_wait_seconds', 0) / steps:6.1f} ms/step")


def _tile(r: dict[str, Any]) -> str:
    """The conv backward tile the cap fit chose, when it tiled."""
    t = r.get("conv_tile") or 0
    return "" if not t else f" tile {'smallest' if t == 1 else f'{t / MiB:.0f} MiB'}"


def _remat(r: dict[str, Any]) -> str:
    """How many convs the cap fit replays before backward instead of keeping."""
    n = len(r.get("remat") or [])
    return f" rebuilt {n} conv{'s' if n > 1 else ''}" if n else ""


def _load(r: dict[str, Any]) -> str:
    """The 1-minute load average when the run ended (this machine is shared)."""
    return f"  load {r['load']:.1f}" if "load" in r else ""


def _acc(r: dict[str, Any]) -> str:
    """Accumulation mode and its swap traffic per step, when micro-batches accumulate."""
    mode = r.get("accumulate", "none")
    if mode in (None, "none"):
        return ""
    per = r.get("accum_swap_bytes_written", 0) / max(r["steps"], 1) / MiB
    return f" ({mode} sum, {per:.0f} MiB/step written)"


def plot(results: list[dict[str, Any]], path: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4), squeeze=False)
    for ax, res in zip(axes[0], results):
        ok = [r for r in res["rows"] if r["returncode"] == 0 and r.get("cap")]
        caps = [r["cap"] / MiB for r in ok]
        ax.plot(caps, [r["peak_rss_bytes"] / MiB for r in ok], "o-", label="measured peak RSS")
        ax.plot(caps, caps, "k--", lw=0.8, label="cap")
        ax.set_xlabel("RAM cap (MiB)")
        ax.set_ylabel("MiB")
        ax.set_title(f"{res['model']}: cap vs peak RSS and step time")
        ax2 = ax.twinx()
        ax2.plot(caps, [r["step_seconds_median"] * 1e3 for r in ok], "s-", color="tab:red",
                 label="step time")
        ax2.set_ylabel("step (ms)", color="tab:red")
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main(argv: list[str] | None = None) -> int:
    from device_runtime.cli_args import HelpFormatter

    p = argparse.ArgumentParser(prog="nnfleet bench swap", description=__doc__,
                                formatter_class=HelpFormatter,
                                epilog="example:\n  nnfleet bench swap --models vgg16 "
                                       "--fractions 0.9,0.5 --png swap.png")
    p.add_argument("--models", default="vgg16,resnet18", help="comma-separated built-in models")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step")
    p.add_argument("--steps", type=int, default=6, help="training steps per run")
    p.add_argument("--fractions", default="0.9,0.75,0.5,0.4,0.25,0.2,0.1,0.05",
                   help="caps as baseline + fraction x unswapped working set")
    p.add_argument("--repeat", type=int, default=1, help="runs per cap (fresh processes)")
    p.add_argument("--torch", action="store_true",
                   help="also a cap at baseline + 5%% of PyTorch's working set (measured; "
                        "default: not)")
    p.add_argument("--floor", action="store_true",
                   help="also print the smallest full-batch plan with whole and tiled conv "
                        "backward, and train under a cap at the tiled one (default: not)")
    p.add_argument("--no-prefetch", dest="prefetch", action="store_false",
                   help="skip the lookahead 0/3/8 runs (default: run them)")
    p.add_argument("--png", default="bench_swap.png", help="where the plot goes")
    p.add_argument("--json", help="also write the results here (None = not written)")
    a = p.parse_args(argv)
    fractions = [float(f) for f in a.fractions.split(",")]
    results = []
    for model in a.models.split(","):
        res = sweep(model, a.steps, a.batch_size, fractions, a.repeat, a.torch, a.prefetch,
                    a.floor)
        results.append(res)
        ref = res["ref"]
        fl = res["floors"]
        if fl:
            print(f"{model} batch {a.batch_size}: smallest plan (every candidate swapped, no "
                  f"prefetch) whole-layer conv backward {fl['whole_pool'] / MiB:.2f} MiB "
                  f"(lower bound {fl['whole_lower_bound'] / MiB:.2f}), tiled "
                  f"{fl['tiled_pool'] / MiB:.2f} MiB (lower bound "
                  f"{fl['tiled_lower_bound'] / MiB:.2f})")
        print(f"{model} batch {a.batch_size}: baseline {res['baseline'] / MiB:.1f} MiB, unswapped "
              f"working set {res['working_set'] / MiB:.1f} MiB, "
              f"step {ref['step_seconds_median'] * 1e3:.1f} ms" + (
                  f"; torch working set {res['torch_working_set'] / MiB:.1f} MiB"
                  if res["torch_working_set"] else ""))
        for r in res["rows"][1:]:
            print(f"  {r['fraction']:.2f} x {r['of']:<8}" + _fmt(r, ref) + _load(r))
        for f, of in dict.fromkeys((r["fraction"], r["of"]) for r in res["rows"][1:]):
            runs = [r for r in res["rows"][1:] if (r["fraction"], r["of"]) == (f, of)]
            ok = sum(r["returncode"] == 0 and r["peak_rss_bytes"] <= r["cap"] for r in runs)
            print(f"  {f:.2f} x {of:<8} trained under the cap {ok}/{len(runs)}")
        for r in res["prefetch"]:
            print(f"  lookahead {r['lookahead']}      " + _fmt(r, ref))
        pf = {r["lookahead"]: r for r in res["prefetch"] if r["returncode"] == 0}
        if 0 in pf and 3 in pf:
            stall = {k: 1e3 * v.get("swap_wait_seconds", 0) / max(v["steps"], 1)
                     for k, v in pf.items()}
            print(f"  prefetch (every candidate swapped, no cap): lookahead 3 step / no-prefetch "
                  f"step = {pf[3]['step_seconds_median'] / pf[0]['step_seconds_median']:.2f}; "
                  f"I/O stall {stall[0]:.1f} ms/step without prefetch, {stall[3]:.1f} with "
                  f"lookahead 3, {stall.get(8, float('nan')):.1f} with 8")
    png = plot(results, a.png)
    print(f"plot: {png}" if png else "plot: matplotlib not installed (pip install nnfleet[plot])")
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
