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


# rule name -> fn(state, weights, cfg) -> the model a device evaluates as its personalized
# one, given the model it would otherwise evaluate (the received shared weights with its
# personal layers); filled by ``@personalized_model("name")`` next to the rule
PERSONALIZED: dict[str, Callable[..., Any]] = {}


def personalized_model(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register how rule ``name``'s device builds the model it is evaluated with."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        assert name not in PERSONALIZED, f"two personalized models for {name!r}"
        PERSONALIZED[name] = fn
        return fn
    return register
