"""The reference-BLAS note: found from a process's memory maps (Debian's layout)."""

from __future__ import annotations

from device_runtime.blas import reference_blas

REF = ("7f1c2a000000-7f1c2a020000 r-xp 00000000 08:01 131 "
       "/usr/lib/aarch64-linux-gnu/blas/libblas.so.3.11.0\n")
OPEN = ("7f1c2a000000-7f1c2a020000 r-xp 00000000 08:01 131 "
        "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3\n")


def test_reference_blas_is_recognised_and_openblas_is_not():
    assert reference_blas(REF) == "/usr/lib/aarch64-linux-gnu/blas/libblas.so.3.11.0"
    assert reference_blas(OPEN) is None
    assert reference_blas(REF + OPEN) is None  # OpenBLAS loaded: it serves the calls
    assert reference_blas("") is None
    # this machine's numpy (its pip wheel bundles OpenBLAS) gets no note
    assert reference_blas() is None
