"""Which kernels each device trains with: numba's, or the plain-numpy references.

Numba costs a fixed ~110-130 MiB of RSS (numba + LLVM + machine code) in every process that
imports it, before any tensor: a device whose RAM cap cannot hold that runs the numpy
kernels (``NNFLEET_NO_NUMBA=1`` in its worker, so numba is never imported). Both compute
the same numbers within float32 rounding; numba is faster. The rule is a pure function of
the device's cap, the config and what is installed — never of machine load, the numba
cache or the number of workers — so a device keeps its kind for a whole run.

``[fleet] kernels``: ``"auto"`` (default: numba for devices whose cap is at least
``[fleet] numba-min-cap`` or uncapped, numpy for smaller ones, and numpy everywhere when numba is
not installed or ``NNFLEET_NO_NUMBA`` is set), ``"numba"`` or ``"numpy"`` (every device).
"""

from __future__ import annotations

import importlib.util

from device_runtime import switches
from device_runtime.errors import ConfigError

# The smallest cap that gets numba under "auto". Measured on x86-64 (numba 0.68, Python
# 3.11): a numba worker's RSS is 159 MiB once its kernels are loaded from the cache (167
# MiB with the default model's own specialisations; 231 MiB in a process that compiled
# them), a numpy worker's 33 MiB. 224 MiB leaves a numba device ~56 MiB (a third of its
# baseline) for its working set and for a larger numba/LLVM on other machines; below it
# the ~126 MiB numba costs are better spent on the device's own training.
NUMBA_MIN_CAP = 224 << 20
CHOICES = ("auto", "numba", "numpy")


def numba_available() -> bool:
    """numba is installed and not switched off (found without importing it: ~110 MiB)."""
    return not switches.flag("NNFLEET_NO_NUMBA") and importlib.util.find_spec("numba") is not None


def device_kernels(caps: list[int | None], choice: str = "auto",
                   numba_min_cap: int = NUMBA_MIN_CAP,
                   have_numba: bool | None = None) -> list[str]:
    """Each device's kernel kind ("numba" or "numpy") from its RAM cap (None: uncapped)."""
    if choice not in CHOICES:
        raise ConfigError(f"[fleet] kernels = {choice!r} must be one of {', '.join(CHOICES)}")
    have = numba_available() if have_numba is None else have_numba
    if choice == "numba" and not have:
        raise ConfigError("[fleet] kernels = \"numba\": numba is not installed or is disabled "
                          "(NNFLEET_NO_NUMBA); use \"auto\" or \"numpy\"")
    if choice == "numpy" or not have:
        return ["numpy"] * len(caps)
    if choice == "numba":
        return ["numba"] * len(caps)
    return ["numba" if cap is None or cap >= numba_min_cap else "numpy" for cap in caps]


def split_workers(n: int, kinds: list[str]) -> dict[str, int]:
    """Workers per kind for ``n`` workers: in proportion to the devices of each kind, at
    least one for every kind that has a device (so ``n`` is raised to the kinds present)."""
    counts = {k: kinds.count(k) for k in ("numba", "numpy") if k in kinds}
    if not counts:
        return {"numba": max(n, 1)}
    if len(counts) == 1:
        return {k: max(n, 1) for k in counts}
    numba = min(max(1, round(n * counts["numba"] / len(kinds))), max(n - 1, 1))
    return {"numba": numba, "numpy": max(n - numba, 1)}
