"""im2col / col2im for 1-D convolution of one sample ``(C, W)``.

``col[c*K + j, o] = x[c, o*stride - pad + j*dilation]`` (0 outside), so that
``W (F, C*K) @ col`` is the convolution (torch.nn.Conv1d's cross-correlation).
``col2im`` writes (not accumulates) ``dx``.
"""

from __future__ import annotations

import numpy as np

from . import lean_misc
from ._jit import njit, pick

Arr = np.ndarray


@njit
def im2col1d_numba(x: Arr, col: Arr, k: int, stride: int, pad: int, dil: int) -> None:
    C, W = x.shape
    OW = col.shape[1]
    for c in range(C):
        for j in range(k):
            r = c * k + j
            for o in range(OW):
                i = o * stride - pad + j * dil
                col[r, o] = x[c, i] if 0 <= i < W else 0.0


def _index(W: int, OW: int, k: int, stride: int, pad: int, dil: int) -> tuple[Arr, Arr]:
    i = np.arange(OW)[None, :] * stride - pad + np.arange(k)[:, None] * dil  # (k, OW)
    return i, (i >= 0) & (i < W)


def im2col1d_numpy(x: Arr, col: Arr, k: int, stride: int, pad: int, dil: int) -> None:
    C, W = x.shape
    i, ok = _index(W, col.shape[1], k, stride, pad, dil)
    vals = np.where(ok[None], x[:, np.clip(i, 0, W - 1)], 0.0)  # (C, k, OW)
    col[...] = vals.reshape(C * k, -1)


@njit
def col2im1d_numba(col: Arr, dx: Arr, k: int, stride: int, pad: int, dil: int) -> None:
    C, W = dx.shape
    OW = col.shape[1]
    for c in range(C):
        for i in range(W):
            dx[c, i] = 0.0
        for j in range(k):
            r = c * k + j
            for o in range(OW):
                i = o * stride - pad + j * dil
                if 0 <= i < W:
                    dx[c, i] += col[r, o]


def col2im1d_numpy(col: Arr, dx: Arr, k: int, stride: int, pad: int, dil: int) -> None:
    C, W = dx.shape
    i, ok = _index(W, col.shape[1], k, stride, pad, dil)
    acc = np.zeros((C, W), np.float64)
    c3 = col.reshape(C, k, -1).astype(np.float64)
    for j in range(k):  # scatter-add into acc's columns (rows of acc.T, a view)
        np.add.at(acc.T, i[j][ok[j]], c3[:, j, ok[j]].T)
    dx[...] = acc


im2col1d = pick(im2col1d_numba, lean_misc.im2col1d)
col2im1d = pick(col2im1d_numba, lean_misc.col2im1d)
