"""Fuzzing support: one reproducible hypothesis setting, a time bound per input, the check
that an input either loads or fails with a one-line nnfleet error, and a tally of the
inputs tried per target (printed in pytest's summary and saved in its cache under
``nnfleet/fuzz-counts``: ``pytest --cache-show 'nnfleet/*'``).

``NNFLEET_FUZZ_SCALE=10`` multiplies every target's number of examples (a longer local
run); the default keeps the fuzz tests well under a minute.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from device_runtime.errors import NNFleetError

SCALE = float(os.environ.get("NNFLEET_FUZZ_SCALE", "1"))
TIME_BOUND = 10.0  # seconds one input may take before it counts as a hang


def fuzz_settings(examples: int) -> settings:
    """Derandomized (the same inputs on every run and machine), no example database, no
    per-example deadline (the time bound below is ours, and generous)."""
    return settings(max_examples=max(1, int(examples * SCALE)), derandomize=True, database=None,
                    deadline=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# byte-level edits of a file: (kind, position, byte value)
OPS = st.lists(st.tuples(st.sampled_from(["flip", "set", "cut", "delete", "insert", "dup"]),
                         st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=6)


def mutate(blob: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    """``blob`` after a few byte-level edits (bit flips, overwrites, cuts, inserts)."""
    b = bytearray(blob)
    for kind, pos, val in ops:
        i = pos % max(len(b), 1)
        if kind == "flip" and b:
            b[i] ^= 1 << (val % 8)
        elif kind == "set" and b:
            b[i] = val
        elif kind == "cut":
            del b[i:]
        elif kind == "delete" and b:
            del b[i]
        elif kind == "insert":
            b.insert(i, val)
        elif kind == "dup":
            b[i:i] = b[i:i + val]
    return bytes(b)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=8)


def edits(values: st.SearchStrategy, keys: st.SearchStrategy | None = None,
          max_size: int = 3) -> st.SearchStrategy:
    """Edits for :func:`edit_document`: (position, action, key, value)."""
    keys = st.text(max_size=6) if keys is None else keys
    return st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["set", "delete", "rename",
                                                                       "add"]), keys, values),
                    min_size=1, max_size=max_size)


def _slots(node: Any, out: list) -> list:
    items = node.items() if isinstance(node, dict) else enumerate(node) \
        if isinstance(node, list) else []
    for k, v in list(items):
        out.append((node, k))
        _slots(v, out)
    return out


def edit_document(doc: Any, changes: list) -> Any:
    """A deep copy of a JSON-like document with values replaced and keys deleted, renamed
    or added, at positions counted depth first."""
    doc = json.loads(json.dumps(doc))
    for pos, action, key, value in changes:
        slots = _slots(doc, [])
        if not slots:
            return value
        node, k = slots[pos % len(slots)]
        if action == "set" or not isinstance(node, dict):
            node[k] = value
        elif action == "delete":
            del node[k]
        elif action == "rename":
            node[key] = node.pop(k)
        elif action == "add" and isinstance(node[k], dict):
            node[k][key] = value
    return doc


class Hang(Exception):
    """An input took longer than the time bound."""


@contextmanager
def time_bound(seconds: float = TIME_BOUND) -> Iterator[None]:
    """Raise :class:`Hang` in the main thread if the body runs longer than ``seconds``."""
    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"no answer after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Tally:
    """Inputs tried per target, split into loaded and rejected (with a one-line error)."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: {"loaded": 0, "rejected": 0})
        self.seconds: dict[str, float] = defaultdict(float)

    def add(self, target: str, outcome: str, seconds: float) -> None:
        self.counts[target][outcome] += 1
        self.seconds[target] += seconds

    def lines(self) -> list[str]:
        out = []
        for t in sorted(self.counts):
            c = self.counts[t]
            out.append(f"{t:28s} {c['loaded'] + c['rejected']:7d} tried  {c['rejected']:7d} "
                       f"rejected  {c['loaded']:6d} loaded  {self.seconds[t]:6.1f} s")
        total = sum(c["loaded"] + c["rejected"] for c in self.counts.values())
        out.append(f"{'total':28s} {total:7d} tried")
        return out


TALLY = Tally()


def one_line_error(e: BaseException, *needles: str) -> str:
    """The message of an nnfleet error, checked: one non-empty line holding every needle."""
    msg = str(e)
    assert isinstance(e, NNFleetError), f"{type(e).__name__} is not an nnfleet error: {msg}"
    assert msg.strip(), f"{type(e).__name__} with an empty message"
    assert len(msg.splitlines()) == 1, f"message of {len(msg.splitlines())} lines: {msg!r}"
    for n in needles:
        assert n in msg, f"message does not name {n!r}: {msg}"
    return msg


def check_input(target: str, fn: Callable[[], Any], *needles: str,
                seconds: float = TIME_BOUND) -> tuple[Any, str | None]:
    """Run ``fn()`` on one input: ``(result, None)`` if it loads, ``(None, message)`` if it
    fails with a one-line nnfleet error naming ``needles``. Anything else (another
    exception, a multi-line message, a hang) fails the test; every call is counted."""
    t0 = time.perf_counter()
    try:
        with time_bound(seconds):
            result = fn()
    except NNFleetError as e:
        msg = one_line_error(e, *needles)
        TALLY.add(target, "rejected", time.perf_counter() - t0)
        return None, msg
    TALLY.add(target, "loaded", time.perf_counter() - t0)
    return result, None


@pytest.fixture(scope="module", autouse=True)
def fuzz_report(request: Any) -> Iterator[None]:
    """Import this autouse fixture into a fuzz test module: the tally is shown at the end of
    the run (and under ``pytest -s`` after the module) and kept in pytest's cache."""
    register_report(request.config)
    yield
    save_report(request.config)
    print("\n" + "\n".join(TALLY.lines()))


class _Report:
    """A pytest plugin registered at run time: the tally in the terminal summary."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if TALLY.counts:
            terminalreporter.section("malformed inputs tried per target")
            for line in TALLY.lines():
                terminalreporter.write_line(line)


def register_report(config: Any) -> None:
    """Show the tally at the end of the run and keep it in pytest's cache."""
    if not config.pluginmanager.has_plugin("nnfleet-fuzz-report"):
        config.pluginmanager.register(_Report(), "nnfleet-fuzz-report")


def save_report(config: Any) -> None:
    if getattr(config, "cache", None) is not None:
        config.cache.set("nnfleet/fuzz-counts", {t: dict(c) for t, c in TALLY.counts.items()})
