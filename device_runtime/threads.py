"""The step's threads, chosen on purpose: BLAS, numba and the swap thread.

:func:`configure` (called once when the kernels load, again whenever asked) gives BLAS
as many threads as this process has cores (``os.sched_getaffinity``: a cgroup's or
taskset's CPU set, not the machine's count), or ``NNFLEET_THREADS`` when set (``1`` is
what a busy board wants). The swap I/O thread is one thread, mostly blocked in
``pread``/``pwrite``; it is not counted. Numba's parallel loops (off unless
``NNFLEET_NUMBA_PARALLEL``) get the same count.

On a loaded machine more BLAS threads are slower, not faster: OpenBLAS splits every GEMM
between its threads and waits for the slowest, and a descheduled thread stalls the call
for a time slice (measured here at load ~20-30: one conv layer's GEMMs 8-12x slower with
2 threads than with 1). ``NNFLEET_THREADS=1`` fixes one thread; ``NNFLEET_THREADS=auto``
adds a :class:`Tuner` before each training step: training steps repeat the same work,
so it times a few steps with each candidate count (all cores, then 1), keeps the faster,
and probes again every :data:`HOLD` steps (doubling while the choice holds), as the load
changes. Auto is not the default because the count can move the last bits of a result
(OpenBLAS's edge tiles of a split GEMM round differently: measured, mlp's weights after
20 steps differ between 1 and 2 threads; the conv models' did not), and a run must
compute the same numbers whatever the load; a fixed count (the default) keeps every run
on a machine bit-identical.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

from . import switches

_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
            "openblas_set_num_threads64_", "scipy_openblas_set_num_threads")
_GETTERS = ("openblas_get_num_threads", "scipy_openblas_get_num_threads64_",
            "openblas_get_num_threads64_", "scipy_openblas_get_num_threads")
_CORES = ("openblas_get_corename", "scipy_openblas_get_corename64_",
          "openblas_get_corename64_", "scipy_openblas_get_corename")
_USER_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
_state: dict[str, Any] = {}


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def wanted_threads() -> tuple[int, str]:
    """(threads for BLAS and numba, why): ``NNFLEET_THREADS``, the user's BLAS variables,
    or the available cores (why = "auto" when the tuner is asked for)."""
    raw = switches.text("NNFLEET_THREADS").strip().lower()
    if raw == "auto":
        return available_cores(), "auto"
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if n < 0:
        raise ValueError(f"NNFLEET_THREADS={raw!r}: must be a count >= 0 (0 = one per "
                         f"available core) or auto")
    if n:
        return n, "NNFLEET_THREADS"
    for var in _USER_VARS:
        raw = os.environ.get(var, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw), var
    return available_cores(), "cores"


def _openblas() -> ctypes.CDLL | None:
    """The OpenBLAS library numpy loaded, if any (from /proc/self/maps)."""
    if "lib" in _state:
        return _state["lib"]
    lib = None
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower()
                            and ln.split()[-1].startswith("/")})
        for path in paths:
            cand = ctypes.CDLL(path)
            if any(hasattr(cand, s) for s in _SETTERS):
                lib = cand
                break
    except OSError:
        lib = None
    _state["lib"] = lib
    return lib


def _call(lib: ctypes.CDLL, names: tuple[str, ...], *args: int) -> Any:
    for name in names:
        fn = getattr(lib, name, None)
        if fn is not None:
            if names is _CORES:
                fn.restype = ctypes.c_char_p
            return fn(*args)
    return None


def _set_blas(n: int) -> str:
    """Set BLAS threads to ``n``; the means used ("threadpoolctl", "ctypes" or "none")."""
    import importlib

    try:
        tpc: Any = importlib.import_module("threadpoolctl")
    except ImportError:
        tpc = None
    if tpc is not None:
        tpc.threadpool_limits(limits=n, user_api="blas")
        return "threadpoolctl"
    lib = _openblas()
    if lib is None:
        return "none"
    _call(lib, _SETTERS, n)
    return "ctypes"


def blas_threads() -> int | None:
    """The BLAS thread count now in force (None when it cannot be read)."""
    lib = _openblas()
    if lib is None:
        return None
    n = _call(lib, _GETTERS)
    return int(n) if n is not None else None


def blas_core() -> str | None:
    """OpenBLAS's kernel family (``SkylakeX``, ``Haswell``, ...), None if not OpenBLAS."""
    lib = _openblas()
    if lib is None:
        return None
    name = _call(lib, _CORES)
    return name.decode() if isinstance(name, bytes) else None


