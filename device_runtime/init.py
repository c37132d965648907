"""Weight initializers (NNTrainer names; ``torch`` is PyTorch's Linear/Conv default)."""

from __future__ import annotations

import math

import numpy as np

from .errors import ModelError

INITIALIZERS = ("torch", "zeros", "ones", "xavier_uniform", "xavier_normal", "he_uniform",
                "he_normal", "lecun_uniform", "lecun_normal", "none")


def initialize(out: np.ndarray, init: str, fan_in: int, fan_out: int,
               rng: np.random.Generator, what: str = "") -> None:
    """Fill ``out`` in place."""
    name = str(init).strip().lower() or "torch"
    if name not in INITIALIZERS:
        raise ModelError(f"{what}: unknown initializer '{init}' (known: {', '.join(INITIALIZERS)})")
    fi, fo = max(fan_in, 1), max(fan_out, 1)
    if name in ("zeros", "none"):
        out.fill(0.0)
    elif name == "ones":
        out.fill(1.0)
    elif name == "torch":  # kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        b = 1.0 / math.sqrt(fi)
        out[...] = rng.uniform(-b, b, out.shape)
    elif name.endswith("_uniform"):
        scale = {"xavier": 6.0 / (fi + fo), "he": 6.0 / fi, "lecun": 3.0 / fi}[name[:-8]]
        b = math.sqrt(scale)
        out[...] = rng.uniform(-b, b, out.shape)
    else:  # *_normal
        var = {"xavier": 2.0 / (fi + fo), "he": 2.0 / fi, "lecun": 1.0 / fi}[name[:-7]]
        out[...] = rng.normal(0.0, math.sqrt(var), out.shape)
