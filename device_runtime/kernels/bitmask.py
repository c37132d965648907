"""ReLU and leaky ReLU that keep their backward mask as packed bits (1/32 of the output).

Backward of (leaky) ReLU needs only the sign of the output. Keeping that sign as one bit
per element lets the output itself be dropped as soon as the next layer is done with it
(or swapped), instead of living until the activation's own backward. Bit ``i`` of the
mask is bit ``i % 8`` (least significant first) of byte ``i // 8``.
"""

from __future__ import annotations

import numpy as np

from . import lean
from ._jit import njit, pick


@njit
def relu_mask_fwd_numba(x, y, mask, slope):
    """y = x if x > 0 else slope * x (slope 0: ReLU); y may alias x; mask gets x > 0."""
    n = x.shape[0]
    nb = mask.shape[0]
    s = np.float32(slope)
    for b in range(nb):
        byte = 0
        base = b * 8
        for k in range(8):
            i = base + k
            if i < n:
                v = x[i]
                if v > 0:
                    byte |= 1 << k
                    y[i] = v
                else:
                    y[i] = v * s
        mask[b] = byte


def relu_mask_fwd_numpy(x, y, mask, slope):
    pos = x > 0
    mask[...] = np.packbits(pos, bitorder="little")[:mask.shape[0]]
    np.multiply(x, np.where(pos, np.float32(1), np.float32(slope)), out=y)


@njit
def relu_mask_bwd_numba(mask, dy, dx, slope):
    """dx = dy where the mask bit is set, else slope * dy; dx may alias dy."""
    n = dy.shape[0]
    s = np.float32(slope)
    for i in range(n):
        if (mask[i >> 3] >> (i & 7)) & 1:
            dx[i] = dy[i]
        else:
            dx[i] = dy[i] * s


def relu_mask_bwd_numpy(mask, dy, dx, slope):
    pos = np.unpackbits(mask, count=dy.shape[0], bitorder="little").astype(bool)
    np.multiply(dy, np.where(pos, np.float32(1), np.float32(slope)), out=dx)


relu_mask_fwd = pick(relu_mask_fwd_numba, lean.relu_mask_fwd)
relu_mask_bwd = pick(relu_mask_bwd_numba, lean.relu_mask_bwd)
