"""Student's t, the confidence interval and the paired t-test (experiments/stats.py), against
printed t-table values, closed forms and examples worked out by hand."""

from __future__ import annotations

import math
import random

import pytest

from experiments.stats import betainc, mean_ci, paired_t, t_cdf, t_ppf, t_sf2

# two-sided 95% (p = 0.975) critical values, as printed in t tables (3 decimals)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980}
# other columns of the same tables: (p, df) -> t
OTHER = {(0.95, 1): 6.314, (0.95, 5): 2.015, (0.95, 10): 1.812, (0.995, 2): 9.925,
         (0.995, 5): 4.032, (0.995, 30): 2.750, (0.9, 3): 1.638, (0.999, 10): 4.144}


@pytest.mark.parametrize("df, want", sorted(T975.items()))
def test_the_975_quantile_matches_the_t_table(df, want):
    assert t_ppf(0.975, df) == pytest.approx(want, abs=5e-4)
    assert t_ppf(0.025, df) == pytest.approx(-want, abs=5e-4)  # symmetric


@pytest.mark.parametrize("p_df, want", sorted(OTHER.items()))
def test_other_quantiles_match_the_t_table(p_df, want):
    assert t_ppf(*p_df) == pytest.approx(want, abs=5e-4)


def _cdf1(t: float) -> float:  # Cauchy
    return 0.5 + math.atan(t) / math.pi


def _cdf2(t: float) -> float:
    return 0.5 + t / (2 * math.sqrt(2 + t * t))


def _cdf3(t: float) -> float:
    u = t / math.sqrt(3)
    return 0.5 + (u / (1 + u * u) + math.atan(u)) / math.pi


def test_the_cdf_matches_the_closed_forms_for_1_2_and_3_degrees_of_freedom():
    rng = random.Random(0)
    ts = [0.0, 1e-6, 0.5, -0.5, 1.0, 3.0, -7.5, 40.0, 1e3] + \
        [rng.uniform(-30, 30) for _ in range(200)]
    for t in ts:
        for df, exact in ((1, _cdf1), (2, _cdf2), (3, _cdf3)):
            assert t_cdf(t, df) == pytest.approx(exact(t), abs=1e-12), (t, df)


def test_many_degrees_of_freedom_tend_to_the_normal():
    for z in (0.5, 1.0, 1.959963984540054, 3.0):
        normal = 0.5 * (1 + math.erf(z / math.sqrt(2)))
        assert t_cdf(z, 1e7) == pytest.approx(normal, abs=1e-6)
    assert t_ppf(0.975, 1e7) == pytest.approx(1.959964, abs=1e-5)


def test_the_quantile_inverts_the_cdf_over_random_cases():
    rng = random.Random(1)
    for _ in range(300):
        df = rng.choice([rng.randint(1, 50), rng.uniform(0.3, 200)])
        p = rng.uniform(1e-4, 1 - 1e-4)
        t = t_ppf(p, df)
        assert t_cdf(t, df) == pytest.approx(p, abs=1e-10), (p, df)
        assert t_sf2(t, df) == pytest.approx(2 * min(p, 1 - p), abs=1e-10)


def test_the_incomplete_beta_function_on_known_cases():
    rng = random.Random(2)
    for _ in range(200):
        a, b, x = rng.uniform(0.1, 30), rng.uniform(0.1, 30), rng.random()
        assert betainc(a, b, x) == pytest.approx(1 - betainc(b, a, 1 - x), abs=1e-11)
        assert betainc(a, 1.0, x) == pytest.approx(x ** a, abs=1e-11)  # I_x(a, 1) = x^a
        assert betainc(1.0, b, x) == pytest.approx(1 - (1 - x) ** b, abs=1e-11)
    assert betainc(2, 3, 0.0) == 0.0 and betainc(2, 3, 1.0) == 1.0
    for bad in ((0, 1, 0.5), (1, -1, 0.5), (1, 1, 1.5)):
        with pytest.raises(ValueError):
            betainc(*bad)


