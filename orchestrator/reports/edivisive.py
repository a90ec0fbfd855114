"""Apache Otava's change-point detection (apache-otava 0.8.0, Apache License 2.0) without
importing scipy.

Otava's `otava.analysis.compute_change_points` imports scipy.stats for one function, Student's
two-sample t-test from summary statistics; that import alone takes about a second, which is the
whole budget of `orchestrator history`. This module uses Otava's own E-divisive detector
(`otava.change_point_divisive`: the pair-distance calculator and the divisive search, numpy only)
and repeats the two steps of `otava.analysis` around it — split (weak change points over sliding
windows) and merge (drop the weakest until every one is significant) — with the t-test computed
by orchestrator/confidence.py. tests/unit/test_changepoints.py checks that the result
equals `otava.analysis.compute_change_points` on random series with steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from otava.change_point_divisive.base import (
    BaseStats,
    CandidateChangePoint,
    ChangePoint,
    SignificanceTester,
)
from otava.change_point_divisive.calculator import PairDistanceCalculator
from otava.change_point_divisive.detector import ChangePointDetector

from orchestrator.confidence import t_two_sided_p


@dataclass
class TTestStats(BaseStats):
    """Otava's TTestStats: the segments' means and (population) standard deviations."""

    mean_1: float
    mean_2: float
    std_1: float
    std_2: float

    def change_magnitude(self) -> float:
        forward = self.mean_2 / self.mean_1 - 1.0 if self.mean_1 else 0.0
        backward = self.mean_1 / self.mean_2 - 1.0 if self.mean_2 else 0.0
        return max(abs(forward), abs(backward))


def pooled_t_p(
    mean_1: float, std_1: float, n_1: int, mean_2: float, std_2: float, n_2: int
) -> float:
    """scipy.stats.ttest_ind_from_stats(..., equal_var=True).pvalue, two-sided."""
    df = n_1 + n_2 - 2
    pooled = ((n_1 - 1) * std_1**2 + (n_2 - 1) * std_2**2) / df
    denominator = math.sqrt(pooled * (1.0 / n_1 + 1.0 / n_2))
    if denominator == 0.0:
        return 1.0 if mean_1 == mean_2 else 0.0
    return t_two_sided_p((mean_1 - mean_2) / denominator, df)


class StudentTester(SignificanceTester):
    """Otava's TTestSignificanceTester, with the p-value from pooled_t_p."""

    def compare(self, left: Sequence[float], right: Sequence[float]) -> TTestStats:
        mean_l, mean_r = float(np.mean(left)), float(np.mean(right))
        std_l = float(np.std(left)) if len(left) >= 2 else 0.0  # ddof 0, as Otava
        std_r = float(np.std(right)) if len(right) >= 2 else 0.0
        p = 1.0
        if len(left) + len(right) > 2:
            p = pooled_t_p(mean_l, std_l, len(left), mean_r, std_r, len(right))
        return TTestStats(pvalue=p, mean_1=mean_l, mean_2=mean_r, std_1=std_l, std_2=std_r)

    def change_point(
        self, candidate: CandidateChangePoint, series: Sequence[float], intervals: list[slice]
    ) -> ChangePoint:
        """The candidate's statistics: splitting the interval it lies in (split step), or
        between the two intervals it ends and starts (merge step)."""
        for i, interval in enumerate(intervals):
            if interval.stop == candidate.index:
                left, right = interval, intervals[i + 1]
                break
            if (interval.start is None or interval.start < candidate.index) and (
                interval.stop is None or candidate.index < interval.stop
            ):
                left = slice(interval.start, candidate.index)
                right = slice(candidate.index, interval.stop)
                break
        else:
            raise ValueError(f"change point {candidate.index} is in none of {intervals}")
        stats = self.compare(series[left], series[right])
        return ChangePoint.from_candidate(candidate, stats)


def split(series: Sequence[float], window: int, max_p: float) -> list[ChangePoint]:
    """Weak change points: E-divisive in windows of `window` runs moving by half a window."""
    start, step = 0, window // 2
    tester = StudentTester(max_p)
    points: list[ChangePoint] = []
    while start < len(series):
        end = min(start + window, len(series))
        detector = ChangePointDetector(
            significance_tester=tester, calculator=PairDistanceCalculator
        )
        found = detector.get_change_points(series, start, end)
        start = max(found[-1].index if found else 0, start + step)
        points += [p for p in found if p not in points]
    points.sort(key=lambda p: p.index)
    intervals = tester.get_intervals(points)
    return [tester.change_point(p.to_candidate(), series, intervals) for p in points]


def merge(
    points: list[ChangePoint], series: Sequence[float], max_p: float, min_magnitude: float
) -> list[ChangePoint]:
    """Drop the weakest change point (largest p, or smallest move once all are significant)
    and recompute its neighbours, until every one is significant and large enough."""
    tester = StudentTester(max_p)
    while points:
        weakest = max(points, key=lambda p: p.stats.pvalue)
        if weakest.stats.pvalue < max_p:
            weakest = min(points, key=lambda p: p.stats.change_magnitude())
            if weakest.stats.change_magnitude() > min_magnitude:
                return points
        at = points.index(weakest)
        del points[at]
        intervals = tester.get_intervals(points)
        for i in (at, at + 1):
            if 0 <= i < len(points):
                points[i] = tester.change_point(points[i].to_candidate(), series, intervals)
    return points


def compute_change_points(
    series: Sequence[float], window: int, max_p: float, min_magnitude: float = 0.0
) -> list[ChangePoint]:
    """otava.analysis.compute_change_points(series, window, max_p, min_magnitude)[0]."""
    first_pass = max_p * 10 if max_p < 0.05 else (max_p * 2 if max_p < 0.5 else max_p)
    return merge(split(series, window, first_pass), series, max_p, min_magnitude)
