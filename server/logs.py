"""Flower's log lines without colour codes when they do not go to a terminal (a log file,
a pipe, CI): Flower colours its level names with ANSI escapes regardless."""

from __future__ import annotations

import logging


def plain_when_not_a_terminal() -> None:
    """Turn off the colours of the ``flwr`` logger's console handlers whose stream is not a
    terminal."""
    for h in logging.getLogger("flwr").handlers:
        stream = getattr(h, "stream", None)
        if hasattr(h, "colored") and not (stream is not None and hasattr(stream, "isatty")
                                          and stream.isatty()):
            h.colored = False
