"""The registry of local-update rules, by name: filled by ``@local_update("name")`` in
:mod:`.rules` (imported with the package), read by the config to check ``local-update``.
It imports nothing, so the config can use it without importing the rules."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LOCAL_UPDATES: dict[str, Callable[[Any], None]] = {}


def local_update(name: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register the decorated function as the local-update rule ``name``."""
    def register(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        assert name not in LOCAL_UPDATES, f"two local-update rules are called {name!r}"
        LOCAL_UPDATES[name] = fn
        return fn
    return register


def rule_names() -> tuple[str, ...]:
    """What ``local-update`` may be: ``auto`` or a registered rule."""
    return ("auto", *LOCAL_UPDATES)