def test_a_confidence_interval_worked_out_by_hand():
    # Prepare: 0.70, 0.74, 0.78: mean 0.74, s = 0.04, n = 3, t_{0.975,2} = 4.303 (table)
    # Execute
    r = mean_ci([0.70, 0.74, 0.78])
    # Assert: half width 4.303 * 0.04 / sqrt(3) = 0.09937
    assert r["n"] == 3 and r["mean"] == pytest.approx(0.74) and r["std"] == pytest.approx(0.04)
    assert r["half_width"] == pytest.approx(4.303 * 0.04 / math.sqrt(3), abs=1e-5)
    assert r["ci"] == pytest.approx([0.74 - 0.09937, 0.74 + 0.09937], abs=1e-5)
    assert r["values"] == [0.70, 0.74, 0.78]


def test_one_value_has_no_interval_and_no_test():
    r = mean_ci([0.5])
    assert r["mean"] == 0.5 and r["ci"] is None and r["half_width"] is None
    p = paired_t([0.6], [0.5])
    assert p["n"] == 1 and p["mean_diff"] == pytest.approx(0.1)
    assert p["t"] is None and p["p_value"] is None
    with pytest.raises(ValueError):
        mean_ci([])
    with pytest.raises(ValueError):
        paired_t([0.1, 0.2], [0.1])


def test_a_paired_t_test_worked_out_by_hand():
    # Prepare: d = 0.05, 0.02, 0.04: mean 0.036667, s_d = 0.015275, t = 4.1576 on 2 df
    a, b = [0.80, 0.82, 0.78], [0.75, 0.80, 0.74]
    # Execute
    r = paired_t(a, b)
    # Assert: two-sided p on 2 df in closed form, 1 - t / sqrt(2 + t^2)
    t = (0.11 / 3) / (math.sqrt(((0.05 - 0.11 / 3) ** 2 + (0.02 - 0.11 / 3) ** 2
                                 + (0.04 - 0.11 / 3) ** 2) / 2) / math.sqrt(3))
    assert r["t"] == pytest.approx(t) == pytest.approx(4.1576, abs=1e-4)
    assert r["df"] == 2
    assert r["p_value"] == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)
    assert r["p_value"] == pytest.approx(0.0533, abs=1e-4)
    # the other way round: the same p, t of the other sign
    back = paired_t(b, a)
    assert back["t"] == pytest.approx(-r["t"]) and back["p_value"] == pytest.approx(r["p_value"])


def test_a_paired_test_with_two_seeds_follows_the_cauchy_distribution():
    r = paired_t([0.61, 0.72], [0.50, 0.70])  # d = 0.11, 0.02
    t = 0.065 / (math.sqrt(2 * 0.045 ** 2) / math.sqrt(2))
    assert r["t"] == pytest.approx(t)
    assert r["p_value"] == pytest.approx(1 - 2 * math.atan(t) / math.pi, abs=1e-12)


def test_constant_differences():
    same = paired_t([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["t"] == 0.0 and same["p_value"] == 1.0
    shifted = paired_t([0.6, 0.7, 0.8], [0.5, 0.6, 0.7])
    assert shifted["mean_diff"] == pytest.approx(0.1)
    # float rounding may leave a tiny spread: t is huge or infinite, p tiny or 0
    assert abs(shifted["t"]) > 1e6 and shifted["p_value"] < 1e-6


def test_against_scipy_where_it_is_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    for _ in range(100):
        n = rng.randint(2, 12)
        a = [rng.gauss(0.7, 0.05) for _ in range(n)]
        b = [x - rng.gauss(0.02, 0.03) for x in a]
        ref = stats.ttest_rel(a, b)
        r = paired_t(a, b)
        assert r["t"] == pytest.approx(float(ref.statistic), rel=1e-9)
        assert r["p_value"] == pytest.approx(float(ref.pvalue), rel=1e-8, abs=1e-14)
        lo, hi = stats.t.interval(0.95, n - 1, loc=sum(a) / n, scale=stats.sem(a))
        assert mean_ci(a)["ci"] == pytest.approx([lo, hi], rel=1e-9)
