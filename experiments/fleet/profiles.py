"""Device profiles: RAM cap, relative compute speed, availability and dropout, drawn from
distributions in the experiment config, plus what a small device does when its cap is
too small for the model (smaller batch, swap, frozen backbone: ``fallbacks``).

A distribution is a table: ``{dist = "constant", value = ...}``, ``{dist = "uniform",
low, high}``, ``{dist = "lognormal", median, sigma, min?, max?}`` or ``{dist = "choice",
values = [...], weights = [...]}``. Sizes may be written ``"256MiB"``. A bare value is a
constant.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from device_runtime.device import DeviceSettings
from device_runtime.errors import ConfigError
from device_runtime.units import parse_size


@dataclass
class DeviceProfile:
    index: int
    ram_cap: int | None  # bytes for the whole device process; None = uncapped
    speed: float  # relative compute speed: simulated seconds = measured seconds / speed
    availability: float  # probability of being online in a round
    dropout: float  # probability that an online, selected device drops out mid-round
    batch_size: int | None = None
    freeze: str = ""
    fallbacks: str = ""  # ";"-separated: swap, batch:N, freeze:PATTERNS
    swap: str = "auto"
    kernels: str = ""  # "numba" or "numpy", set by the fleet engine (experiments.fleet.kernels)

    def device_settings(self) -> DeviceSettings:
        """The device's own settings, as the device program takes them (what the fleet
        engine sends with each task)."""
        return DeviceSettings(ram_cap=int(self.ram_cap) if self.ram_cap else None,
                              swap=self.swap,
                              batch_size=int(self.batch_size) if self.batch_size else None,
                              freeze=self.freeze,
                              fallbacks=tuple(f.strip() for f in self.fallbacks.split(";")
                                              if f.strip()))

    def settings(self) -> dict[str, Any]:
        """The same settings in ``node_config`` form (a real device's SuperNode config, read
        by ``device_runtime.device.parse_settings``)."""
        out: dict[str, Any] = {"swap": self.swap}
        if self.ram_cap:
            out["ram-cap"] = int(self.ram_cap)
        if self.batch_size:
            out["batch-size"] = int(self.batch_size)
        if self.freeze:
            out["freeze"] = self.freeze
        if self.fallbacks:
            out["fallbacks"] = self.fallbacks
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _num(v: Any, size: bool) -> float:
    if size and isinstance(v, str):
        return float(parse_size(v))
    return float(v)


def draw(spec: Any, n: int, rng: np.random.Generator, size: bool = False) -> np.ndarray:
    """``n`` values from a distribution table (see the module docstring)."""
    if spec is None:
        return np.full(n, np.nan)
    if not isinstance(spec, dict):
        return np.full(n, _num(spec, size))
    kind = str(spec.get("dist", "constant"))
    if kind == "constant":
        out = np.full(n, _num(spec["value"], size))
    elif kind == "uniform":
        out = rng.uniform(_num(spec["low"], size), _num(spec["high"], size), n)
    elif kind == "lognormal":
        out = float(_num(spec["median"], size)) * np.exp(rng.normal(0.0, float(spec["sigma"]), n))
    elif kind == "choice":
        vals = np.array([_num(v, size) for v in spec["values"]])
        w = np.asarray(spec.get("weights", np.ones(len(vals))), dtype=np.float64)
        out = vals[rng.choice(len(vals), n, p=w / w.sum())]
    else:
        raise ConfigError(f"unknown distribution '{kind}' (constant, uniform, lognormal, choice)")
    if "min" in spec:
        out = np.maximum(out, _num(spec["min"], size))
    if "max" in spec:
        out = np.minimum(out, _num(spec["max"], size))
    return out


def draw_profiles(n: int, cfg: dict[str, Any] | None = None, seed: int = 0) -> list[DeviceProfile]:
    """Profiles for ``n`` devices from the ``[fleet]`` table of an experiment config.

    Keys: ``ram-cap`` (size distribution, absent = uncapped), ``speed`` (1.0),
    ``availability`` (1.0), ``dropout`` (0.0), and for devices whose cap is below
    ``small-below`` (a size): ``small-batch-size``, ``small-freeze``, and ``fallbacks``
    (every device).
    """
    cfg = dict(cfg or {})
    rng = np.random.default_rng([seed, 7])
    caps = draw(cfg.get("ram-cap"), n, rng, size=True)
    speed = draw(cfg.get("speed", 1.0), n, rng)
    avail = np.clip(draw(cfg.get("availability", 1.0), n, rng), 0.0, 1.0)
    drop = np.clip(draw(cfg.get("dropout", 0.0), n, rng), 0.0, 1.0)
    small = parse_size(cfg["small-below"]) if cfg.get("small-below") else 0
    out = []
    for i in range(n):
        cap = None if math.isnan(caps[i]) else int(caps[i])
        is_small = bool(cap is not None and cap < small)
        out.append(DeviceProfile(
            index=i, ram_cap=cap, speed=float(max(speed[i], 1e-3)), availability=float(avail[i]),
            dropout=float(drop[i]),
            batch_size=(int(cfg["small-batch-size"])
                        if is_small and cfg.get("small-batch-size") else None),
            freeze=str(cfg.get("small-freeze", "")) if is_small else "",
            fallbacks=str(cfg.get("fallbacks", "")), swap=str(cfg.get("swap", "auto"))))
    return out
