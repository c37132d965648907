"""Benchmark: a VGG-like 64->64 3x3 conv layer (32x32, batch 32), ours vs PyTorch.

Run ``python tests/bench_kernels_conv.py [--threads 2] [--reps 10]`` from the repository
root. Times forward + backward (input and weight/bias gradients) through the im2col
kernels and ``np.matmul(..., out=)``, per chunk size, and prints the ratio to
``torch.nn.functional.conv2d`` forward + backward on the same number of threads. The
backward pass recomputes im2col (the memory-lean choice: the column buffer is not kept
between passes); the ``keep col`` row reuses the forward's buffer instead.
Not collected by pytest (no ``test_`` names).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _best(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up (JIT compile, BLAS buffers)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    # thread counts must be set before numpy/numba/torch start their pools
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)

    import numpy as np

    from device_runtime.kernels._jit import USE_NUMBA
    from device_runtime.kernels.conv import (
        bias_grad_nchw, chunk_to_nchw_bias, col2im, im2col, nchw_to_chunk,
    )

    nb, cin, cout, h, w, k, pad = args.batch, 64, 64, 32, 32, 3, 1
    oh, ow = h, w
    rng = np.random.default_rng(0)
    x = rng.standard_normal((nb, cin, h, w), dtype=np.float32)
    wt = rng.standard_normal((cout, cin, k, k), dtype=np.float32) * 0.05
    bias = rng.standard_normal(cout, dtype=np.float32)
    dy = rng.standard_normal((nb, cout, oh, ow), dtype=np.float32)
    w2d = wt.reshape(cout, cin * k * k)
    y = np.empty((nb, cout, oh, ow), np.float32)
    dx = np.empty_like(x)
    dw = np.empty_like(w2d)
    db = np.empty(cout, np.float32)

    def make_step(chunk: int, keep_col: bool):  # type: ignore[no-untyped-def]
        n = chunk * oh * ow
        col = np.empty((cin * k * k, n), np.float32)
        ych = np.empty((cout, n), np.float32)
        dych = np.empty((cout, n), np.float32)
        dcol = np.empty((cin * k * k, n), np.float32)
        dwtmp = np.empty_like(w2d)
        y3 = y.reshape(nb, cout, oh * ow)
        dy3 = dy.reshape(nb, cout, oh * ow)

        def step() -> None:
            for b0 in range(0, nb, chunk):
                b1 = b0 + chunk
                im2col(x[b0:b1], col, k, k, 1, 1, pad, pad, oh, ow)
                np.matmul(w2d, col, out=ych)
                chunk_to_nchw_bias(ych, y3[b0:b1], bias)
            bias_grad_nchw(dy3, db, False)
            for b0 in range(0, nb, chunk):
                b1 = b0 + chunk
                nchw_to_chunk(dy3[b0:b1], dych)
                if not keep_col:
                    im2col(x[b0:b1], col, k, k, 1, 1, pad, pad, oh, ow)
                np.matmul(dych, col.T, out=dw if b0 == 0 else dwtmp)
                if b0:
                    np.add(dw, dwtmp, out=dw)
                np.matmul(w2d.T, dych, out=dcol)
                col2im(dcol, dx[b0:b1], k, k, 1, 1, pad, pad, oh, ow)

        return step

    import torch

    torch.set_num_threads(args.threads)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    tw = torch.from_numpy(wt.copy()).requires_grad_(True)
    tb = torch.from_numpy(bias.copy()).requires_grad_(True)
    tdy = torch.from_numpy(dy.copy())

    def torch_step() -> None:
        tx.grad = tw.grad = tb.grad = None
        out = torch.nn.functional.conv2d(tx, tw, tb, padding=pad)
        out.backward(tdy)

    t_torch = _best(torch_step, args.reps)
    print(f"numba={USE_NUMBA} threads={args.threads} batch={nb} conv {cin}->{cout} "
          f"{k}x{k} {h}x{w}")
    print(f"torch conv2d fwd+bwd: {t_torch * 1e3:8.2f} ms")
    for chunk in (4, 8, 16, nb):
        if nb % chunk:
            continue
        for keep in (False,) if chunk != nb else (False, True):
            t = _best(make_step(chunk, keep), args.reps)
            label = f"chunk={chunk:2d}" + (" keep col" if keep else "")
            print(f"ours {label:18s}: {t * 1e3:8.2f} ms   ratio {t / t_torch:5.2f}x")
    # correctness spot check against torch (last step's results)
    torch_step()
    err = max(float(np.abs(dx - tx.grad.numpy()).max()),
              float(np.abs(dw - tw.grad.numpy().reshape(dw.shape)).max()))
    print(f"max |grad - torch grad| = {err:.2e}")

    # per-kernel breakdown at chunk = batch
    n = nb * oh * ow
    col = np.empty((cin * k * k, n), np.float32)
    ych = np.empty((cout, n), np.float32)
    dcol = np.empty_like(col)
    parts = {
        "im2col": lambda: im2col(x, col, k, k, 1, 1, pad, pad, oh, ow),
        "col2im": lambda: col2im(dcol, dx, k, k, 1, 1, pad, pad, oh, ow),
        "chunk_to_nchw_bias": lambda: chunk_to_nchw_bias(ych, y.reshape(nb, cout, -1), bias),
        "nchw_to_chunk": lambda: nchw_to_chunk(dy.reshape(nb, cout, -1), ych),
        "bias_grad_nchw": lambda: bias_grad_nchw(dy.reshape(nb, cout, -1), db, False),
        "matmul W@col": lambda: np.matmul(w2d, col, out=ych),
        "matmul dY@col.T": lambda: np.matmul(ych, col.T, out=dw),
        "matmul W.T@dY": lambda: np.matmul(w2d.T, ych, out=dcol),
    }
    for name, fn in parts.items():
        print(f"  {name:20s} {_best(fn, args.reps) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
