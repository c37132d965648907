"""RAM caps: warm-up and baseline, the cap fit (planner, then swap, then micro-batches),
and the guard that stops a run that crosses its cap.

- :mod:`.warmup`: pay JIT and BLAS one-time costs before the baseline is measured
- :mod:`.fit`: measure the baseline and choose the plan that fits (:class:`Decision`)
- :mod:`.guard`: the RSS sampler, :class:`RamGuard`, and :func:`guard_training`
"""

from .fit import MARGIN_BYTES, Decision, adopt, fit_model, fit_step, fit_to_cap, take_plan
from .guard import RamGuard, guard_training
from .warmup import warm_kernels, warm_up_model

__all__ = ["MARGIN_BYTES", "Decision", "RamGuard", "adopt", "fit_model", "fit_step", "fit_to_cap",
           "guard_training", "take_plan", "warm_kernels", "warm_up_model"]
