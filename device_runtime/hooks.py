"""Process-wide training-step hooks: code that must run inside the training loop of
whatever model trains in this process (fault injection in the fleet, profilers), without
replacing ``Model`` methods.

>>> with before_each_step(lambda: print("step")):
...     model.fit(x, y)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

_BEFORE_STEP: list[Callable[[], None]] = []


@contextmanager
def before_each_step(fn: Callable[[], None]) -> Iterator[None]:
    """Call ``fn()`` before every training step of any model in this block."""
    _BEFORE_STEP.append(fn)
    try:
        yield
    finally:
        _BEFORE_STEP.remove(fn)


def run_before_step() -> None:
    """Called by ``Model.train_step``; an exception from a hook ends the step."""
    for fn in tuple(_BEFORE_STEP):
        fn()
