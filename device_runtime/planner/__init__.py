"""Memory planner: sizes and half-open validity intervals in, offsets and pool size out.

Pure: it knows nothing of layers, reads no environment and does no I/O.
"""

from .check import check_plan, lower_bound
from .layout import DEFAULT_STRATEGY, STRATEGIES, Plan, align, plan_layout

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Plan",
    "align",
    "check_plan",
    "lower_bound",
    "plan_layout",
]
