"""Where a training step's time goes: exclusive time per operation kind.

:func:`profile_steps` wraps every entry of an executor's program (a layer's forward,
calc-gradient, calc-derivative, the optimizer's apply, swap waits, ...) and, inside the
convolution and fully connected layers, the kernels they call (``np.matmul``, im2col,
col2im, the layout copies), with a timer that keeps *exclusive* times: an optimizer
update run from inside a fused calc-gradient counts as "optimizer", not as conv. What
no wrapper covers (the executor's loop, the layers' own Python between kernels) is
"python overhead": step time minus the sum of the timed kinds.

The wrappers cost about a microsecond per call; the report gives the unprofiled step
time next to the profiled one so the difference shows. Only the benchmark's worker
process is patched (a throw-away process).
"""

from __future__ import annotations

import time
import types
from collections import defaultdict
from typing import Any, Callable

import numpy as np

_PHASE = {"forward": "forward", "calc_gradient": "backward weights",
          "calc_derivative": "backward data", "replay": "recompute"}
_KIND = {"conv2d": "conv", "fully_connected": "matmul", "batch_normalization": "norm",
         "pooling2d": "pool", "activation": "activation"}


class Timer:
    """Exclusive nanoseconds per label: a nested call's time is taken from its caller."""

    def __init__(self) -> None:
        self.ns: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list[Any]] = []  # [label, start, child ns]

    def wrap(self, label: str | Callable[[], str], fn: Callable[..., Any]) -> Callable[..., Any]:
        stack, ns, calls = self._stack, self.ns, self.calls
        clock = time.perf_counter_ns

        def timed(*args: Any, **kwargs: Any) -> Any:
            name = label if isinstance(label, str) else label()
            frame: list[Any] = [name, clock(), 0]
            stack.append(frame)
            try:
                return fn(*args, **kwargs)
            finally:
                stack.pop()
                total = clock() - frame[1]
                ns[name] += total - frame[2]
                calls[name] += 1
                if stack:
                    stack[-1][2] += total
        return timed

    def current(self) -> str:
        """The label of the innermost running wrapper ("" outside all)."""
        return self._stack[-1][0] if self._stack else ""

    def reset(self) -> None:
        self.ns.clear()
        self.calls.clear()


def _entry_label(fn: Any) -> str:
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", "?")
    ltype = getattr(owner, "type", None)
    if isinstance(ltype, str):
        kind = _KIND.get(ltype, ltype)
        if kind == "activation":
            return "activation"
        return f"{kind} {_PHASE.get(name, name)}"
    cls = type(owner).__name__ if owner is not None else ""
    if name == "apply":
        return "optimizer"
    if name == "wait":
        return "swap wait"
    if name == "submit":
        return "swap submit"
    if name in ("_feed_input", "_feed_label"):
        return "input feed"
    if name == "fill":
        return "zero fill"
    return f"other {cls}.{name}".strip()


def _patch_kernels(timer: Timer) -> None:
    """Time the kernels conv and fully connected layers call, labelled by the caller."""
    from device_runtime.layers import conv as lconv
    from device_runtime.layers import core as lcore

    def sub(part: str) -> Callable[[], str]:
        def label() -> str:  # "conv forward" -> "conv forward: gemm"
            return f"{timer.current().split(':')[0]}: {part}"
        return label

    for mod in (lconv, lcore):
        proxy = types.ModuleType("numpy_timed")
        proxy.__dict__.update(np.__dict__)
        proxy.matmul = timer.wrap(sub("gemm"), np.matmul)  # type: ignore[attr-defined]
        proxy.copyto = timer.wrap(sub("copy"), np.copyto)  # type: ignore[attr-defined]
        proxy.add = timer.wrap(sub("add"), np.add)  # type: ignore[attr-defined]
        mod.np = proxy  # type: ignore[attr-defined]
    kmod = lconv.K
    ktimed = types.ModuleType("conv_kernels_timed")
    ktimed.__dict__.update(kmod.__dict__)
    for name in ("im2col", "col2im", "chunk_to_nchw", "chunk_to_nchw_bias", "nchw_to_chunk",
                 "bias_grad_nchw"):
        if hasattr(kmod, name):
            part = {"chunk_to_nchw": "layout", "chunk_to_nchw_bias": "layout+bias",
                    "nchw_to_chunk": "layout", "bias_grad_nchw": "bias grad"}.get(name, name)
            setattr(ktimed, name, timer.wrap(sub(part), getattr(kmod, name)))
    setattr(lconv, "K", ktimed)
    if hasattr(lconv, "add_col_bias"):
        setattr(lconv, "add_col_bias", timer.wrap(sub("bias"), lconv.add_col_bias))


def instrument(model: Any, timer: Timer) -> None:
    """Wrap the training executor's program entries, its optimizer and the kernels."""
    ex = model.train_executor
    opt = ex.optimizer
    if opt is not None:
        opt.apply = timer.wrap("optimizer", opt.apply)
    ex.program = [(timer.wrap(_entry_label(fn), fn), args) for fn, args in ex.program]
    _patch_kernels(timer)


def profile_steps(model: Any, run_step: Callable[[], None], steps: int) -> dict[str, Any]:
    """Run ``steps`` profiled steps; ms per step per label (median-free: mean of the steps,
    the labels of one step add up to its time) and the profiled step time."""
    timer = Timer()
    instrument(model, timer)
    run_step()  # the wrappers' own first calls
    timer.reset()
    t0 = time.perf_counter_ns()
    for _ in range(steps):
        run_step()
    total = (time.perf_counter_ns() - t0) / steps
    kinds = {k: v / steps / 1e6 for k, v in sorted(timer.ns.items(), key=lambda kv: -kv[1])}
    kinds["python overhead"] = max(0.0, total / 1e6 - sum(kinds.values()))
    return {"profiled_step_ms": total / 1e6, "kinds_ms": kinds,
            "calls": {k: v // steps for k, v in timer.calls.items()}}


def group(kinds: dict[str, float]) -> dict[str, float]:
    """Coarse groups of a profile: conv fwd / bwd data / bwd weights, matmul, norm, ..."""
    out: dict[str, float] = defaultdict(float)
    for k, v in kinds.items():
        head = k.split(":")[0]
        out[head] += v
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
