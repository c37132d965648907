"""Human sizes: ``64MiB``, ``1.5GiB``, ``500MB``, ``1048576``."""

from __future__ import annotations

import math
import re

from .errors import ConfigError

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2,
          "gib": 1024**3, "tib": 1024**4}
# The number has one way to match (no two adjacent digit runs), so a long string of
# digits cannot make the regex backtrack quadratically; long strings are refused anyway.
_SIZE = re.compile(r"^\s*((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_MAX_CHARS = 64
MAX_SIZE = 2**63 - 1  # bytes: the largest size an OS (and numpy's int64 sizes) can address
_HINT = "use e.g. 64MiB, 1.5GiB, 500MB or plain bytes"
# A larger batch is a typo: the layers' and the planner's work grows with the batch size.
MAX_BATCH_SIZE = 1 << 16


def parse_size(text: str | float, what: str = "") -> int:
    """Bytes from a size string (or a non-negative number of bytes).

    Raises ConfigError naming the bad value, prefixed with ``what`` (an option or a
    config key) when given.
    """
    where = f"{what}: " if what else ""
    if isinstance(text, bool):
        raise ConfigError(f"{where}a size must be a number of bytes or a string like 64MiB, "
                          f"got {text}")
    if isinstance(text, (int, float)):
        if not math.isfinite(text) or text < 0 or text > MAX_SIZE:
            raise ConfigError(f"{where}size must be between 0 and {MAX_SIZE} bytes, got {text}")
        return int(text)
    s = str(text)
    m = _SIZE.match(s) if len(s) <= _MAX_CHARS else None
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        shown = repr(s) if len(s) <= _MAX_CHARS else f"{s[:_MAX_CHARS]!r}... ({len(s)} chars)"
        raise ConfigError(f"{where}bad size {shown} ({_HINT})")
    num = m.group(1)
    if num.isdigit() and unit in ("", "b"):  # plain bytes: no Decimal code to page in
        n = int(num)
    else:  # the float screens out huge exponents cheaply; Decimal gives exact bytes
        from decimal import Decimal  # here: 0.3 MiB of RSS a run without sizes never needs

        n = int(Decimal(num) * _UNITS[unit]) if float(num) <= 2.0**64 else MAX_SIZE + 1
    if n > MAX_SIZE:
        raise ConfigError(f"{where}size {s.strip()!r} is too large (more than {MAX_SIZE} bytes)")
    return n


def fmt_bytes(n: float) -> str:
    """``12.3 MiB`` style."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
