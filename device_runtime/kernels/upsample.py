"""2-D upsampling of ``(N, C, H, W)`` by integer factors: nearest and bilinear.

Bilinear follows ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False)`` (and NNTrainer's upsample2d): source coordinate
``(dst + 0.5) / scale - 0.5`` clamped at 0, neighbours clamped at the border.
Backward kernels write (not accumulate) ``dx``.
"""

from __future__ import annotations

import math

import numpy as np

from ._jit import njit, pick

Arr = np.ndarray


@njit
def nearest_fwd_numba(x: Arr, y: Arr, sh: int, sw: int) -> None:
    N, C, OH, OW = y.shape
    for n in range(N):
        for c in range(C):
            for i in range(OH):
                for j in range(OW):
                    y[n, c, i, j] = x[n, c, i // sh, j // sw]


def nearest_fwd_numpy(x: Arr, y: Arr, sh: int, sw: int) -> None:
    y[...] = np.repeat(np.repeat(x, sh, axis=2), sw, axis=3)


@njit
def nearest_bwd_numba(dy: Arr, dx: Arr, sh: int, sw: int) -> None:
    N, C, H, W = dx.shape
    for n in range(N):
        for c in range(C):
            for i in range(H):
                for j in range(W):
                    s = np.float64(0.0)
                    for a in range(sh):
                        for b in range(sw):
                            s += dy[n, c, i * sh + a, j * sw + b]
                    dx[n, c, i, j] = s


def nearest_bwd_numpy(dy: Arr, dx: Arr, sh: int, sw: int) -> None:
    N, C, H, W = dx.shape
    dx[...] = dy.astype(np.float64).reshape(N, C, H, sh, W, sw).sum(axis=(3, 5))


@njit
def _src(dst: int, scale: int, size: int) -> tuple[int, int, float]:
    s = (dst + 0.5) / scale - 0.5
    if s < 0.0:
        s = 0.0
    i0 = int(math.floor(s))
    i1 = min(i0 + 1, size - 1)
    return i0, i1, s - i0


def _interp_matrix(out: int, scale: int, size: int) -> np.ndarray:
    """(out, size) float64: row i holds the two bilinear weights of output i."""
    s = np.maximum((np.arange(out) + 0.5) / scale - 0.5, 0.0)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, size - 1)
    m = np.zeros((out, size))
    np.add.at(m, (np.arange(out), i0), 1.0 - (s - i0))
    np.add.at(m, (np.arange(out), i1), s - i0)
    return m


@njit
def bilinear_fwd_numba(x: Arr, y: Arr, sh: int, sw: int) -> None:
    N, C, OH, OW = y.shape
    H, W = x.shape[2], x.shape[3]
    for i in range(OH):
        y0, y1, ly = _src(i, sh, H)
        for j in range(OW):
            x0, x1, lx = _src(j, sw, W)
            for n in range(N):
                for c in range(C):
                    f64 = np.float64
                    top = (1.0 - lx) * f64(x[n, c, y0, x0]) + lx * f64(x[n, c, y0, x1])
                    bot = (1.0 - lx) * f64(x[n, c, y1, x0]) + lx * f64(x[n, c, y1, x1])
                    y[n, c, i, j] = (1.0 - ly) * top + ly * bot


def bilinear_fwd_numpy(x: Arr, y: Arr, sh: int, sw: int) -> None:
    ay = _interp_matrix(y.shape[2], sh, x.shape[2])
    ax = _interp_matrix(y.shape[3], sw, x.shape[3])
    y[...] = np.einsum("ih,nchw,jw->ncij", ay, x.astype(np.float64), ax)


@njit
def bilinear_bwd_numba(dy: Arr, dx: Arr, sh: int, sw: int) -> None:
    N, C, OH, OW = dy.shape
    H, W = dx.shape[2], dx.shape[3]
    dx[...] = 0.0
    for i in range(OH):
        y0, y1, ly = _src(i, sh, H)
        for j in range(OW):
            x0, x1, lx = _src(j, sw, W)
            for n in range(N):
                for c in range(C):
                    g = np.float64(dy[n, c, i, j])
                    dx[n, c, y0, x0] += (1.0 - ly) * (1.0 - lx) * g
                    dx[n, c, y0, x1] += (1.0 - ly) * lx * g
                    dx[n, c, y1, x0] += ly * (1.0 - lx) * g
                    dx[n, c, y1, x1] += ly * lx * g


def bilinear_bwd_numpy(dy: Arr, dx: Arr, sh: int, sw: int) -> None:
    ay = _interp_matrix(dy.shape[2], sh, dx.shape[2])
    ax = _interp_matrix(dy.shape[3], sw, dx.shape[3])
    dx[...] = np.einsum("ih,ncij,jw->nchw", ay, dy.astype(np.float64), ax)


nearest_fwd = pick(nearest_fwd_numba, nearest_fwd_numpy)
nearest_bwd = pick(nearest_bwd_numba, nearest_bwd_numpy)
bilinear_fwd = pick(bilinear_fwd_numba, bilinear_fwd_numpy)
bilinear_bwd = pick(bilinear_bwd_numba, bilinear_bwd_numpy)
