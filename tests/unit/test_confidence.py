"""The statistics of repeats (orchestrator/confidence.py) against scipy, computed here in
the test, and against printed t tables: the interval, CV, olympic mean and Welch's t-test."""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats as scipy_stats

from orchestrator.confidence import (
    interval,
    interval_from_sums,
    interval_of,
    olympic,
    t_quantile,
    t_two_sided_p,
    welch,
)

SAMPLES = [
    [512.3, 498.1, 505.7, 520.4, 509.9],
    [101.0, 99.0],
    [3.0, 3.1, 2.9, 3.05, 2.95, 3.2, 2.8, 3.0, 3.1, 2.9],
    [0.371, 0.372, 0.369],
]


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 29, 30, 120, 1000, 2.5, 7.31])
def test_t_quantile_equals_scipy(df: float) -> None:
    for probability in (0.9, 0.95, 0.975, 0.995):
        assert t_quantile(probability, df) == pytest.approx(
            scipy_stats.t.ppf(probability, df), rel=1e-9
        )


def test_t_quantile_equals_the_printed_table() -> None:
    """Student's t table (two-sided 95 %), e.g. any statistics textbook's appendix."""
    for df, printed in ((1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)):
        assert round(t_quantile(0.975, df), 3) == printed


def test_t_tail_equals_scipy() -> None:
    for t, df in ((0.5, 3), (2.0, 9), (4.3, 8.99), (10.0, 2), (0.0, 5)):
        assert t_two_sided_p(t, df) == pytest.approx(2 * scipy_stats.t.sf(abs(t), df), rel=1e-9)


@pytest.mark.parametrize("sample", SAMPLES)
def test_interval_equals_scipy(sample: list[float]) -> None:
    found = interval_of(sample)
    assert found is not None
    n = len(sample)
    low, high = scipy_stats.t.interval(
        0.95, n - 1, loc=statistics.fmean(sample), scale=scipy_stats.sem(sample)
    )
    assert found.n == n
    assert found.low == pytest.approx(low, rel=1e-10)
    assert found.high == pytest.approx(high, rel=1e-10)
    assert found.cv == pytest.approx(scipy_stats.variation(sample, ddof=1), rel=1e-10)
    assert found.half_width_pct == pytest.approx(100 * (high - low) / 2 / found.mean, rel=1e-10)


def test_two_values_use_t_with_one_degree_of_freedom() -> None:
    found = interval_of([10.0, 12.0])
    assert found is not None
    # sd = sqrt(2), sem = 1: the half-width is t(0.975, 1) itself
    assert found.half_width == pytest.approx(12.7062047361747, rel=1e-10)
    assert (found.low, found.high) == pytest.approx((11 - 12.7062047361747, 11 + 12.7062047361747))


def test_one_value_has_no_interval() -> None:
    found = interval_of([498.0])
    assert found is not None
    assert (found.n, found.mean, found.sd, found.half_width) == (1, 498.0, None, None)
    assert found.low is None and found.cv is None and found.half_width_pct is None
    assert interval_of([]) is None and interval_of([None]) is None


def test_identical_values_have_a_zero_width_interval() -> None:
    found = interval_of([250.0, 250.0, 250.0])
    assert found is not None
    assert (found.sd, found.half_width, found.cv, found.low, found.high) == (
        0.0,
        0.0,
        0.0,
        250.0,
        250.0,
    )


def test_a_failed_run_in_the_middle_is_not_a_sample() -> None:
    """A failed run has no p_core (None) or NaN: n counts the runs that measured."""
    with_failure = interval_of([500.0, None, 510.0, float("nan"), 505.0])
    assert with_failure == interval_of([500.0, 510.0, 505.0])
    assert with_failure is not None and with_failure.n == 3


@pytest.mark.parametrize("sample", SAMPLES)
def test_interval_from_sums_equals_interval_from_values(sample: list[float]) -> None:
    """What a summary table (count, sum, sum of squares) yields is the same interval."""
    from_sums = interval_from_sums(len(sample), sum(sample), sum(v * v for v in sample))
    from_values = interval_of(sample)
    assert from_sums is not None and from_values is not None
    assert from_sums.mean == pytest.approx(from_values.mean, rel=1e-12)
    assert from_sums.half_width == pytest.approx(from_values.half_width, rel=1e-6)
    assert interval(0, 0.0, None) is None
    assert interval_from_sums(1, 5.0, 25.0) == interval(1, 5.0, None)


def test_olympic_drops_the_fastest_and_the_slowest() -> None:
    found = olympic([38.6, 39.0, 73.4, 38.9, 38.2])  # MLPerf v3.0: one run took twice as long
    assert found is not None
    assert found.mean == pytest.approx((38.6 + 39.0 + 38.9) / 3)
    assert (found.dropped, found.n) == (2, 3)
    two = olympic([10.0, None, 20.0])  # below three values nothing is dropped
    assert two is not None and (two.mean, two.dropped, two.n) == (15.0, 0, 2)
    assert olympic([None]) is None


@pytest.mark.parametrize(
    "a,b",
    [
        (SAMPLES[0], [497.0, 490.2, 501.3, 488.8, 495.5, 492.0]),
        ([100.0, 102.0, 98.0], [100.5, 101.5, 99.0, 100.0]),
        ([10.0, 12.0], [30.0, 31.0]),
    ],
)
def test_welch_equals_scipy(a: list[float], b: list[float]) -> None:
    found = welch(interval_of(a), interval_of(b))
    expected = scipy_stats.ttest_ind(b, a, equal_var=False)
    assert found is not None
    assert found.t == pytest.approx(expected.statistic, rel=1e-10)
    assert found.p == pytest.approx(expected.pvalue, rel=1e-8)
    assert found.df == pytest.approx(expected.df, rel=1e-10)
    assert found.significant == (expected.pvalue < 0.05)


def test_welch_needs_two_repeats_per_side() -> None:
    assert welch(interval_of([500.0]), interval_of([490.0, 491.0])) is None
    assert welch(None, interval_of([490.0, 491.0])) is None


def test_welch_without_spread_on_both_sides() -> None:
    moved = welch(interval_of([5.0, 5.0]), interval_of([4.0, 4.0, 4.0]))
    assert moved is not None and moved.p == 0.0 and moved.significant and math.isinf(moved.t)
    same = welch(interval_of([5.0, 5.0]), interval_of([5.0, 5.0]))
    assert same is not None and same.p == 1.0 and not same.significant


def test_identical_values_that_do_not_divide_evenly_have_no_spread() -> None:
    """6 × 829.637 summed and divided by 6 is 829.6370000000001: no rounding spread."""
    found = interval_of([829.637] * 6)
    assert found is not None
    assert (found.mean, found.sd, found.half_width, found.cv) == (829.637, 0.0, 0.0, 0.0)
