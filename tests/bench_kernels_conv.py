"""Benchmark: a VGG-like 64->64 3x3 conv layer (32x32, batch 32), ours vs PyTorch.

Run ``python tests/bench_kernels_conv.py [--threads 2] [--reps 10] [--tuned]`` from the
repository root. Times forward + backward (input, weight and bias gradients) through
the im2col kernels and ``np.matmul(..., out=)``, per chunk size, and prints the ratio
to ``torch.nn.functional.conv2d`` forward + backward on the same number of threads.
The backward pass recomputes im2col (the memory-lean choice: the column buffer is not
kept between passes); the ``keep col`` row reuses the forward's buffer instead.

Torch is timed in a child process, so neither side's idle thread pool spins on the
other's cores; rounds alternate the two and the best time of each is kept (a busy
neighbour spoils single timings, rarely all of them).

``--tuned`` sets three environment variables before numpy loads. They matter on a
2-core board, where an idle thread pool spins on the cores the other pool needs:
``OPENBLAS_THREAD_TIMEOUT=4`` (OpenBLAS workers sleep at once instead of spinning),
``OMP_WAIT_POLICY=PASSIVE`` (OpenMP workers likewise) and, when the CPU has AVX-512,
``OPENBLAS_CORETYPE=SkylakeX`` (OpenBLAS's AVX-512 kernels; this one overrides a preset
``OPENBLAS_CORETYPE=Haswell``). Measured 1.4x faster than the AVX2 ``Haswell`` kernels on
2026-11-22, but on 2026-12-03 the conv GEMMs took 0.80x the CPU time with ``Haswell``
(README, "Speed"): measure on the machine at hand before relying on either. The other
variables, if already set, are left alone.
Not collected by pytest (no ``test_`` names).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TUNING = ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY", "OPENBLAS_CORETYPE")
CIN, COUT, HW, K, PAD = 64, 64, 32, 3, 1  # the layer: 64->64, 3x3, 'same', 32x32


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


def _data(nb: int):  # type: ignore[no-untyped-def]
    """x, weight, bias, dy of the benchmark layer (fixed seed)."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((nb, CIN, HW, HW), dtype=np.float32)
    wt = rng.standard_normal((COUT, CIN, K, K), dtype=np.float32) * 0.05
    bias = rng.standard_normal(COUT, dtype=np.float32)
    dy = rng.standard_normal((nb, COUT, HW, HW), dtype=np.float32)
    return x, wt, bias, dy


def _torch_layer(threads: int, nb: int):  # type: ignore[no-untyped-def]
    """(step, tensors) running torch's conv2d forward + backward on the benchmark data."""
    import torch

    torch.set_num_threads(threads)
    x, wt, bias, dy = (torch.from_numpy(a) for a in _data(nb))
    tx, tw, tb = (t.requires_grad_(True) for t in (x, wt, bias))

    def step() -> None:
        tx.grad = tw.grad = tb.grad = None
        torch.nn.functional.conv2d(tx, tw, tb, padding=PAD).backward(dy)

    return step, (tx, tw, tb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tuned", action="store_true", help="set the thread-pool variables")
    ap.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    env = _set_env(args.threads, args.tuned)
    nb = args.batch
    if args.torch_only:  # child process: print torch's best time in seconds
        print(_best(_torch_layer(args.threads, nb)[0], args.reps))
        return

    import numpy as np

    from device_runtime.kernels._jit import PARALLEL, USE_NUMBA
    from device_runtime.kernels.conv import (
        bias_grad_nchw,
        chunk_to_nchw_bias,
        col2im,
        im2col,
        nchw_to_chunk,
    )

    x, wt, bias, dy = _data(nb)
    oh = ow = HW
    geom = (K, K, 1, 1, PAD, PAD, oh, ow)
    w2d = wt.reshape(COUT, CIN * K * K)
    y3 = np.empty((nb, COUT, oh * ow), np.float32)
    dy3 = dy.reshape(nb, COUT, oh * ow)
    dx, dw, db = np.empty_like(x), np.empty_like(w2d), np.empty(COUT, np.float32)

    def make_step(chunk: int, keep_col: bool):  # type: ignore[no-untyped-def]
        n = chunk * oh * ow
        col, dcol = np.empty((2, CIN * K * K, n), np.float32)
        ych, dych = np.empty((2, COUT, n), np.float32)
        dwtmp = np.empty_like(w2d)

        def step() -> None:
            for b0 in range(0, nb, chunk):
                b1 = b0 + chunk
                im2col(x[b0:b1], col, *geom)
                np.matmul(w2d, col, out=ych)
                chunk_to_nchw_bias(ych, y3[b0:b1], bias)
            bias_grad_nchw(dy3, db, False)
            for b0 in range(0, nb, chunk):
                b1 = b0 + chunk
                nchw_to_chunk(dy3[b0:b1], dych)
                if not keep_col:
                    im2col(x[b0:b1], col, *geom)
                np.matmul(dych, col.T, out=dw if b0 == 0 else dwtmp)
                if b0:
                    np.add(dw, dwtmp, out=dw)
                np.matmul(w2d.T, dych, out=dcol)
                col2im(dcol, dx[b0:b1], *geom)

        return step

    print(f"numba={USE_NUMBA} parallel={PARALLEL} (NNFLEET_NUMBA_PARALLEL) "
          f"threads={args.threads} batch={nb} conv {CIN}->{COUT} {K}x{K} {HW}x{HW}; {env}")
    child = [sys.executable, os.path.abspath(__file__), "--torch-only", "--threads",
             str(args.threads), "--reps", str(args.reps), "--batch", str(nb)]
    ours: dict[str, float] = {}
    t_torch = float("inf")
    for _ in range(args.rounds):
        out = subprocess.run(child, check=True, capture_output=True, text=True, env=os.environ)
        t_torch = min(t_torch, float(out.stdout.split()[-1]))
        for chunk in (1, 2, 4, 8, 16, nb):
            if nb % chunk == 0:
                for keep in (False, True) if chunk == nb else (False,):
                    label = f"chunk={chunk:2d}" + (" keep col" if keep else "")
                    t = _best(make_step(chunk, keep), args.reps)
                    ours[label] = min(ours.get(label, t), t)

    # per-kernel breakdown, one chunk of 4 samples (the column buffer stays in cache)
    n4 = min(4, nb)
    col, dcol = np.empty((2, CIN * K * K, n4 * oh * ow), np.float32)
    ych = np.empty((COUT, n4 * oh * ow), np.float32)
    parts = {
        "im2col": lambda: im2col(x[:n4], col, *geom),
        "col2im": lambda: col2im(dcol, dx[:n4], *geom),
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

    # spot check, after all timings (torch's pool would disturb them): gradients agree
    make_step(nb, True)()
    torch_step, (tx, tw, tb) = _torch_layer(args.threads, nb)
    torch_step()
    err = max(float(np.abs(dx - tx.grad.numpy()).max()),
              float(np.abs(dw - tw.grad.numpy().reshape(dw.shape)).max()),
              float(np.abs(db - tb.grad.numpy()).max()))
    print(f"max |grad - torch grad| = {err:.2e} (float32 sums over {nb * oh * ow} terms)")


if __name__ == "__main__":
    main()
