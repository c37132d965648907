"""Numba when it is installed and enabled, else the plain-numpy references.

Every kernel module defines a ``*_numba`` function (njit, loops, no allocation) and a
``*_numpy`` reference (vectorised numpy, may allocate: it is the fallback and the test
oracle). The public name is bound with :func:`pick` once, at import.

Switches (see README, "Environment variables"):
``NUMBA_DISABLE_JIT=1`` (numba's own) and ``NNFLEET_NO_NUMBA=1`` both select the numpy
references, so the runtime works on a board without numba.
"""

from __future__ import annotations

from typing import Any, Callable

from .. import switches

_OFF = switches.flag("NNFLEET_NO_NUMBA")


def _plain_njit(*args: Any, **kwargs: Any) -> Any:
    # plain Python: @njit, @njit(...) and njit(f, cache=...) all give f itself
    if len(args) == 1 and callable(args[0]):
        return args[0]
    return lambda f: f


_njit: Callable[..., Any] = _plain_njit
prange: Callable[..., Any] = range
HAVE_NUMBA = False
try:  # numba is optional at run time; with NNFLEET_NO_NUMBA it is not even imported (~60 MiB)
    if _OFF:
        raise ImportError("numba disabled by NNFLEET_NO_NUMBA")
    import numba
    from numba import njit as _njit
    from numba import prange as prange  # re-exported: the kernels' parallel loops

    # numba.config sets its options from the environment at import: no static attribute
    HAVE_NUMBA = not getattr(numba.config, "DISABLE_JIT")
except ImportError:  # pragma: no cover - exercised on boards without numba
    pass


USE_NUMBA = HAVE_NUMBA and not _OFF
# Numba's parallel loops are off unless asked for: interleaved with OpenBLAS calls (the
# conv path alternates im2col and matmul) the two thread pools spin against each other
# on a small board; measured here, im2col+matmul took 8.3 ms parallel vs 0.53 ms serial.
PARALLEL = switches.flag("NNFLEET_NUMBA_PARALLEL")


def njit(*args: Any, **kwargs: Any) -> Any:
    """``numba.njit`` with nnfleet's defaults (cached machine code, fastmath off)."""
    kwargs.setdefault("nogil", True)
    if not PARALLEL:
        kwargs.pop("parallel", None)
    # numba's cache index ignores the parallel flag: cache only the default (serial) build.
    kwargs.setdefault("cache", not PARALLEL)
    return _njit(*args, **kwargs)


def pick(numba_fn: Callable[..., Any], numpy_fn: Callable[..., Any]) -> Callable[..., Any]:
    """Return the numba kernel when numba is in use, else the numpy reference."""
    return numba_fn if USE_NUMBA else numpy_fn
