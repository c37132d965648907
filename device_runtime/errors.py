"""The small set of domain exceptions (STYLE.md, convention 6).

User input problems are ``ValueError`` subclasses so that callers who only know the
standard library still catch them; the CLI turns every :class:`NNFleetError` into a
one-line message and a non-zero exit code.
"""

from __future__ import annotations


class NNFleetError(Exception):
    """Base class of every error nnfleet reports to a user."""


class ModelError(NNFleetError, ValueError):
    """A model description is malformed: unknown layer, bad property, shape mismatch."""


class DataError(NNFleetError, ValueError):
    """A data or weight file is missing, unreadable or of the wrong shape or dtype."""


class ConfigError(NNFleetError, ValueError):
    """A command-line value or configuration entry is invalid."""


class MemoryCapExceeded(NNFleetError):
    """Training cannot fit (or did not stay) within the device's RAM cap."""

    def __init__(self, needed: int, cap: int, detail: str = "", limit: str = "the RAM cap") -> None:
        self.needed = int(needed)
        self.cap = int(cap)
        msg = f"needs {self.needed:,} bytes but {limit} is {self.cap:,} bytes"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class TrainingDiverged(NNFleetError):
    """The loss or a weight became NaN or infinite: training stops, and nothing is saved
    (the command line exits with code 4)."""

    exit_code = 4
