"""The proximal term of FedProx and Ditto as an optimizer wrapper (no temporaries)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..optimizers import Optimizer

Arrays = dict[str, np.ndarray]


class ProxOptimizer(Optimizer):
    """Adds ``mu * (w - anchor)`` to each gradient before the inner update: the proximal
    term of FedProx (Li et al., 2020) and of Ditto's personal model (Li et al., 2021)."""

    def __init__(self, inner: Optimizer) -> None:
        super().__init__(lr=inner.base_lr, schedule=inner.schedule)
        self.inner = inner
        self.name, self.slots = inner.name, inner.slots
        self.mu = 0.0
        self.anchor: Arrays = {}  # key -> flat float32 copy of the global weights
        self._scratch = np.zeros(0, np.float32)

    def init_state(self, params: list[tuple[str, int]]) -> None:
        self.inner.init_state(params)
        self._scratch = np.zeros(max((n for _, n in params), default=0), np.float32)

    @property
    def state_bytes(self) -> int:
        return self.inner.state_bytes + self._scratch.nbytes

    @property
    def state_buffer(self) -> np.ndarray:
        return self.inner.state_buffer

    @state_buffer.setter
    def state_buffer(self, value: np.ndarray) -> None:  # set by Optimizer.__init__ only
        pass

    def begin_step(self) -> None:
        self.inner.begin_step()

    def end_step(self) -> None:
        self.inner.end_step()

    def update(self, key: str, w: np.ndarray, g: np.ndarray, start: int = 0) -> None:
        a = self.anchor.get(key) if self.mu else None
        if a is not None:  # g += mu * (w - anchor), in a preallocated scratch buffer
            n = g.size
            t = self._scratch[:n].reshape(g.shape)
            np.subtract(w.reshape(g.shape), a[start:start + n].reshape(g.shape), out=t)
            t *= np.float32(self.mu)
            np.add(g, t, out=g)
        self.inner.update(key, w, g, start)

    def reset(self) -> None:
        self.inner.state_buffer[...] = 0
        self.inner.iteration = 0

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.inner.load_state_dict(d)
