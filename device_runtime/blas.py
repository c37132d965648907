"""Which BLAS numpy runs on: Debian's numpy links ``libblas.so.3``, which is the slow
reference BLAS unless OpenBLAS (``libopenblas0``) is installed; a resnet18 step is about
20x slower on the reference one, so the command line says so once.

It also says when ``OPENBLAS_CORETYPE`` holds OpenBLAS to AVX2 kernels (``Haswell``,
``Zen``) on a CPU with AVX-512, which OpenBLAS would use by itself (``SkylakeX``): some
machine images preset it to work around old OpenBLAS builds. Measured here (AMD EPYC,
family 26, OpenBLAS 0.3.31, 2 threads): the conv GEMMs of vgg16 ran at 212-258 GF/s with
the Haswell kernels and 273-425 with SkylakeX. The runtime never changes the variable
(OpenBLAS reads it once, as numpy loads, and the kernel family can move the last bits of
results): ``nnfleet bench speed`` names it in its header.
"""

from __future__ import annotations

import os
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


AVX2_CORES = ("haswell", "zen")  # OpenBLAS's AVX2 sgemm families on x86-64


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (``cpuinfo``: its text; read when not
    given); empty where there is none (not Linux, or not x86)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def held_back(core: str | None, preset: str | None, flags: set[str]) -> bool:
    """OpenBLAS runs AVX2 kernels (``core``) because ``OPENBLAS_CORETYPE`` (``preset``) says
    so, on a CPU whose ``flags`` have AVX-512."""
    return bool(preset) and (core or "").lower() in AVX2_CORES and "avx512f" in flags


def core_note(core: str | None = None) -> str | None:
    """One line for the user when OPENBLAS_CORETYPE holds OpenBLAS back (``core``: the
    kernel family in use; asked of OpenBLAS when not given)."""
    preset = os.environ.get("OPENBLAS_CORETYPE")
    if not preset:
        return None
    if core is None:
        from .threads import blas_core
        core = blas_core()
    if not held_back(core, preset, cpu_flags()):
        return None
    return (f"note: OPENBLAS_CORETYPE={preset} holds OpenBLAS to its {core} (AVX2) kernels "
            f"on this AVX-512 CPU: unset it for faster GEMMs (measured 1.2-1.7x on conv "
            f"GEMMs on an AMD EPYC; the last bits of results can change with the kernels)")


def note() -> str | None:
    """One line for the user when numpy runs on the reference BLAS."""
    path = reference_blas()
    if path is None:
        return None
    return (f"note: numpy uses the reference BLAS ({path}), about 20x slower than OpenBLAS: "
            f"install libopenblas0 (Debian, Raspberry Pi OS) or numpy's pip wheel")
