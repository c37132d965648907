"""Table cells of the benchmarks: sizes in MiB and ratios, "-" where a figure is missing."""

from __future__ import annotations

MIB = 1024 * 1024


def mib(b: float | None) -> str:
    return "-" if b is None else f"{b / MIB:.1f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"
