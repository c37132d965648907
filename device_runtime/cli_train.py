"""``nnfleet train``: train a model on a data file (or generated data), print its memory.

The parser of the sub-command and its run. Validation (``--valid-data``, ``--valid-split``)
is :mod:`device_runtime.cli_valid`'s, the sizing of built-in models (``--input-shape``,
``--classes``) :mod:`device_runtime.cli_models`'s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from . import cli_models, cli_valid, rss
from .cli_args import HelpFormatter, _count, _positive, _size, fraction, select_kernels
from .errors import ConfigError, MemoryCapExceeded
from .units import MAX_BATCH_SIZE, parse_size
from .weights import memory_available

EXAMPLES = """examples:
  nnfleet train lenet5 --epochs 3
  nnfleet train lenet5 --input-shape 1:28:28 --classes 4 --data d.npz --valid-split 0.1
  nnfleet train resnet18 --ram-cap 300MiB --data d.npz --valid-data v.npz --save w.npz"""


def add_parser(sub: Any) -> None:
    """The ``train`` sub-command on ``sub`` (argparse subparsers)."""
    from .planner import DEFAULT_STRATEGY, STRATEGIES

    text = "train a model on a data file (or generated data)"
    tr = sub.add_parser("train", help=text, description=text, formatter_class=HelpFormatter,
                        epilog=EXAMPLES)
    tr.add_argument("model", help="INI file, built-in model name or JSON layer list")
    tr.add_argument("--data", help=".npz with x and y "
                    "(None = the INI's [train_set], else generated data)")
    tr.add_argument("--samples", type=_positive(int), default=1024,
                    help="generated samples when no --data")
    cli_valid.add_arguments(tr, fraction)
    cli_models.add_arguments(tr)
    tr.add_argument("--epochs", type=_positive(int),
                    help="passes over the data (None = the INI's epochs, else 1)")
    tr.add_argument("--steps", type=_positive(int),
                    help="optimizer steps instead of --epochs (None = by epochs)")
    tr.add_argument("--batch-size", type=_positive(int, MAX_BATCH_SIZE),
                    help="samples per step (None = the INI's batch size, else 32)")
    tr.add_argument("--optimizer", choices=["sgd", "adam", "adamw"],
                    help="None = the INI's optimizer, else sgd")
    tr.add_argument("--lr", type=_positive(float),
                    help="learning rate (None = the INI's, else the optimizer's: 0.01 / 0.001)")
    tr.add_argument("--momentum", type=float, help="SGD momentum (None = the INI's, else 0)")
    tr.add_argument("--no-shuffle", action="store_true", help="batches in file order")
    tr.add_argument("--init", help="initial weights .npz (None = seeded initialization)")
    tr.add_argument("--save", help="write trained weights .npz, atomically (None = not saved)")
    tr.add_argument("--planner", default=DEFAULT_STRATEGY, choices=sorted(STRATEGIES),
                    help="memory planner of the step")
    tr.add_argument("--seed", type=_count, default=0,
                    help="seed of weight init, shuffling, generated data and --valid-split")
    tr.add_argument("--ram-cap", type=_size,
                    help="RAM cap of the whole process: 64MiB, 1.5GiB, 500MB, bytes "
                    "(None = no cap)")
    tr.add_argument("--swap", choices=["off", "auto", "on"], default="auto",
                    help="swap idle tensors to storage: auto = only if the cap needs it")
    tr.add_argument("--lookahead", type=int, default=3,
                    help="orders ahead of use that a swapped tensor is read back "
                         "(0 = no prefetch: read when needed)")
    tr.add_argument("--freeze", metavar="LAYER", help="freeze every layer up to and including "
                    "this one: a frozen backbone, a trainable head (None = all train)")
    tr.add_argument("--kernels", choices=["auto", "numba", "numpy"], default="auto",
                    help="auto = numba's when installed, else the allocation-free numpy "
                         "kernels: slower, but ~130 MiB less resident memory (no numba/LLVM)")
    tr.add_argument("--json", action="store_true",
                    help="print one JSON object on the last line")


def _optimizer_kwargs(args: argparse.Namespace, ini: Any) -> tuple[str, dict[str, Any]]:
    name = args.optimizer or (ini.optimizer if ini and ini.optimizer else "sgd")
    same = ini is not None and (ini.optimizer or "sgd") == name
    kw: dict[str, Any] = dict(ini.optimizer_kwargs) if same else {}
    if name != "sgd":
        kw.pop("momentum", None)
    else:
        for k in ("beta1", "beta2", "epsilon"):
            kw.pop(k, None)
    if args.lr is not None:
        kw["lr"] = args.lr
    if name == "sgd" and getattr(args, "momentum", None) is not None:
        kw["momentum"] = args.momentum
    return name, kw



def _generated_data(model: Any, args: argparse.Namespace) -> tuple[Any, np.ndarray]:
    """``--samples`` generated samples for ``model`` (no ``--data``): class prototypes plus
    noise, made a batch at a time as training takes them (see data.GeneratedSamples)."""
    from .data import GeneratedSamples

    classes = int(np.prod(model.output_shape))
    per = int(np.prod(model.input_shape))
    vocab = [int(s.props["in_dim"]) for s in model.specs
             if s.type.lower() == "embedding" and "in_dim" in s.props]
    # held: 16 bytes of generator state and 8 of label per sample (ids: the whole set)
    need, avail = (24 + (4 * per if vocab else 0)) * args.samples, memory_available()
    if need > avail:
        raise ConfigError(f"--samples {args.samples}: the generated data needs {need:,} "
                          f"bytes, more than the {avail:,} bytes of memory available")
    x: Any = GeneratedSamples(model.input_shape, classes, args.samples, seed=args.seed)
    y = x.y
    if vocab:  # an embedding reads ids: make the generated inputs valid ids
        x = np.random.default_rng(args.seed).integers(0, min(vocab), x.shape).astype(np.float32)
    if model.loss_name != "cross_softmax":  # mse / sigmoid cross-entropy: float targets
        y = (np.eye(classes, dtype=np.float32)[y % classes] if classes > 1
             else (y % 2).astype(np.float32)[:, None])
    print(f"no --data: {args.samples} generated samples of shape {tuple(model.input_shape)}, "
          f"{classes} classes")
    return x, y


_SAID: set[str] = set()


def _median(values: list[float]) -> float:
    """The median, as np.median gives it (which would import numpy.ma: 1.1 MiB of RSS)."""
    v, k = sorted(values), len(values) // 2
    return float(v[k] if len(v) % 2 else (v[k - 1] + v[k]) / 2)


def _warn_no_rss() -> None:
    """Say once per process that RSS cannot be read here (no /proc, no psutil)."""
    if "rss" not in _SAID and not rss.can_measure():
        _SAID.add("rss")
        print("nnfleet: note: no /proc and no psutil here: RSS figures are the peak "
              "(ru_maxrss) and --ram-cap is unavailable (pip install psutil)", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    kernels = select_kernels(args.kernels)
    from . import blas, training  # noqa: F401  (the runtime's modules: part of "imports")
    if note := blas.note():
        print(note, file=sys.stderr)
    from .data import load_dataset
    from .units import fmt_bytes
    if args.epochs is not None and args.steps is not None:
        raise ConfigError("give --epochs or --steps, not both")
    cap = parse_size(args.ram_cap) if args.ram_cap is not None else None
    if cap is not None and not rss.can_measure():
        from .cap.guard import NO_RSS

        raise ConfigError(f"--ram-cap: {NO_RSS}")
    _warn_no_rss()
    phases = {"imports": rss.current_rss()}  # RSS after each phase (the JSON's rss_phases)
    model, ini = cli_models.load(args, seed=args.seed)
    if args.init:
        model.load_weights(args.init)
    phases["model"] = rss.current_rss()
    if args.data:
        x, y = load_dataset(args.data)
    elif ini is not None and "train" in ini.datasets:  # the INI's own [train_set]
        x, y = ini.load_data("train", model)
    else:
        x, y = _generated_data(model, args)
    x, y, xv, yv = cli_valid.validation_set(args, ini, model, x, y)
    batch = args.batch_size or (ini.batch_size if ini and ini.batch_size else 32)
    name, kw = _optimizer_kwargs(args, ini)
    xs = model.prepare_x(x)  # generated samples pass as they are: (N, F) float32 already
    ys, kind = model.prepare_y(y, xs.shape[0])
    model.label_kind = kind
    steps = args.steps
    epochs = args.epochs if args.epochs is not None else (ini.epochs if ini and ini.epochs and
                                                          steps is None else 1)
    per_epoch = len(xs) // batch
    valid = cli_valid.make(model, xv, yv, per_epoch, steps or epochs * per_epoch, args.json)
    phases["data"] = rss.current_rss()
    if args.freeze:
        model.freeze(args.freeze)
        if not any(p.trainable for p in model.weights.params.values()):
            raise ConfigError(f"--freeze {args.freeze} freezes every layer with weights: "
                              f"nothing is left to train")
    if valid is not None:
        valid.warm_up()  # inference kernels loaded before the baseline, not in the window
    # JIT-compiled kernels are part of the runtime's baseline, not of the step
    model.compile(batch_size=batch, optimizer=name, planner=args.planner, ram_cap=cap,
                  swap=args.swap, lookahead=args.lookahead, **kw)
    phases["compile"] = rss.current_rss()
    # The baseline is taken at the same point with or without a cap: after the warm-up,
    # before the step is planned and bound (a capped compile measures it there itself).
    if cap is None:
        model.warm_up()
        rss.release_heap()  # as a capped compile does before it measures
        baseline = rss.current_rss()
    else:
        assert model.baseline_rss is not None  # a capped compile measures it
        baseline = model.baseline_rss
    phases["warm_up"] = baseline
    plan = model.plan()
    if valid is not None:  # its pools beside the step's, under the cap
        d = model.decision  # under a cap: what the cap fit chose (pool, optimizer state)
        room = (None if d is None or cap is None
                else cap - baseline - d.extra_bytes - d.margin_bytes - d.pool_bytes)
        valid.pick_batch(batch, room)
    rss.reset_peak()  # the peak before it is kept: rss.process_peak()
    every = max(1, (steps or epochs * (len(xs) // batch)) // 10)

    def progress(step: int, loss: float) -> None:
        if not args.json and (step % every == 0):
            print(f"step {step:6d}  loss {loss:.4f}", flush=True)
        if valid is not None:
            valid.step(step, loss)

    t0 = time.perf_counter()
    try:
        # overflow warnings say less than the TrainingDiverged that a NaN loss raises
        with np.errstate(over="ignore", invalid="ignore"):
            hist = model.fit(xs, ys, epochs=epochs, steps=steps, shuffle=not args.no_shuffle,
                             seed=args.seed, callback=progress)
    except MemoryCapExceeded as e:
        if args.json:
            print(json.dumps({"model": model.name, "cap_exceeded": True, "error": str(e),
                              **model.memory_report()}))
        raise
    wall = time.perf_counter() - t0
    peak = max(rss.peak_rss(), model.peak_rss or 0)
    phases["training_peak"] = peak
    if args.save:
        model.save_weights(args.save)
    med = _median(hist.step_seconds[1:] or hist.step_seconds or [0.0])
    result = {
        "model": model.name, "batch_size": batch, "optimizer": name, "steps": len(hist.losses),
        "losses": hist.losses, "final_loss": hist.losses[-1] if hist.losses else None,
        "pool_bytes": plan["pool_bytes"], "lower_bound_bytes": plan["lower_bound_bytes"],
        "naive_bytes": plan["naive_bytes"], "weight_bytes": plan["weight_bytes"],
        "optimizer_state_bytes": plan["optimizer_state_bytes"],
        "planned_working_set_bytes": plan["planned_working_set_bytes"],
        "baseline_rss_bytes": baseline, "peak_rss_bytes": peak,
        "working_set_bytes": peak - baseline, "step_seconds_median": med,
        "wall_seconds": wall, "planner": args.planner, "saved": args.save, "kernels": kernels,
        # the whole process, from start to here (what /usr/bin/time -v would show without
        # the reset before training); RSS after each phase of the run
        "process_peak_rss_bytes": max(rss.process_peak(), peak), "rss_phases": phases,
        **{k: v for k, v in model.memory_report().items()
           if k not in ("peak_rss_bytes", "baseline_rss_bytes")},
        **cli_models.describe(model), **(valid.report() if valid is not None else {}),
    }
    if hist.correct:
        result["train_accuracy_last_epoch"] = float(
            np.sum(hist.correct[-(len(xs) // batch):])
            / (batch * min(len(hist.correct), len(xs) // batch)))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"plan: pool {fmt_bytes(plan['pool_bytes'])} (lower bound "
              f"{fmt_bytes(plan['lower_bound_bytes'])}, naive {fmt_bytes(plan['naive_bytes'])}), "
              f"weights {fmt_bytes(plan['weight_bytes'])}, optimizer state "
              f"{fmt_bytes(plan['optimizer_state_bytes'])}")
        print(f"trained {len(hist.losses)} steps in {wall:.1f} s (median step {med * 1e3:.1f} ms); "
              f"loss {hist.losses[0]:.4f} -> {hist.losses[-1]:.4f}")
        print(f"memory: baseline RSS {fmt_bytes(baseline)}, peak RSS {fmt_bytes(peak)}, "
              f"working set {fmt_bytes(peak - baseline)} "
              f"(planned {fmt_bytes(plan['planned_working_set_bytes'])})")
        if args.save:
            print(f"weights saved to {args.save}")
    return 0
