"""Kept for importers of ``device_runtime.warmup``: the warm-up lives in
:mod:`device_runtime.cap` with the rest of the RAM cap's work."""

from .cap.warmup import warmup

__all__ = ["warmup"]
