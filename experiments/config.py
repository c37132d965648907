"""Experiment configs (TOML): loading and checking, with one-line errors."""

from __future__ import annotations

import os
import tomllib
from typing import Any

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.toml")


def load_config(path: str | None) -> dict[str, Any]:
    """The parsed experiment config at ``path`` (default: ``configs/default.toml``)."""
    from device_runtime.errors import ConfigError

    path = path or DEFAULT_CONFIG
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
