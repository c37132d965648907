"""Argument types and the parser class of ``nnfleet``: every bad value is one line.

The types raise ``argparse.ArgumentTypeError`` (argparse then names the option);
:class:`_Parser` turns argparse's own errors into a one-line :class:`ConfigError`, which
the command line prints as ``nnfleet: error: ...``. :func:`select_kernels` applies
``--kernels`` (``train`` and the device service).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from .errors import ConfigError
from .units import parse_size

# what str.splitlines() breaks on, shown escaped: an error message stays one line
_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


def one_line(text: str) -> str:
    """``text`` with its line breaks escaped (a message may quote what a user typed)."""
    return text.translate(_BREAKS)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, like every other error of ours
        raise ConfigError(one_line(message))


class HelpFormatter(argparse.HelpFormatter):
    """``(default: X)`` after each option's help (unless the help already says what the
    default is, or there is none: a flag, or ``None`` explained as ``None = ...``); the
    description wrapped paragraph by paragraph, the examples as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.lstrip().startswith("example"):  # command lines: one a line, as written
            return "".join(indent + line for line in text.splitlines(keepends=True))
        import textwrap

        return "\n\n".join(textwrap.fill(" ".join(par.split()), width, initial_indent=indent,
                                         subsequent_indent=indent)
                           for par in text.split("\n\n") if par.strip())

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        if (d is None or d is False or d == argparse.SUPPRESS or "default" in text.lower()
                or not action.option_strings):
            return text
        shown = ",".join(map(str, d)) if isinstance(d, (list, tuple)) else d
        return f"{text} (default: {str(shown).replace('%', '%%')})"


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


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return v


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
