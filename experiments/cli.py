"""The ``nnfleet`` command: the device runtime's ``plan`` and ``train`` plus the lab's
``simulate`` and ``bench``, which need ``experiments/`` (and Flower) and so are not
part of the device's own command (``python -m device_runtime``)."""

from __future__ import annotations

import importlib
import sys

from device_runtime.cli import Command, _Parser
from device_runtime.cli import main as device_main
from device_runtime.errors import ConfigError

BENCHES = {"memory": "experiments.bench.memory", "swap": "experiments.bench.swap",
           "fleet": "experiments.bench.fleet", "soak": "experiments.bench.soak",
           "board": "experiments.bench.board", "speed": "experiments.bench.speed"}
BENCH_HELP = {"memory": "working set, step time and footprint against PyTorch",
              "swap": "swapped training under shrinking RAM caps",
              "fleet": "device-rounds per second: the fleet engine against Flower's simulation "
                       "(--backend ray: on Ray too)",
              "soak": "1,000 devices x rounds with faults: every outcome accounted for",
              "board": "what Flower costs a device: isolation modes x ClientApp kinds",
              "speed": "step time against PyTorch, and where a step's time goes"}


def bench(argv: list[str]) -> int:
    """``nnfleet bench WHAT ...``: run one benchmark module's ``main`` on the rest."""
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: nnfleet bench {" + ",".join(BENCHES) + "} [options]\n\n"
              "benchmarks (each prints ratios measured side by side in one run):")
        for name, text in BENCH_HELP.items():
            print(f"  {name:8s} {text}")
        print("\n'nnfleet bench WHAT --help' lists the options of one (with defaults); "
              "example: nnfleet bench memory --models lenet5")
        return 0
    p = _Parser(prog="nnfleet bench", add_help=False)
    p.add_argument("what")
    args, rest = p.parse_known_args(argv)
    if args.what not in BENCHES:
        raise ConfigError(f"unknown benchmark '{args.what}' (known: {', '.join(BENCHES)})")
    return int(importlib.import_module(BENCHES[args.what]).main(rest) or 0)


def simulate(argv: list[str]) -> int:
    """``nnfleet simulate ...`` (experiments.simulate)."""
    try:
        from experiments.simulate import main as run

        return int(run(argv) or 0)
    except ModuleNotFoundError as e:  # the lab's server side is Flower's ServerApp
        if (e.name or "").split(".")[0] != "flwr":
            raise
        raise ConfigError("nnfleet simulate needs Flower, which this install does not have: "
                          "pip install 'nnfleet[fast,flower,plot]'") from e


COMMANDS: dict[str, Command] = {
    "simulate": ("simulate a fleet of RAM-capped devices (see 'nnfleet simulate --help')",
                 simulate),
    "bench": ("benchmarks: memory, swap, fleet, soak, board, speed", bench),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the installed ``nnfleet`` command."""
    return device_main(argv, COMMANDS)


if __name__ == "__main__":
    sys.exit(main())
