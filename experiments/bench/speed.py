"""Speed benchmark: nnfleet's training step against PyTorch's, and where the time goes.

``nnfleet bench speed [MODEL ...] [--batch-size 32] [--steps 8] [--repeats 3]`` runs,
per repeat and per model, one fresh nnfleet process and one fresh PyTorch process (in
alternating order: a neighbour's load hits both alike), each building the same
architecture with the same initial weights, running ``--warmup`` untimed steps, then
``--steps`` timed ones. The ratio of a repeat is nnfleet's median step over torch's
median step; the table gives the median over repeats. A model name ending in
``-frozen`` trains only the last layer (torch: ``requires_grad=False`` on the rest).

After the timed steps, nnfleet's worker runs ``--profile-steps`` more with every
operation wrapped by a timer (experiments.bench.speed_profile): milliseconds per step
for each kind (conv forward, conv backward data / weights and the gemm, im2col, col2im
and layout kernels inside them, matmul = fully connected, norm, pool, activation,
optimizer, swap waits) and "python overhead" = step time minus all of those.

Both workers use the threads the runtime picks (device_runtime.threads: BLAS, numba and
torch get the cores of this process's CPU affinity, or ``NNFLEET_THREADS``); the
environment is inherited unchanged, and each worker reports the OpenBLAS kernel
(core type) and thread count it ran with, because a preset ``OPENBLAS_CORETYPE`` changes
nnfleet's figures and not PyTorch's (oneDNN/MKL do not read it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from experiments.bench.speed_profile import group, profile_steps

DEFAULT_MODELS = ("lenet5", "vgg16", "resnet18", "resnet18-frozen")
LR = 0.01  # plain SGD, torch.optim.SGD's default (no momentum)
TARGETS = {"lenet5": 1.2, "vgg16": 1.2, "resnet18": 1.2, "resnet18-frozen": 1.2}


def _model(name: str) -> tuple[Any, list[bool] | None]:
    import device_runtime as dr

    base, _, variant = name.partition("-")
    m = dr.build(base)
    if variant == "frozen":
        m.freeze(m.specs[-2].name)
    elif variant:
        raise ValueError(f"unknown model variant '{variant}' of {name} (known: frozen)")
    return m, None


def _runtime_info() -> dict[str, Any]:
    from device_runtime import threads

    return threads.describe()


def worker_nnfleet(model: str, batch: int, warmup: int, steps: int,
                   profile: int) -> dict[str, Any]:
    from device_runtime import threads
    from device_runtime.data import synthetic_classification

    threads.configure()
    m, _ = _model(model)
    m.compile(batch_size=batch, optimizer="sgd", lr=LR, swap="off")
    n = batch * max(1, warmup + steps + profile + 1)
    x, y = synthetic_classification(m.input_shape, n=n, seed=0)
    hist = m.fit(x, y, steps=warmup + steps, shuffle=False)
    timed = hist.step_seconds[warmup:]
    out: dict[str, Any] = {"step_ms": 1e3 * statistics.median(timed),
                           "steps_ms": [1e3 * s for s in timed], **_runtime_info()}
    if profile:
        import numpy as np

        idx = np.arange(batch, dtype=np.int64)
        out.update(profile_steps(m, lambda: m.train_step(idx), profile))
    return out


def worker_torch(model: str, batch: int, warmup: int, steps: int,
                 profile: int) -> dict[str, Any]:
    import torch

    from device_runtime import threads
    from device_runtime.data import synthetic_classification
    from experiments.torch_ref import make_torch_optimizer, to_torch, torch_step

    info = threads.configure()
    torch.set_num_threads(info["blas_threads"])
    m, _ = _model(model)
    trainable = {k: p.trainable for k, p in m.weights.params.items()}
    x, y = synthetic_classification(m.input_shape, n=batch * (warmup + steps), seed=0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    module = to_torch(m, batch).train()
    for key, (attr, pname, _) in module.param_map.items():
        t = getattr(getattr(module, attr), pname)
        if isinstance(t, torch.nn.Parameter):
            t.requires_grad_(trainable[key])
    opt = make_torch_optimizer("sgd", [p for p in module.parameters() if p.requires_grad],
                               lr=LR)
    seconds = []
    for s in range(warmup + steps):
        t0 = time.perf_counter()
        torch_step(module, opt, xt[s * batch:(s + 1) * batch], yt[s * batch:(s + 1) * batch])
        seconds.append(time.perf_counter() - t0)
    timed = seconds[warmup:]
    return {"step_ms": 1e3 * statistics.median(timed), "steps_ms": [1e3 * s for s in timed],
            "torch_threads": torch.get_num_threads(), **_runtime_info()}


WORKERS = {"nnfleet": worker_nnfleet, "torch": worker_torch}


def run_worker(framework: str, model: str, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in a fresh interpreter; its last stdout line is JSON."""
    cmd = [sys.executable, "-m", "experiments.bench.speed", "--worker", framework, model,
           "--batch-size", str(args.batch_size), "--warmup", str(args.warmup),
           "--steps", str(args.steps), "--profile-steps", str(args.profile_steps)]
    env = dict(os.environ)
    if framework == "torch":
        env["NNFLEET_NO_NUMBA"] = "1"  # it only builds the model through nnfleet
    head = {"framework": framework, "model": model}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    except subprocess.TimeoutExpired:
        return {**head, "error": "timed out after 3600 s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**head, "error": f"worker exit code {proc.returncode}: {tail}"}
    return {**head, **json.loads(lines[-1])}


def summarize(results: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """Per model: median step of each framework over repeats, median of per-repeat ratios."""
    rows = []
    for model in models:
        rs = [r for r in results if r["model"] == model and "error" not in r]
        by = {fw: [r for r in rs if r["framework"] == fw] for fw in WORKERS}
        pairs = list(zip(by["nnfleet"], by["torch"]))
        row: dict[str, Any] = {"model": model, "repeats": len(pairs)}
        for fw, runs in by.items():
            if runs:
                row[f"{fw}_ms"] = statistics.median(r["step_ms"] for r in runs)
        if pairs:
            row["ratio"] = statistics.median(a["step_ms"] / b["step_ms"] for a, b in pairs)
            row["ratios"] = [a["step_ms"] / b["step_ms"] for a, b in pairs]
        prof = [r for r in by["nnfleet"] if "kinds_ms" in r]
        if prof:
            keys = {k for r in prof for k in r["kinds_ms"]}
            row["kinds_ms"] = {k: statistics.median(r["kinds_ms"].get(k, 0.0) for r in prof)
                               for k in keys}
            row["profiled_step_ms"] = statistics.median(r["profiled_step_ms"] for r in prof)
        rows.append(row)
    return rows


def report(rows: list[dict[str, Any]], results: list[dict[str, Any]], batch: int) -> str:
    ok = [r for r in results if "error" not in r]
    env = ok[0] if ok else {}
    load = os.getloadavg()[0]
    out = [f"speed benchmark: batch {batch}, SGD, {os.cpu_count()} CPUs, load average "
           f"{load:.2f} at the end; threads: {env.get('blas_threads')} BLAS "
           f"({env.get('blas')}), {env.get('numba_threads')} numba; OPENBLAS_CORETYPE="
           f"{env.get('env', {}).get('OPENBLAS_CORETYPE', '(unset)')}",
           "step ms = median over timed steps of one process; ratio = median over repeats "
           "of nnfleet/torch measured back to back.", ""]
    from device_runtime.blas import core_note

    if env.get("blas") and (note := core_note(env["blas"])):
        out[1:1] = [note]  # nnfleet's figures would be faster without the preset
    out.append(f"{'model':<16} {'nnfleet ms':>10} {'torch ms':>9} {'ratio':>6} "
               f"{'target':>6}  verdict  per-repeat ratios")
    for r in rows:
        if "ratio" not in r:
            out.append(f"{r['model']:<16} (no complete pair)")
            continue
        tgt = TARGETS.get(r["model"])
        verdict = "-" if tgt is None else ("MET" if r["ratio"] <= tgt else "NOT MET")
        out.append(f"{r['model']:<16} {r['nnfleet_ms']:>10.1f} {r['torch_ms']:>9.1f} "
                   f"{r['ratio']:>6.2f} {tgt or 0:>6.2f}  {verdict:<8} "
                   + " ".join(f"{x:.2f}" for x in r["ratios"]))
    for r in rows:
        if "kinds_ms" not in r:
            continue
        kinds = r["kinds_ms"]
        total = r["profiled_step_ms"]
        out += ["", f"profile {r['model']} (ms per step, profiled step {total:.1f} ms, "
                f"unprofiled {r.get('nnfleet_ms', float('nan')):.1f} ms):"]
        for name, ms in group(kinds).items():
            out.append(f"  {name:<28} {ms:8.2f}  {100 * ms / total:5.1f}%")
            for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
                if ":" in k and k.split(":")[0] == name and v >= 0.05:
                    out.append(f"    {k.split(':', 1)[1].strip():<26} {v:8.2f}")
    for r in results:
        if "error" in r:
            out.append(f"  ERROR {r['framework']} {r['model']}: {r['error']}")
    return "\n".join(out)


def build_parser() -> argparse.ArgumentParser:
    from device_runtime.cli_args import HelpFormatter

    p = argparse.ArgumentParser(prog="nnfleet bench speed",
                                description="Step time against PyTorch, and a profile.",
                                formatter_class=HelpFormatter,
                                epilog="examples:\n  nnfleet bench speed lenet5 vgg16\n"
                                       "  NNFLEET_THREADS=1 nnfleet bench speed resnet18 "
                                       "--repeats 5 --json speed.json")
    p.add_argument("models", nargs="*", default=list(DEFAULT_MODELS),
                   help="built-in models, NAME-frozen trains the last layer only "
                   f"(default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step (default: 32)")
    p.add_argument("--warmup", type=int, default=8,
                   help="untimed steps first (the thread tuner decides within 7; default: 8)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per process (default: 6)")
    p.add_argument("--repeats", type=int, default=3, help="process pairs per model (default: 3)")
    p.add_argument("--profile-steps", type=int, default=2,
                   help="profiled nnfleet steps after the timed ones (0: no profile; default: 2)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON (default: "
                   "not written)")
    p.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "MODEL"), help=argparse.SUPPRESS)
    return p


