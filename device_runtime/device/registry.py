"""The registry of local-update rules, by name: filled by ``@local_update("name")`` in
:mod:`.rules` (imported with the package), read by the config to check ``local-update``.
It imports nothing of the rules, so the config can use it without importing them.

A rule may say when ``local-update = auto`` picks it (``auto=``: a test on the config,
true when the config sets the rule's own keys, e.g. ``head-epochs`` for FedRep);
:func:`resolve` turns ``auto`` into a rule name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ConfigError

LOCAL_UPDATES: dict[str, Callable[[Any], None]] = {}
# rule name -> (what ``auto`` looks for, in words; fn(cfg) -> does the config ask for it)
AUTO: dict[str, tuple[str, Callable[[Any], bool]]] = {}


def local_update(name: str, auto: tuple[str, Callable[[Any], bool]] | None = None
                 ) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Register the decorated function as the local-update rule ``name``; ``auto``:
    (the keys it is picked by, in words; a test of a DeviceConfig) for ``local-update =
    auto``."""
    def register(fn: Callable[[Any], None]) -> Callable[[Any], None]:
        assert name not in LOCAL_UPDATES, f"two local-update rules are called {name!r}"
        LOCAL_UPDATES[name] = fn
        if auto is not None:
            AUTO[name] = auto
        return fn
    return register


def rule_names() -> tuple[str, ...]:
    """What ``local-update`` may be: ``auto`` or a registered rule."""
    return ("auto", *LOCAL_UPDATES)


def resolve(cfg: Any) -> str:
    """The rule a DeviceConfig runs: its ``local-update``, or for ``auto`` the one rule
    whose keys it sets (``plain`` when none does; two is ambiguous and refused)."""
    name = str(cfg.local_update)
    if name == "auto":
        picked = [(n, words) for n, (words, wants) in AUTO.items() if wants(cfg)]
        if len(picked) > 1:
            raise ConfigError("device config sets " + " and ".join(
                f"{words} ({n})" for n, words in picked) + ": set local-update to "
                + " or ".join(n for n, _ in picked))
        name = picked[0][0] if picked else "plain"
    if name not in LOCAL_UPDATES:
        raise ConfigError(f"device config local-update = {name!r} is not a rule (known: auto, "
                          f"{', '.join(LOCAL_UPDATES)})")
    return name


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
