"""Pay every kernel's JIT cost once per process, before anything is measured (the fleet's
workers and the Flower ClientApp call :func:`warmup` when they start).

``python -m device_runtime.warmup [--model SPEC ...] [--quiet]`` compiles every kernel (and
the specialisations of each model given) into numba's cache and prints one JSON line: the
kernels in use, the cache folders, how many kernel signatures were compiled and how many
loaded from the cache, seconds, RSS. The fleet engine runs it once, in its own process,
before any worker starts, so that no device pays (or is measured with) a compilation.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from .cap.warmup import warm_kernels
from .model import Model


def warmup(force: bool = False) -> None:
    """Run every kernel once (no-op after the first call, or without numba)."""
    warm_kernels(Model, force)


def _dispatchers() -> list[Any]:
    """The numba dispatchers of the loaded kernel modules (none without numba)."""
    from .kernels import USE_NUMBA
    if not USE_NUMBA:
        return []
    from numba.core.registry import CPUDispatcher

    out: dict[int, Any] = {}
    for name, mod in list(sys.modules.items()):
        if name.startswith(__package__ + ".") and mod is not None:
            out.update({id(v): v for v in vars(mod).values() if isinstance(v, CPUDispatcher)})
    return list(out.values())


def precompile(models: list[str], quiet: bool = False) -> dict[str, Any]:
    """Compile (or load) every kernel, and each model's own specialisations, into numba's
    cache; print a progress line on stderr when the cache holds none of them yet."""
    from . import rss
    from .kernels import USE_NUMBA
    from .modelspec import load_model

    t0 = time.perf_counter()
    found = _dispatchers()
    dirs = sorted({d.stats.cache_path for d in found})
    cold = bool(dirs) and not any(f.endswith(".nbi") for d in dirs if os.path.isdir(d)
                                  for f in os.listdir(d))
    if cold and not quiet:
        print(f"compiling numba kernels into {os.path.dirname(dirs[0])} (first run only)...",
              file=sys.stderr, flush=True)
    warmup()
    for spec in models:
        load_model(spec)[0].warm_up()
    found = _dispatchers()
    return {"kernels": "numba" if USE_NUMBA else "numpy", "cache_dirs": dirs, "cold": cold,
            "compiled": sum(sum(d.stats.cache_misses.values()) for d in found),
            "loaded": sum(sum(d.stats.cache_hits.values()) for d in found),
            "seconds": time.perf_counter() - t0, "rss": rss.current_rss()}


def main(argv: list[str]) -> int:
    """``[--model SPEC ...] [--quiet]``: precompile, print the JSON line."""
    models = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--model"]
    print(json.dumps(precompile(models, "--quiet" in argv)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