def _set_numba(n: int) -> bool:
    """Numba's parallel loops get ``n`` threads, only when they are in use (setting the
    count starts numba's pool; a serial build never needs it)."""
    from .kernels import _jit

    if not (_jit.USE_NUMBA and _jit.PARALLEL):
        return False
    import numba

    numba.set_num_threads(min(n, getattr(numba.config, "NUMBA_NUM_THREADS")))
    return True


WARM = 2  # first steps left out (page faults, JIT, BLAS buffers)
PROBE = 2  # steps timed per candidate
HOLD, MAX_HOLD = 40, 640  # steps on the chosen count before probing again (doubled, up to
# MAX_HOLD, each time a probe confirms the choice: a steady machine is probed rarely)


class Tuner:
    """Before-step hook: picks the faster of ``candidates`` BLAS thread counts by timing
    steps (the time from one step's start to the next's), and re-probes every HOLD steps.

    ``clock`` and ``setter`` are injectable so the state machine can be tested alone."""

    def __init__(self, candidates: list[int], setter: Any = None, clock: Any = None) -> None:
        import time

        self.candidates = candidates
        self.setter = setter or _set_blas
        self.clock = clock or time.perf_counter
        self.current = candidates[0]
        self.samples: dict[int, list[float]] = {c: [] for c in candidates}
        self.queue: list[int] = []  # counts still to probe
        self.skip = WARM
        self.hold = 0
        self.hold_len = HOLD
        self.last: float | None = None
        self.choices: list[int] = []  # history of decisions, for describe()
        self.setter(self.current)
        self._start_probe()

    def _start_probe(self) -> None:
        # the current count first: no switch, so its samples are steady-state ones
        self.queue = [self.current] + [c for c in self.candidates if c != self.current]
        self.samples = {c: [] for c in self.candidates}

    def _switch(self, n: int) -> None:
        if n != self.current:
            self.setter(n)
        self.current = n

    def __call__(self) -> None:
        now = self.clock()
        dt, self.last = (None if self.last is None else now - self.last), now
        if dt is None:
            return
        if self.skip:
            self.skip -= 1
            return
        if self.queue:
            done = self.samples[self.current]
            done.append(dt)  # the min of PROBE samples: a gap (evaluation) spoils one at most
            if len(done) >= PROBE:
                self.queue.pop(0)
                if self.queue:
                    self._switch(self.queue[0])
                else:
                    best = min(self.candidates, key=lambda c: min(self.samples[c]))
                    same = bool(self.choices) and self.choices[-1] == best
                    self.hold_len = min(MAX_HOLD, 2 * self.hold_len) if same else HOLD
                    self.choices.append(best)
                    self._switch(best)
                    self.hold = self.hold_len
            return
        self.hold -= 1
        if self.hold <= 0:
            self._start_probe()


def configure(force: bool = False) -> dict[str, Any]:
    """Set the threads (once per process unless ``force``); returns :func:`describe`.
    With ``NNFLEET_THREADS=auto`` and more than one core, a :class:`Tuner` joins the
    process's before-step hooks."""
    if force or "configured" not in _state:
        n, why = wanted_threads()
        _state["configured"] = {"threads": n, "why": why, "means": _set_blas(n),
                                "numba_set": _set_numba(n)}
        from . import hooks

        old = _state.pop("tuner", None)
        if old is not None and old in hooks._BEFORE_STEP:
            hooks._BEFORE_STEP.remove(old)
        if why == "auto" and n > 1 and _state["configured"]["means"] != "none":
            tuner = Tuner([n, 1])
            _state["tuner"] = tuner
            hooks._BEFORE_STEP.append(tuner)  # process-wide, as the profilers' hooks are
    return describe()


def describe() -> dict[str, Any]:
    """What the step runs with: cores, BLAS threads and kernel, numba threads, swap."""
    from .kernels import _jit

    conf = _state.get("configured", {})
    numba_threads = 1
    if _jit.USE_NUMBA and _jit.PARALLEL:
        import numba
        numba_threads = numba.get_num_threads()
    return {"cores": available_cores(), "blas_threads": blas_threads() or conf.get("threads"),
            "blas": blas_core(), "set_by": conf.get("why"), "means": conf.get("means"),
            "numba_threads": numba_threads, "swap_threads": 1,
            "tuner": "tuner" in _state,
            "tuned": [] if "tuner" not in _state else list(_state["tuner"].choices),
            "env": {k: v for k, v in os.environ.items()
                    if k.startswith(("OPENBLAS_", "OMP_", "MKL_", "NUMBA_NUM", "NNFLEET_THR"))}}
