"""How sure a number is: Student's t confidence intervals, the coefficient of variation, the
olympic mean, and Welch's t-test between two sets of repeats.

Pure functions. Every interval and test is computed from (n, mean, variance) so that a caller
holding per-configuration sums (count, sum, sum of squares) gets the same answer as one holding the
values. The t distribution is computed here (regularized incomplete beta, a continued fraction):
the control plane does not pay scipy's import time for it; tests check it against scipy.
docs/metrics.md gives every formula.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

CONFIDENCE = 0.95  # the interval's level; the significance level is 1 - CONFIDENCE
ALPHA = 1.0 - CONFIDENCE


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom (df may be fractional)."""
    if math.isinf(t):
        return 0.0
    return incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


@lru_cache(maxsize=4096)
def t_quantile(probability: float, df: float) -> float:
    """The t value below which `probability` of Student's t(df) lies (0.5 < probability < 1):
    t_quantile(0.975, 9) = 2.262. Bisection on the two-sided tail, 200 halvings at most."""
    if not 0.5 < probability < 1.0 or df <= 0:
        raise ValueError(f"t_quantile({probability}, {df}) is outside 0.5 < p < 1, df > 0")
    tail = 2.0 * (1.0 - probability)
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > tail:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_two_sided_p(middle, df) > tail:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


@dataclass(frozen=True)
class Interval:
    """n repeats' mean with its 95 % interval (None below two repeats) and spread."""

    n: int
    mean: float
    sd: float | None  # sample standard deviation (n - 1); None for one value
    half_width: float | None  # t(0.975, n - 1) * sd / sqrt(n)

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    @property
    def half_width_pct(self) -> float | None:
        """The half-width as a percentage of the mean: ±2.0 means the interval is mean ± 2 %."""
        if self.half_width is None or not self.mean:
            return None
        return 100.0 * self.half_width / abs(self.mean)

    @property
    def cv(self) -> float | None:
        """The coefficient of variation, sd / |mean| (0.02 = 2 %)."""
        if self.sd is None or not self.mean:
            return None
        return self.sd / abs(self.mean)

    def as_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "mean": self.mean,
            "sd": self.sd,
            "ci_low": self.low,
            "ci_high": self.high,
            "ci_half_pct": self.half_width_pct,
            "cv": self.cv,
        }


def interval(n: int, mean: float, variance: float | None) -> Interval | None:
    """From moments: n values, their mean and sample variance (None or anything for n = 1).
    A variance a little below zero (sums of squares rounding) counts as zero."""
    if n < 1:
        return None
    if n == 1 or variance is None:
        return Interval(n, mean, None, None)
    sd = math.sqrt(max(0.0, variance))
    half = t_quantile(1.0 - ALPHA / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(n, mean, sd, half)


def interval_from_sums(n: int, total: float, total_sq: float) -> Interval | None:
    """From running sums (count, sum, sum of squares): what a summary table keeps."""
    if n < 1:
        return None
    mean = total / n
    variance = (total_sq - n * mean * mean) / (n - 1) if n > 1 else None
    return interval(n, mean, variance)


@dataclass(frozen=True)
class Moments:
    """n values summarised as a summary table keeps them: their sum, sum of squares, min, max."""

    n: int
    total: float
    total_sq: float
    low: float
    high: float

    def interval(self) -> Interval | None:
        """What interval_of gives for the values themselves (up to rounding in the last
        digits: the spread from the sums of squares, not from two passes)."""
        if self.low == self.high:  # identical repeats: exactly no spread, as interval_of
            return interval(self.n, self.low, 0.0 if self.n > 1 else None)
        return interval_from_sums(self.n, self.total, self.total_sq)


def finite(values: Iterable[Any]) -> list[float]:
    """The numbers among `values`: a failed run's missing value is not a sample."""
    numbers = []
    for v in values:
        if v is None:
            continue
        number = float(v)
        if math.isfinite(number):
            numbers.append(number)
    return numbers


def interval_of(values: Iterable[Any]) -> Interval | None:
    numbers = finite(values)
    if not numbers:
        return None
    n = len(numbers)
    if min(numbers) == max(numbers):  # identical repeats: exactly no spread, not rounding's
        return interval(n, numbers[0], 0.0 if n > 1 else None)
    mean = math.fsum(numbers) / n
    # two passes with exact float sums: statistics.variance's fractions cost ~50x more on the
    # 10,000 runs of a long history, for digits nobody reads
    variance = math.fsum((x - mean) ** 2 for x in numbers) / (n - 1) if n > 1 else None
    return interval(n, mean, variance)


@dataclass(frozen=True)
class Olympic:
    """MLPerf's olympic mean: the mean after dropping the fastest and the slowest value.
    Below three values nothing is dropped (dropped = 0) and it is the plain mean."""

    mean: float
    dropped: int
    n: int  # values averaged


def olympic(values: Iterable[Any]) -> Olympic | None:
    numbers = sorted(finite(values))
    if not numbers:
        return None
    if len(numbers) < 3:
        return Olympic(statistics.fmean(numbers), 0, len(numbers))
    kept = numbers[1:-1]
    return Olympic(statistics.fmean(kept), 2, len(kept))


@dataclass(frozen=True)
class Welch:
    """Welch's t-test of two sets of repeats (unequal variances): is b's mean different from
    a's? p is two-sided; significant when p < ALPHA."""

    t: float
    df: float
    p: float

    @property
    def significant(self) -> bool:
        return self.p < ALPHA

    def as_dict(self) -> dict[str, Any]:
        return {
            "t": None if math.isinf(self.t) else self.t,
            "df": self.df,
            "p": self.p,
            "significant": self.significant,
        }


def welch(a: Interval | None, b: Interval | None) -> Welch | None:
    """None when either side has fewer than two repeats (no variance to test with). Both sides
    without spread (identical repeats): a different mean is significant (p = 0), the same is not
    (p = 1)."""
    if a is None or b is None or a.sd is None or b.sd is None:
        return None
    va, vb = a.sd**2 / a.n, b.sd**2 / b.n
    diff = b.mean - a.mean
    if va + vb == 0.0:
        return Welch(
            math.copysign(math.inf, diff) if diff else 0.0, a.n + b.n - 2.0, 0.0 if diff else 1.0
        )
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (_share(va, a.n) + _share(vb, b.n))
    return Welch(t, df, t_two_sided_p(t, df))


def _share(v: float, n: int) -> float:
    return v * v / (n - 1)
