"""One round of local training on one device, as the local-update rules see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..model import Model
from .config import DeviceConfig
from .state import Arrays, DeviceState
from .trainers import fit, phase_seed, with_fallbacks


@dataclass
class LocalRun:
    """One round of local training on one device: what a rule reads and updates."""

    state: DeviceState
    cfg: DeviceConfig
    batch: int
    frozen: tuple[str, ...]  # layers this device never trains
    shared_keys: list[str]
    personal_keys: list[str]
    received: Arrays  # the shared weights from the server
    init: Arrays  # the model's seeded initial weights
    weights: Arrays  # the whole model: its shared part is returned, its personal part kept
    personal_model: Arrays  # Ditto's v (evaluated instead of ``weights`` when not empty)
    arrays: Arrays  # the device state's arrays after the round
    losses: list[float] = field(default_factory=list)
    model: Model | None = None  # the last trainer used (its memory report goes to metrics)

    def train(self, frozen: tuple[str, ...], start: Arrays, epochs: int, phase: str,
              anchor: Arrays | None = None, mu: float = 0.0,
              opt_state: dict[str, Any] | None = None) -> Arrays:
        """Train from ``start`` with ``frozen`` layers fixed; returns the new weights."""
        self.model = with_fallbacks(self.cfg, self.state.settings, self.batch, frozen)
        out, losses = fit(self.model, start, self.state.data, self.cfg, epochs,
                          phase_seed(self.cfg, self.state.device_id, phase), anchor, mu,
                          opt_state)
        self.losses += losses
        return out


def layers_of(keys: list[str]) -> set[str]:
    """The layer names of ``layer:param`` keys."""
    return {k.split(":", 1)[0] for k in keys}
