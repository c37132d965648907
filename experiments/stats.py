"""Statistics over repeated runs: Student's t distribution, confidence intervals and the
paired t-test, in plain Python (numpy and psutil are the only core dependencies).

Formulas (n runs, values x_1..x_n; sample standard deviation s with n - 1 in the
denominator; F the CDF of Student's t with n - 1 degrees of freedom):

- 95% confidence interval of the mean: ``mean ± t_{0.975, n-1} * s / sqrt(n)``.
- Paired t-test of a against b over the same runs: ``d_i = a_i - b_i``,
  ``t = mean(d) / (s_d / sqrt(n))``, two-sided ``p = 2 * (1 - F(|t|))``.

F comes from the regularized incomplete beta function,
``1 - F(t) = I_{v/(v+t^2)}(v/2, 1/2) / 2`` for t >= 0 (Abramowitz & Stegun 26.7.1),
evaluated by its continued fraction (A&S 26.5.8, Lentz's method); the quantile inverts F
by bisection. Checked against t-table values and the closed forms for 1 and 2 degrees of
freedom in tests/test_seeds_stats.py.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

_EPS = 1e-15
_TINY = 1e-300
_MAX_TERMS = 10_000


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (converges fast for x < (a + 1) / (a + b + 2))."""
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _TINY else _TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _TINY else _TINY
            h *= d * c
        if abs(d * c - 1.0) < _EPS:
            return h
    raise ArithmeticError(f"incomplete beta: no convergence for a={a}, b={b}, x={x}")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise ValueError(f"betainc needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}")
    return _betainc(a, b, x, 1.0 - x)


def _betainc(a: float, b: float, x: float, y: float) -> float:
    """I_x(a, b) given both x and y = 1 - x (each computed where it is exact enough: near
    x = 1, 1 - x in floating point has lost the digits that matter)."""
    if x <= 0.0 or y <= 0.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log(y))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, y) / b


def t_sf2(t: float, df: float) -> float:
    """Two-sided tail P(|T| >= |t|) of Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 0.0
    tt = t * t
    return _betainc(df / 2.0, 0.5, df / (df + tt), tt / (df + tt))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    half = t_sf2(t, df) / 2.0
    return 1.0 - half if t >= 0 else half


def t_ppf(p: float, df: float) -> float:
    """The quantile: the t with P(T <= t) = p (bisection on :func:`t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_ppf(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:  # bracket: F is increasing
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, hi):
            break
    return (lo + hi) / 2.0


def _mean_sd(values: Sequence[float]) -> tuple[int, float, float]:
    n = len(values)
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return n, mean, sd


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of ``values`` and its ``level`` confidence interval (Student t over the values:
    mean ± t_{(1+level)/2, n-1} * s / sqrt(n)); with one value the interval is None."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("a confidence interval needs at least one value")
    n, mean, sd = _mean_sd(vals)
    out: dict[str, Any] = {"n": n, "mean": mean, "std": sd, "values": vals,
                           "level": level, "ci": None, "half_width": None}
    if n > 1:
        half = t_ppf((1.0 + level) / 2.0, n - 1) * sd / math.sqrt(n)
        out.update(ci=[mean - half, mean + half], half_width=half)
    return out


def paired_t(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired t-test of ``a`` against ``b`` (same runs, same order): mean difference, t,
    degrees of freedom and the two-sided p-value; with fewer than two pairs t and p are
    None ("n/a"). Identical differences give t = ±inf and p = 0 (p = 1 when all are 0)."""
    if len(a) != len(b):
        raise ValueError(f"a paired test needs as many values on each side ({len(a)} != {len(b)})")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    if not d:
        raise ValueError("a paired test needs at least one pair")
    n, mean, sd = _mean_sd(d)
    out: dict[str, Any] = {"n": n, "mean_diff": mean, "std_diff": sd, "df": n - 1,
                           "t": None, "p_value": None}
    if n < 2:
        return out
    if sd == 0.0:
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    else:
        t = mean / (sd / math.sqrt(n))
    out.update(t=t, p_value=1.0 if t == 0.0 else t_sf2(t, n - 1))
    return out