def _check_models(models: list[str]) -> str | None:
    from device_runtime import BUILTINS

    for name in models:
        base, _, variant = name.partition("-")
        if base not in BUILTINS or variant not in ("", "frozen"):
            return (f"unknown model '{name}' (known: {', '.join(BUILTINS)}, each optionally "
                    "with -frozen)")
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--worker``, one measurement) and print the report."""
    args = build_parser().parse_args(argv)
    if min(args.batch_size, args.steps, args.repeats) < 1 or min(args.warmup,
                                                                 args.profile_steps) < 0:
        print("error: --batch-size, --steps, --repeats must be >= 1, --warmup and "
              "--profile-steps >= 0", file=sys.stderr)
        return 2
    if args.worker:
        fw, model = args.worker
        res = WORKERS[fw](model, args.batch_size, args.warmup, args.steps,
                          args.profile_steps if fw == "nnfleet" else 0)
        print(json.dumps(res))
        return 0
    bad = _check_models(args.models)
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        print("error: bench speed compares with PyTorch, which is not installed",
              file=sys.stderr)
        return 2
    results = []
    for rep in range(args.repeats):
        for model in args.models:
            order = ("nnfleet", "torch") if rep % 2 == 0 else ("torch", "nnfleet")
            for fw in order:
                print(f"repeat {rep + 1}/{args.repeats}: {fw} {model} ...", file=sys.stderr,
                      flush=True)
                results.append(run_worker(fw, model, args))
                if args.json:  # after every run: a long run stopped early keeps its figures
                    _write_json(args.json, args.batch_size, summarize(results, args.models),
                                results)
    rows = summarize(results, args.models)
    print(report(rows, results, args.batch_size))
    if args.json:
        _write_json(args.json, args.batch_size, rows, results)
    return 1 if any("error" in r for r in results) else 0


def _write_json(path: str, batch: int, rows: list[dict[str, Any]],
                results: list[dict[str, Any]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"batch_size": batch, "rows": rows, "results": results}, f, indent=1)
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
