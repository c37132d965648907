"""Benchmark: a VGG-like 64->64 3x3 conv layer (32x32, batch 32), ours vs PyTorch.

Run ``python tests/bench_kernels_conv.py [--threads 2] [--reps 10] [--tuned]`` from the
repository root. Times forward + backward (input, weight and bias gradients) through
the im2col kernels and ``np.matmul(..., out=)``, per chunk size, and prints the ratio
to ``torch.nn.functional.conv2d`` forward + backward on the same number of threads.
The backward pass recomputes im2col (the memory-lean choice: the column buffer is not
kept between passes); the ``keep col`` row reuses the forward's buffer instead. Ours is
timed in rounds interleaved with torch's, and the best of each is kept.

``--tuned`` sets three environment variables before numpy loads. They matter on a
2-core board, where an idle thread pool spins on the cores the other pool needs:
``OPENBLAS_THREAD_TIMEOUT=4`` (OpenBLAS workers sleep at once instead of spinning),
``OMP_WAIT_POLICY=PASSIVE`` (numba's OpenMP workers likewise) and, when the CPU has
AVX-512, ``OPENBLAS_CORETYPE=SkylakeX`` (OpenBLAS 0.3.31 falls back to its AVX2
Haswell kernels on AMD Zen 4/5; this one overrides a preset ``OPENBLAS_CORETYPE``).
The other variables, if already set, are left alone.
Not collected by pytest (no ``test_`` names).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TUNING = ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "OPENBLAS_CORETYPE")


def _best(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    """Best of ``reps`` timings after one warm-up call (JIT compile, BLAS buffers)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _set_env(threads: int, tuned: bool) -> str:
    """Thread settings; must run before numpy, numba and torch start their pools."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        os.environ[var] = str(threads)
    if tuned:
        os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        with open("/proc/cpuinfo") as f:
            if " avx512f" in f.read():
                os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    env = " ".join(f"{v}={os.environ[v]}" for v in TUNING if v in os.environ)
    return env or "default environment"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tuned", action="store_true", help="set the thread-pool variables")
    args = ap.parse_args()
    env = _set_env(args.threads, args.tuned)

    import numpy as np

    from device_runtime.kernels._jit import PARALLEL, USE_NUMBA
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
    y3 = y.reshape(nb, cout, oh * ow)
    dy3 = dy.reshape(nb, cout, oh * ow)

    def make_step(chunk: int, keep_col: bool):  # type: ignore[no-untyped-def]
        n = chunk * oh * ow
        col = np.empty((cin * k * k, n), np.float32)
        ych = np.empty((cout, n), np.float32)
        dych = np.empty((cout, n), np.float32)
        dcol = np.empty((cin * k * k, n), np.float32)
        dwtmp = np.empty_like(w2d)

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

    print(f"numba={USE_NUMBA} parallel={PARALLEL} (NNFLEET_NUMBA_PARALLEL) "
          f"threads={args.threads} batch={nb} conv {cin}->{cout} "
          f"{k}x{k} {h}x{w}; {env}")

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

    # rounds interleave ours and torch, best of each: a busy neighbour or a thread pool
    # still spinning from the other side spoils single timings, not all of them
    ours: dict[str, float] = {}
    t_torch = float("inf")
    for _ in range(args.rounds):
        t_torch = min(t_torch, _best(torch_step, args.reps))
        for chunk in (1, 2, 4, 8, 16, nb):
            if nb % chunk == 0:
                for keep in (False, True) if chunk == nb else (False,):
                    label = f"chunk={chunk:2d}" + (" keep col" if keep else "")
                    t = _best(make_step(chunk, keep), args.reps)
                    ours[label] = min(ours.get(label, t), t)

    # per-kernel breakdown, one chunk of 4 samples (the column buffer stays in cache)
    n4 = min(4, nb)
    col = np.empty((cin * k * k, n4 * oh * ow), np.float32)
    ych = np.empty((cout, n4 * oh * ow), np.float32)
    dcol = np.empty_like(col)
    parts = {
        "im2col": lambda: im2col(x[:n4], col, k, k, 1, 1, pad, pad, oh, ow),
        "col2im": lambda: col2im(dcol, dx[:n4], k, k, 1, 1, pad, pad, oh, ow),
        "chunk_to_nchw_bias": lambda: chunk_to_nchw_bias(ych, y3[:n4], bias),
        "nchw_to_chunk": lambda: nchw_to_chunk(dy3[:n4], ych),
        "bias_grad_nchw": lambda: bias_grad_nchw(dy3[:n4], db, False),
        "matmul W@col": lambda: np.matmul(w2d, col, out=ych),
        "matmul dY@col.T": lambda: np.matmul(ych, col.T, out=dw),
        "matmul W.T@dY": lambda: np.matmul(w2d.T, ych, out=dcol),
    }
    part_times = {name: _best(fn, args.reps) * nb / n4 for name, fn in parts.items()}

    print(f"torch conv2d fwd+bwd: {t_torch * 1e3:8.2f} ms")
    for label, t in ours.items():
        print(f"ours {label:18s}: {t * 1e3:8.2f} ms   ratio {t / t_torch:5.2f}x")
    print(f"per kernel, scaled to the batch (chunks of {n4}):")
    for name, t in part_times.items():
        print(f"  {name:20s} {t * 1e3:8.2f} ms")

    # spot check: the last step (chunk = batch, keep col) against torch's gradients
    make_step(nb, True)()
    torch_step()
    err = max(float(np.abs(dx - tx.grad.numpy()).max()),
              float(np.abs(dw - tw.grad.numpy().reshape(dw.shape)).max()),
              float(np.abs(db - tb.grad.numpy()).max()))
    print(f"max |grad - torch grad| = {err:.2e} (float32 sums over {nb * oh * ow} terms)")


if __name__ == "__main__":
    main()
