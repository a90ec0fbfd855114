"""Repeats until the number is sure: "until the 95 % interval of p_core is within ±2 % of the
mean, at least 3 and at most 10 runs".

    [campaign]
    repeat = {until_ci_pct = 2, min = 3, max = 10, metric = "p_core"}

    orchestrator submit 2x8 --repeat-until 2% --repeat-min 3 --repeat-max 10

Pure: the rule, its parsing, and its verdict over the outcomes of the repeats so far. Failed
runs are failures, not samples: they count towards `max` (attempts), never towards `min` or the
interval. docs/campaigns.md explains it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.confidence import interval_of
from orchestrator.errors import ConfigError

RULE_METRICS = ("p_core", "p_train", "p_whole", "e2e_time", "map")
RULE_KEYS = ("until_ci_pct", "min", "max", "metric")
MAX_REPEATS = 1000
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")


@dataclass(frozen=True)
class RepeatRule:
    until_ci_pct: float  # stop when the 95 % interval's half-width is at most this % of the mean
    min: int = 3  # succeeded runs needed before the rule may hold (>= 2: an interval needs 2)
    max: int = 10  # runs at most, failed ones included
    metric: str = "p_core"

    def text(self) -> str:
        return (
            f"until the 95 % interval of {self.metric} is within ±{self.until_ci_pct:g} % of the "
            f"mean, at least {self.min} and at most {self.max} runs"
        )

    def as_doc(self) -> dict[str, Any]:
        return {
            "until_ci_pct": self.until_ci_pct,
            "min": self.min,
            "max": self.max,
            "metric": self.metric,
        }

    def verdict(self, outcomes: Sequence[tuple[str, Any]]) -> Verdict:
        """outcomes: (status, metric value) of the repeats so far, in any order."""
        values = [v for status, v in outcomes if status == "succeeded"]
        found = interval_of(values)
        samples = found.n if found else 0
        half = found.half_width_pct if found else None
        holds = samples >= self.min and half is not None and half <= self.until_ci_pct
        return Verdict(self, holds, samples, len(outcomes) - samples, half, len(outcomes))


@dataclass(frozen=True)
class Verdict:
    rule: RepeatRule
    holds: bool
    samples: int  # succeeded runs with the metric
    failures: int  # runs that ended otherwise, or without the metric
    half_pct: float | None  # the interval's half-width in % of the mean (None below 2 samples)
    attempts: int

    @property
    def exhausted(self) -> bool:
        return not self.holds and self.attempts >= self.rule.max

    def describe(self) -> str:
        rule = self.rule
        width = "no interval yet" if self.half_pct is None else f"±{self.half_pct:.2f} %"
        counted = f"{self.samples} sample{'s' if self.samples != 1 else ''}"
        if self.failures:
            counted += f" and {self.failures} failed run{'s' if self.failures != 1 else ''}"
        head = f"repeat rule ({rule.metric} within ±{rule.until_ci_pct:g} %, min {rule.min}, max {rule.max})"
        if self.holds:
            return f"{head} holds after {counted}: {width}; no more repeats"
        if self.exhausted:
            return f"{head} not met after {self.attempts} runs ({counted}): {width}; stopping at the maximum"
        return f"{head} not met yet with {counted}: {width}; repeating"


def _fail(source: str, what: str, remedy: str) -> ConfigError:
    return ConfigError(f"{source}: {what}", remedy)


def make_rule(
    until_ci_pct: Any, low: Any, high: Any, metric: Any, source: str, example: str
) -> RepeatRule:
    """Check each part; every mistake is one ConfigError naming it."""
    percent = _percent(until_ci_pct)
    if percent is None or not 0 < percent <= 100:
        raise _fail(
            source, f"until {until_ci_pct!r} is not a percentage above 0", f"e.g. {example}"
        )
    for name, value in (("min", low), ("max", high)):
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_REPEATS:
            raise _fail(
                source,
                f"{name} {value!r} is not a whole number 2..{MAX_REPEATS}",
                "an interval needs 2 runs or more; e.g. min 3, max 10",
            )
    if high < low:
        raise _fail(source, f"max {high} is below min {low}", "make max at least min")
    if metric not in RULE_METRICS:
        raise _fail(
            source, f"metric {metric!r} is unknown", f"use one of {', '.join(RULE_METRICS)}"
        )
    return RepeatRule(float(percent), int(low), int(high), str(metric))


def _percent(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    match = _PERCENT.match(str(value))
    return float(match.group(1)) if match else None


def rule_from_table(data: Any, source: str) -> RepeatRule:
    """`repeat = {until_ci_pct = 2, min = 3, max = 10, metric = "p_core"}` in a campaign file."""
    example = 'repeat = {until_ci_pct = 2, min = 3, max = 10, metric = "p_core"}'
    where = f"{source}: campaign.repeat"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where} must be a table", f"write {example}")
    unknown = sorted(set(data) - set(RULE_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: {unknown[0]} is not a repeat setting", f"known: {', '.join(RULE_KEYS)}"
        )
    if "until_ci_pct" not in data:
        raise ConfigError(f"{where}: until_ci_pct is missing", f"write {example}")
    return make_rule(
        data["until_ci_pct"],
        data.get("min", 3),
        data.get("max", 10),
        data.get("metric", "p_core"),
        where,
        "until_ci_pct = 2",
    )


def rule_from_options(
    until: str | None, low: int | None, high: int | None, metric: str | None
) -> RepeatRule | None:
    """`--repeat-until 2% --repeat-min 3 --repeat-max 10 --repeat-metric p_core`; None when
    --repeat-until is not given (then the other three must not be either)."""
    if until is None:
        given = [
            n
            for n, v in (("--repeat-min", low), ("--repeat-max", high), ("--repeat-metric", metric))
            if v is not None
        ]
        if given:
            raise ConfigError(f"{given[0]} needs --repeat-until", "add e.g. --repeat-until 2%")
        return None
    return make_rule(
        until,
        3 if low is None else low,
        10 if high is None else high,
        metric or "p_core",
        "--repeat-until",
        "--repeat-until 2%",
    )


def rule_from_doc(doc: Mapping[str, Any]) -> RepeatRule | None:
    """The rule a queued run carries (request doc key `repeat_rule`), if any."""
    raw = doc.get("repeat_rule")
    if not isinstance(raw, Mapping):
        return None
    return RepeatRule(
        float(raw["until_ci_pct"]), int(raw["min"]), int(raw["max"]), str(raw["metric"])
    )
