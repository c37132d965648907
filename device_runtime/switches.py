"""Every ``NNFLEET_*`` environment switch of the runtime, read here and nowhere else.

Debug and tuning switches are environment variables (as tinygrad's are), so a run can be
changed without touching its command line. Each one is declared once below with its
default and what it does; the README's table lists the same rows (a test checks it).
Modules read a switch when they are imported, so set it before the process starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Switch:
    """One environment variable: its name, default text and effect."""

    name: str
    default: str
    doc: str


SWITCHES: dict[str, Switch] = {s.name: s for s in (
    Switch("NNFLEET_NO_NUMBA", "", "use the plain-numpy kernels even with numba installed"),
    Switch("NNFLEET_NUMBA_PARALLEL", "", "allow numba parallel loops (off by default: they "
           "fight OpenBLAS's threads)"),
    Switch("NNFLEET_THREADS", "0", "BLAS (and numba parallel) threads of a step; 0 = one "
           "per core of this process's CPU affinity (or OPENBLAS_NUM_THREADS when set); auto "
           "= timed steps pick all cores or 1 (faster on a loaded machine; the count can "
           "change the last bits)"),
    Switch("NNFLEET_POOL_ARGMAX", "", "0: max pooling keeps its input for backward and "
           "recomputes the argmax (default: it keeps the argmax, a byte per output)"),
    Switch("NNFLEET_CONV_COLUMNS", "1024", "output positions per im2col chunk"),
    Switch("NNFLEET_CONV_BLOCK", str(1 << 20), "bytes of im2col per conv product block "
           "(forward rows of one sample, backward channels): the smallest tile"),
    Switch("NNFLEET_POISON", "", "fill the pool with NaN at allocation, so a read of an "
           "unwritten tensor shows"),
    Switch("NNFLEET_GRAD_BLOCK", str(1 << 20), "gradient block size in bytes of fully "
           "connected and conv layers"),
    Switch("NNFLEET_SWAP_DIR", "", "where swap files go (default ~/.cache/nnfleet/swap)"),
    Switch("NNFLEET_CAP_MARGIN", str(2 << 20), "slack in bytes kept under a RAM cap beyond "
           "the plan"),
    Switch("NNFLEET_NO_RECOMPUTE", "", "keep batch-norm + activation outputs instead of "
           "recomputing them before backward (results are bit-identical either way)"),
    Switch("NNFLEET_RELU_MASK", "1", "0 keeps ReLU's float output for backward instead of "
           "a 1-bit mask"),
    Switch("NNFLEET_TEST_ALLOC", "", "debug: SIZE@STEP allocates SIZE bytes the plan does not "
           "know at step STEP (shows the RAM guard at work)"),
)}


def text(name: str) -> str:
    """The switch's value, or its default when unset or empty."""
    assert name in SWITCHES, f"undeclared switch {name}: add it to SWITCHES"
    return os.environ.get(name) or SWITCHES[name].default


def flag(name: str) -> bool:
    """A yes/no switch: ``1`` or ``true`` (any case) is on."""
    return text(name).lower() in ("1", "true")


def integer(name: str) -> int:
    """A whole-number switch (a bad value names the variable)."""
    raw = text(name)
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: must be an integer (default "
                         f"{SWITCHES[name].default})") from None
