"""``nnfleet``: plan and train on the device, from the command line.

The contract (DESIGN.md): ``--json`` prints one JSON object on the last line of stdout;
bad input prints one line ``nnfleet: error: ...`` on stderr and exits non-zero.
``python -m device_runtime`` is the device's own command (plan, train); the installed
``nnfleet`` command is :func:`main` with the lab's commands added (``simulate``,
``bench``: ``experiments.cli``), which this module never imports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import numpy as np

from . import import_numpy_random, rss
from .errors import ConfigError, MemoryCapExceeded, NNFleetError, TrainingDiverged
from .modelspec import load_model
from .units import MAX_BATCH_SIZE, parse_size
from .weights import memory_available

EXIT_BAD_INPUT = 2
EXIT_CAP = 3  # refused before training, or stopped for going over the RAM cap
EXIT_DIVERGED = TrainingDiverged.exit_code  # 4: NaN or infinite loss or weights, not saved
# a command another package adds to ``nnfleet``: (its one-line help, run(argv) -> exit code)
Command = tuple[str, Callable[[list[str]], int]]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every other error of ours
        raise ConfigError(one_line(message))


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


def _positive(kind: type, top: float = float("inf")) -> Any:
    """An argparse type: a finite number in (0, top] (argparse names the option)."""
    def conv(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        if v == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if v > top:
            raise argparse.ArgumentTypeError(f"must be <= {top}, got {text!r}")
        return v
    return conv


def _count(text: str) -> int:
    """An argparse type: an integer >= 0 (seeds)."""
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return v


def _size(text: str) -> int:
    """An argparse type: a size in bytes (64MiB, 1.5GiB, 500MB, plain bytes)."""
    try:
        return parse_size(text)
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# what str.splitlines() breaks on, shown escaped: an error message stays one line
_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def one_line(text: str) -> str:
    """``text`` with its line breaks escaped (a message may quote what a user typed)."""
    return text.translate(_BREAKS)


def cmd_plan(args: argparse.Namespace) -> int:
    from .units import fmt_bytes

    model, ini = load_model(args.model)
    batch = args.batch_size or (ini.batch_size if ini and ini.batch_size else 32)
    model.compile(batch_size=batch, optimizer="sgd", lr=0.01, planner=args.planner)
    plan = model.plan()
    if args.json:
        print(json.dumps(plan))
        return 0
    print(f"model {plan['model']}  batch {batch}  planner {plan['planner']}  "
          f"{plan['num_tensors']} tensors in {plan['num_blocks']} blocks, "
          f"{plan['num_orders']} orders")
    print(f"{'tensor':44s} {'kind':10s} {'bytes':>12s} {'interval':>12s} {'offset':>12s}")
    for t in plan["tensors"]:
        iv = f"[{t['interval'][0]},{t['interval'][1]})"
        print(f"{t['name'][:44]:44s} {t['kind']:10s} {t['bytes']:12,d} {iv:>12s} "
              f"{t['offset']:12,d}")
    lb = plan["lower_bound_bytes"]
    print(f"pool {fmt_bytes(plan['pool_bytes'])} = {plan['pool_bytes'] / max(lb, 1):.3f} x "
          f"lower bound "
          f"{fmt_bytes(lb)}; naive {fmt_bytes(plan['naive_bytes'])}; weights "
          f"{fmt_bytes(plan['weight_bytes'])}")
    return 0


def select_kernels(choice: str) -> str:
    """Make ``choice`` ("numba", "numpy" or "auto") the kernels of this process, if the
    kernels are not loaded yet; return the kernels in use."""
    if f"{__package__}.kernels._jit" not in sys.modules:  # else too late (see below)
        if choice == "numpy":
            os.environ["NNFLEET_NO_NUMBA"] = "1"
        elif choice == "numba":
            os.environ.pop("NNFLEET_NO_NUMBA", None)
    from .kernels._jit import HAVE_NUMBA, USE_NUMBA

    in_use = "numba" if USE_NUMBA else "numpy"
    if choice == "numba" and not HAVE_NUMBA:
        raise ConfigError("--kernels numba: numba is not installed or is disabled "
                          "(NUMBA_DISABLE_JIT)")
    if choice not in ("auto", in_use):
        raise ConfigError(f"--kernels {choice}: this process already loaded the {in_use} "
                          "kernels (set NNFLEET_NO_NUMBA before it starts)")
    return in_use


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
    model, ini = load_model(args.model, seed=args.seed)
    if args.init:
        model.load_weights(args.init)
    phases["model"] = rss.current_rss()
    if args.data:
        x, y = load_dataset(args.data)
    elif ini is not None and "train" in ini.datasets:  # the INI's own [train_set]
        x, y = ini.load_data("train", model)
    else:
        x, y = _generated_data(model, args)
    batch = args.batch_size or (ini.batch_size if ini and ini.batch_size else 32)
    name, kw = _optimizer_kwargs(args, ini)
    xs = model.prepare_x(x)  # generated samples pass as they are: (N, F) float32 already
    ys, kind = model.prepare_y(y, xs.shape[0])
    model.label_kind = kind
    phases["data"] = rss.current_rss()
    if args.freeze:
        model.freeze(args.freeze)
        if not any(p.trainable for p in model.weights.params.values()):
            raise ConfigError(f"--freeze {args.freeze} freezes every layer with weights: "
                              f"nothing is left to train")
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
    steps = args.steps
    epochs = args.epochs if args.epochs is not None else (ini.epochs if ini and ini.epochs and
                                                          steps is None else 1)
    rss.reset_peak()  # the peak before it is kept: rss.process_peak()
    every = max(1, (steps or epochs * (len(xs) // batch)) // 10)

    def progress(step: int, loss: float) -> None:
        if not args.json and (step % every == 0):
            print(f"step {step:6d}  loss {loss:.4f}", flush=True)

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


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nnfleet")
    except Exception:  # noqa: BLE001 - run from a checkout that is not installed
        return "(not installed)"


def build_parser(commands: Mapping[str, Command] | None = None) -> argparse.ArgumentParser:
    """The parser of ``plan`` and ``train``, with ``commands`` listed beside them."""
    from .planner import DEFAULT_STRATEGY, STRATEGIES

    p = _Parser(prog="nnfleet", description="nnfleet: memory-planned on-device training, fleets "
                "of RAM-capped devices, federated personalization.")
    p.add_argument("--version", action="version", version=f"nnfleet {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    fmt = argparse.ArgumentDefaultsHelpFormatter
    pl = sub.add_parser("plan", help="print the memory plan of a training step",
                        formatter_class=fmt, epilog="example: nnfleet plan resnet18")
    pl.add_argument("model", help="INI file, built-in model name or JSON layer list")
    pl.add_argument("--batch-size", type=_positive(int, MAX_BATCH_SIZE))
    pl.add_argument("--planner", default=DEFAULT_STRATEGY, choices=sorted(STRATEGIES))
    pl.add_argument("--json", action="store_true")
    tr = sub.add_parser("train", help="train a model on a data file (or generated data)",
                        formatter_class=fmt, epilog="examples: nnfleet train lenet5 --epochs 3; "
                        "nnfleet train resnet18 --ram-cap 300MiB --data d.npz --save w.npz")
    tr.add_argument("model", help="INI file, built-in model name or JSON layer list")
    tr.add_argument("--data", help=".npz with x and y (default: generated data)")
    tr.add_argument("--samples", type=_positive(int), default=1024,
                    help="generated samples when no --data")
    tr.add_argument("--epochs", type=_positive(int))
    tr.add_argument("--steps", type=_positive(int))
    tr.add_argument("--batch-size", type=_positive(int, MAX_BATCH_SIZE))
    tr.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    tr.add_argument("--lr", type=_positive(float))
    tr.add_argument("--momentum", type=float)
    tr.add_argument("--no-shuffle", action="store_true")
    tr.add_argument("--init", help="initial weights .npz")
    tr.add_argument("--save", help="write trained weights .npz (atomically)")
    tr.add_argument("--planner", default=DEFAULT_STRATEGY, choices=sorted(STRATEGIES))
    tr.add_argument("--seed", type=_count, default=0)
    tr.add_argument("--ram-cap", type=_size,
                    help="RAM cap of the whole process (64MiB, 1.5GiB, 500MB, bytes)")
    tr.add_argument("--swap", choices=["off", "auto", "on"], default="auto",
                    help="swap idle tensors to storage: auto = only if the cap needs it")
    tr.add_argument("--lookahead", type=int, default=3,
                    help="orders ahead of use that a swapped tensor is read back "
                         "(0 = no prefetch: read when needed)")
    tr.add_argument("--freeze", help="freeze every layer up to and including this one "
                    "(transfer learning: a frozen backbone, a trainable head)")
    tr.add_argument("--kernels", choices=["auto", "numba", "numpy"], default="auto",
                    help="numba (default when installed) or the allocation-free numpy "
                         "kernels: slower, but ~130 MiB less resident memory (no numba/LLVM)")
    tr.add_argument("--json", action="store_true")
    from .cli_eval import add_parsers
    add_parsers(sub, _positive(int, MAX_BATCH_SIZE))
    for name, (text, _) in (commands or {}).items():  # each parses its own arguments
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None, commands: Mapping[str, Command] | None = None) -> int:
    """Run one ``nnfleet`` command line; ``commands`` adds sub-commands (the lab's)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = dict(commands or {})
    import_numpy_random()  # before anything draws a random number: 3.9 MiB less RSS
    try:
        parser = build_parser(commands)
        if not argv:  # what the command can do, rather than "arguments are required"
            parser.print_help()
            return 0
        if argv[0] in commands:
            return int(commands[argv[0]][1](argv[1:]) or 0)
        args = parser.parse_args(argv)
        from .cli_eval import cmd_eval, cmd_predict
        return {"plan": cmd_plan, "train": cmd_train, "eval": cmd_eval,
                "predict": cmd_predict}[args.cmd](args)
    except MemoryCapExceeded as e:
        print(f"nnfleet: error: memory: {one_line(str(e))}", file=sys.stderr)
        return EXIT_CAP
    except TrainingDiverged as e:
        print(f"nnfleet: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_DIVERGED
    except NNFleetError as e:
        print(f"nnfleet: error: {one_line(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, MemoryError) as e:
        print(f"nnfleet: error: {type(e).__name__}: {one_line(str(e))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
