"""``nnfleet``: plan and train on the device, from the command line.

The contract (DESIGN.md): ``--json`` prints one JSON object on the last line of stdout;
bad input prints one line ``nnfleet: error: ...`` on stderr and exits non-zero.
``python -m device_runtime`` is the device's own command (plan, train, eval, predict:
``cli_train``, ``cli_eval``; ``cli_valid`` validation, ``cli_models`` the sizing of built-in
models, ``cli_args`` the argument types); the installed
``nnfleet`` command is :func:`main` with the lab's commands added (``simulate``,
``bench``: ``experiments.cli``), which this module never imports.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping

import numpy as np  # noqa: F401  (loaded with the command, as before the split into modules)

from . import cli_models, import_numpy_random
from .cli_args import HelpFormatter, _Parser, _positive, one_line, select_kernels
from .errors import MemoryCapExceeded, NNFleetError, TrainingDiverged
from .units import MAX_BATCH_SIZE

__all__ = ["Command", "_Parser", "build_parser", "main", "one_line", "select_kernels"]

EXIT_BAD_INPUT = 2
EXIT_CAP = 3  # refused before training, or stopped for going over the RAM cap
EXIT_DIVERGED = TrainingDiverged.exit_code  # 4: NaN or infinite loss or weights, not saved
# a command another package adds to ``nnfleet``: (its one-line help, run(argv) -> exit code)
Command = tuple[str, Callable[[list[str]], int]]


def cmd_plan(args: argparse.Namespace) -> int:
    from .units import fmt_bytes

    model, ini = cli_models.load(args)
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


EXAMPLES = """examples:
  nnfleet train lenet5 --epochs 3
  nnfleet train mlp --input-shape 64 --classes 10 --data train.npz --valid-split 0.1 --save w.npz
  nnfleet eval mlp --input-shape 64 --classes 10 --weights w.npz --data test.npz"""


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("nnfleet")
    except Exception:  # noqa: BLE001 - run from a checkout that is not installed
        return "(not installed)"


def build_parser(commands: Mapping[str, Command] | None = None) -> argparse.ArgumentParser:
    """The parser of ``plan`` and ``train``, with ``commands`` listed beside them."""
    from .planner import DEFAULT_STRATEGY, STRATEGIES

    lab = "\n  nnfleet simulate --devices 20 --rounds 5" if "simulate" in (commands or {}) else ""
    p = _Parser(prog="nnfleet", formatter_class=HelpFormatter, epilog=EXAMPLES + lab,
                description="nnfleet: memory-planned on-device training, fleets of RAM-capped "
                "devices, federated personalization. 'nnfleet COMMAND --help' lists the "
                "options of one, with their defaults and examples.")
    p.add_argument("--version", action="version", version=f"nnfleet {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser, metavar="COMMAND")
    text = "print the memory plan of a training step"
    pl = sub.add_parser("plan", help=text, description=text, formatter_class=HelpFormatter,
                        epilog="examples:\n  nnfleet plan resnet18\n"
                        "  nnfleet plan lenet5 --input-shape 1:28:28 --batch-size 64 --json")
    pl.add_argument("model", help="INI file, built-in model name or JSON layer list")
    pl.add_argument("--batch-size", type=_positive(int, MAX_BATCH_SIZE),
                    help="samples per step (None = the INI's batch size, else 32)")
    pl.add_argument("--planner", default=DEFAULT_STRATEGY, choices=sorted(STRATEGIES),
                    help="memory planner")
    cli_models.add_arguments(pl)
    pl.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    from .cli_train import add_parser as add_train
    add_train(sub)
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
        from .cli_train import cmd_train
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
