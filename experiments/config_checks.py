"""Checks of config values: each is ``check(where, value)`` and raises a one-line
ConfigError naming ``where`` (``[fleet] ram-cap.sigma``) and the value, or returns None.
Used by :mod:`experiments.config`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from device_runtime.errors import ConfigError
from device_runtime.units import parse_size

Check = Callable[[str, Any], None]  # (where, value) -> None, or raises ConfigError


def show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _key(k: Any) -> str:
    return k if isinstance(k, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", k) else repr(k)


def fail(where: str, v: Any, want: str) -> ConfigError:
    return ConfigError(f"{where} = {show(v)} must be {want}")


def _range(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    def num(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    parts = [f"{'>' if lo_open else '>='} {num(lo)}"] if lo is not None else []
    parts += [f"{'<' if hi_open else '<='} {num(hi)}"] if hi is not None else []
    return " and ".join(parts)


def integer(lo: int | None = None, hi: int | None = None) -> Check:
    def check(where: str, v: Any) -> None:
        if not isinstance(v, int) or isinstance(v, bool) or (lo is not None and v < lo) \
                or (hi is not None and v > hi):
            raise fail(where, v, f"an integer {_range(lo, hi)}".rstrip())
    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False) -> Check:
    def check(where: str, v: Any) -> None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and \
            not (isinstance(v, float) and not math.isfinite(v)) and \
            (lo is None or (v > lo if lo_open else v >= lo)) and \
            (hi is None or (v < hi if hi_open else v <= hi))
        if not ok:
            raise fail(where, v, f"a number {_range(lo, hi, lo_open, hi_open)}".rstrip())
    return check


def one_of(*choices: str) -> Check:
    def check(where: str, v: Any) -> None:
        if not isinstance(v, str) or v.strip().lower() not in choices:
            raise fail(where, v, f"one of {', '.join(choices)}")
    return check


def text(where: str, v: Any) -> None:
    if not isinstance(v, str):
        raise fail(where, v, "a string")


def boolean(where: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise fail(where, v, "true or false")


def size(where: str, v: Any) -> None:
    """A size in bytes (``"256MiB"`` or a number), > 0."""
    if isinstance(v, (list, dict)) or parse_size(v, where) == 0:
        raise fail(where, v, "a size > 0 such as \"256MiB\"")


def list_of(item: Check, min_len: int = 0) -> Check:
    def check(where: str, v: Any) -> None:
        if not isinstance(v, list) or len(v) < min_len:
            raise fail(where, v, "a list" + (f" of at least {min_len}" if min_len else ""))
        for i, x in enumerate(v):
            item(f"{where}[{i}]", x)
    return check


def table(schema: dict[str, Check], required: tuple[str, ...] = ()) -> Check:
    """A TOML table whose keys are all in ``schema`` (``required`` ones present)."""
    def check(where: str, v: Any) -> None:
        if not isinstance(v, dict):
            raise fail(where, v, "a table")
        unknown = [k for k in v if k not in schema]
        if unknown:
            renamed(where, unknown[0], schema)
            raise ConfigError(f"{join(where, unknown[0])}: unknown key (known: "
                              f"{', '.join(schema) or 'none'})")
        for k in required:
            if k not in v:
                raise ConfigError(f"{where} needs {k!r}")
        for k, x in v.items():  # top-level tables are sections: [train] lr, not train.lr
            schema[k](f"[{_key(k)}]" if not where and isinstance(x, dict) else join(where, k), x)
    return check


def renamed(where: str, key: Any, known: Any) -> None:
    """Refuse a key in its old snake_case spelling with a hint naming the new one."""
    new = key.replace("_", "-") if isinstance(key, str) else key
    if new != key and new in known:
        raise ConfigError(f"{join(where, key)}: renamed to {new!r} (config keys are kebab-case, "
                          f"as Flower's run config)")


def join(where: str, key: Any) -> str:
    if not where:
        return _key(key)
    return f"{where} {_key(key)}" if where.endswith("]") else f"{where}.{_key(key)}"


# ---------------------------------------------------------------- distributions

_DISTS = {"constant": ("value",), "uniform": ("low", "high"), "lognormal": ("median", "sigma"),
          "choice": ("values",)}


def distribution(value: Check, as_number: Callable[[Any], Any] = lambda v: v) -> Check:
    """A bare value or ``{dist = ..., ...}`` (experiments.fleet.profiles.draw)."""
    def check(where: str, v: Any) -> None:
        if not isinstance(v, dict):
            value(where, v)
            return
        kind = v.get("dist", "constant")
        one_of(*_DISTS)(join(where, "dist"), kind)
        keys = {"dist", "min", "max", "weights", *_DISTS[kind]}
        table({k: (lambda w, x: None) for k in keys if k != "weights" or kind == "choice"},
              _DISTS[kind])(where, v)
        for k in ("value", "low", "high", "median", "min", "max"):
            if k in v:
                value(join(where, k), v[k])
        if "sigma" in v:
            number(0)(join(where, "sigma"), v["sigma"])
        if kind == "uniform" and as_number(v["low"]) > as_number(v["high"]):
            raise ConfigError(f"{where}: low = {show(v['low'])} is above high = "
                              f"{show(v['high'])}")
        if kind == "choice":
            list_of(value, 1)(join(where, "values"), v["values"])
            w = v.get("weights", [1] * len(v["values"]))
            list_of(number(0))(join(where, "weights"), w)
            if len(w) != len(v["values"]) or sum(w) <= 0:
                raise ConfigError(f"{join(where, 'weights')} needs one weight >= 0 per value "
                                  f"({len(v['values'])}), not all 0")
    return check


def any_table(where: str, v: Any) -> None:
    """A table with keys the code that reads it checks (strategy-args, model args)."""
    if not isinstance(v, dict):
        raise fail(where, v, "a table")


def matches(pattern: str, want: str) -> Check:
    def check(where: str, v: Any) -> None:
        if not isinstance(v, str) or not re.fullmatch(pattern, v.strip()):
            raise fail(where, v, want)
    return check


def plain_keys(where: str, v: Any) -> None:
    """Keys of a table (and its sub-tables) are plain names, so that messages of the code
    reading them stay one line: ``[faults] at.'\\n'`` is refused here."""
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", k):
                raise ConfigError(f"{join(where, k)}: unknown key (keys are plain names)")
            plain_keys(join(where, k), x)
