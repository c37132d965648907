"""Flower's log lines carry no colour escapes when they go to a file or a pipe."""

from __future__ import annotations

import io
import logging

import pytest

pytest.importorskip("flwr")


def test_flower_logs_to_a_pipe_are_plain():
    from flwr.supercore.logger import ConsoleHandler

    from server.logs import plain_when_not_a_terminal
    buf = io.StringIO()  # not a terminal
    handler = ConsoleHandler(stream=buf)
    lg = logging.getLogger("flwr")
    lg.addHandler(handler)
    try:
        lg.warning("before")
        plain_when_not_a_terminal()
        lg.warning("after")
    finally:
        lg.removeHandler(handler)
    before, after = buf.getvalue().splitlines()[-2:]
    assert "\x1b[" in before and "before" in before  # what Flower does by itself
    assert "\x1b[" not in after and after.startswith("WARNING") and after.endswith("after")
