"""The swapped sum's file I/O (device_runtime/accumulate.py). Random gradient blocks
(unaligned starts, so neighbouring blocks share a page of the file; sizes below and above
one I/O buffer), over several micro-batches and steps: the weights equal the resident
accumulation's bit for bit, and the I/O counters add up; a failed write is raised."""

from __future__ import annotations

import os

import numpy as np
import pytest

from device_runtime.accumulate import BUFFER_BYTES as CHUNK_BYTES
from device_runtime.accumulate import SwappedAccumulator
from device_runtime.optimizers import Accumulator, create_optimizer


def _blocks(rng, n):
    """Cut 0..n into random blocks (what fused layers hand the optimizer)."""
    cuts = sorted(set(rng.integers(1, n, size=rng.integers(1, 6)).tolist()))
    edges = [0, *cuts, n]
    return list(zip(edges[:-1], edges[1:]))


@pytest.mark.parametrize("seed", range(6))
def test_swapped_sum_of_random_blocks_equals_the_resident_sum_bit_for_bit(seed, tmp_path):
    rng = np.random.default_rng(seed)
    # sizes from a few floats to several chunks, so blocks span 1..many I/O chunks
    sizes = [int(s) for s in rng.integers(3, 3 * CHUNK_BYTES // 4, size=4)]
    params = [(f"p{i}", n) for i, n in enumerate(sizes)]
    k = int(rng.integers(2, 5))
    w0 = {key: rng.standard_normal(n).astype(np.float32) for key, n in params}
    runs = {}
    for kind in ("ram", "swapped"):
        inner = create_optimizer("sgd", lr=0.1, momentum=0.9)
        inner.init_state(params)
        acc = Accumulator(inner, params, k) if kind == "ram" else \
            SwappedAccumulator(inner, params, k, resident_bytes=4 * sizes[0] if seed % 2
                               else 0, swap_dir=str(tmp_path))
        w = {key: v.copy() for key, v in w0.items()}
        grads = np.random.default_rng(100 + seed)
        for _ in range(3):  # steps
            for micro in range(k):
                if kind == "swapped":
                    acc.micro = micro
                for key, n in params:
                    g = grads.standard_normal(n).astype(np.float32)
                    for a, b in _blocks(grads, n):
                        acc.update(key, w[key][a:b], g[a:b].copy(), a)
            acc.flush(w)
        runs[kind] = (w, acc)
    (wr, _), (ws, sw) = runs["ram"], runs["swapped"]
    for key, _ in params:
        assert np.array_equal(wr[key], ws[key]), key
    # every byte written was written in whole pages; what is read back after the first
    # micro-batch is at least each swapped parameter once per later micro-batch
    swapped = sum(4 * n for key, n in params if key in sw.file_offset)
    assert sw.bytes_written % 4096 == 0 and sw.bytes_written >= 3 * (k - 1) * swapped
    assert sw.bytes_read >= 3 * (k - 1) * swapped
    sw.close()


def test_a_failed_write_is_raised_not_lost(tmp_path):
    inner = create_optimizer("sgd", lr=0.1)
    params = [("a", 3 * CHUNK_BYTES // 4)]
    inner.init_state(params)
    acc = SwappedAccumulator(inner, params, 2, swap_dir=str(tmp_path))
    w = np.zeros(params[0][1], np.float32)
    good = acc.fd
    acc.fd = os.open(os.devnull, os.O_RDONLY)  # writes to it fail (EBADF)
    try:
        acc.micro = 0
        with pytest.raises(OSError):
            acc.update("a", w, np.ones_like(w))
    finally:
        os.close(acc.fd)
        acc.fd = good
        acc.close()
