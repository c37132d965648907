"""Which BLAS numpy runs on: Debian's numpy links ``libblas.so.3``, which is the slow
reference BLAS unless OpenBLAS (``libopenblas0``) is installed; a resnet18 step is about
20x slower on the reference one, so the command line says so once."""

from __future__ import annotations

import re

_REFERENCE = re.compile(r"/blas/libblas\.so")  # Debian's alternative for the reference BLAS


def reference_blas(maps: str | None = None) -> str | None:
    """The path of the reference BLAS if this process has it mapped (``maps``: the text of
    /proc/self/maps; read when not given), else None (OpenBLAS, MKL, or not Linux)."""
    if maps is None:
        try:
            with open("/proc/self/maps") as f:
                maps = f.read()
        except OSError:
            return None
    low = maps.lower()
    if "openblas" in low or "mkl" in low:
        return None
    for line in maps.splitlines():
        path = line.split()[-1] if line.split() else ""
        if _REFERENCE.search(path):
            return path
    return None


def note() -> str | None:
    """One line for the user when numpy runs on the reference BLAS."""
    path = reference_blas()
    if path is None:
        return None
    return (f"note: numpy uses the reference BLAS ({path}), about 20x slower than OpenBLAS: "
            f"install libopenblas0 (Debian, Raspberry Pi OS) or numpy's pip wheel")
