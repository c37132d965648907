"""Pay every kernel's JIT cost once per process, before anything is measured (the fleet's
workers and the Flower ClientApp call :func:`warmup` when they start)."""

from __future__ import annotations

from .cap.warmup import warm_kernels
from .model import Model


def warmup(force: bool = False) -> None:
    """Run every kernel once (no-op after the first call, or without numba)."""
    warm_kernels(Model, force)
