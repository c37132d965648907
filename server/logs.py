"""Flower's log lines without colour codes when they do not go to a terminal (a log file,
a pipe, CI): Flower colours its level names with ANSI escapes regardless."""

from __future__ import annotations

import logging


def plain_when_not_a_terminal() -> None:
    """Turn off the colours of the ``flwr`` logger's console handlers whose stream is not a
    terminal."""
    for h in logging.getLogger("flwr").handlers:
        if hasattr(h, "colored") and not _terminal(getattr(h, "stream", None)):
            h.colored = False


def _terminal(stream: object) -> bool:
    """Whether ``stream`` is an open terminal (a closed file is not)."""
    try:
        return bool(stream is not None and stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):  # no isatty, or closed
        return False
