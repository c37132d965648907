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


def test_cpu_flags_and_the_avx2_preset_note():
    from device_runtime.blas import cpu_flags, held_back

    info = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx2 avx512f "
            "avx512bw\nbogomips\t: 7000\n")
    flags = cpu_flags(info)
    assert {"avx2", "avx512f", "avx512bw"} <= flags and "bogomips" not in flags
    assert cpu_flags("no flags line") == set()
    # held back: an AVX2 family, set by the variable, on an AVX-512 CPU; nothing else
    assert held_back("Haswell", "Haswell", flags)
    assert held_back("Zen", "zen", flags)
    assert not held_back("SkylakeX", "SkylakeX", flags)  # the preset is the best one
    assert not held_back("Haswell", None, flags)  # OpenBLAS chose it by itself
    assert not held_back("Haswell", "Haswell", {"avx2", "fma"})  # no AVX-512 to use
    assert not held_back(None, "Haswell", flags)  # not OpenBLAS


def test_core_note_names_the_variable_only_when_it_holds_openblas_back(monkeypatch):
    from device_runtime import blas

    monkeypatch.setattr(blas, "cpu_flags", lambda: {"avx2", "avx512f"})
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    note = blas.core_note("Haswell")
    assert note is not None and "OPENBLAS_CORETYPE=Haswell" in note and "\n" not in note
    assert blas.core_note("SkylakeX") is None
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert blas.core_note("Haswell") is None
