"""Compute kernels: numba versions with plain-numpy references (see ``_jit``)."""

from ._jit import HAVE_NUMBA, USE_NUMBA

__all__ = ["HAVE_NUMBA", "USE_NUMBA"]
