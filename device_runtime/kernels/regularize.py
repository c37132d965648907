"""L2 regularisation added to a gradient in place: ``g += c * w``."""

from __future__ import annotations

import numpy as np

from . import lean_elem
from ._jit import njit, pick

Arr = np.ndarray


@njit
def l2_add_numba(g: Arr, w: Arr, c: float) -> None:
    """g[i] = w[i] * c + g[i], rounded once (torch's grad.add(param, alpha=c))."""
    cf = np.float64(np.float32(c))
    for i in range(g.shape[0]):
        g[i] = np.float32(np.float64(w[i]) * cf + np.float64(g[i]))


def l2_add_numpy(g: Arr, w: Arr, c: float) -> None:
    g[...] = (w.astype(np.float64) * np.float64(np.float32(c)) + g).astype(np.float32)


l2_add = pick(l2_add_numba, lean_elem.l2_add)
