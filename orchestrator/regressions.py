"""The regression flag: a succeeded run whose throughput fell clearly below the recent history of
its configuration (the last HISTORY_RUNS succeeded runs that finished before it). Pure, and in
the core because the store keeps each run's flags at publish (store/verdicts.py) and the reports
compute them for any selection (reports/stats.py); docs/reports.md gives the rule.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.units import sig3

# Which columns the regression flag watches (throughputs: higher is better).
WATCHED = ("p_train", "p_core")
HISTORY_RUNS = 10  # K: how many earlier succeeded runs of the configuration count
SIGMAS = 3.0  # flagged below mean - SIGMAS * sd ...
MIN_DROP = 0.05  # ... and more than 5 % below the mean
MIN_HISTORY = 3  # fewer earlier runs than this: no verdict

ConfigKey = tuple[str, str, str, str]  # vendor, config (hardware + topology), precision, fix_hp


def config_key(row: Mapping[Any, Any]) -> ConfigKey:
    """What makes two runs repeats of one configuration."""
    return (
        str(row.get("vendor") or ""),
        str(row.get("config") or ""),
        str(row.get("precision") or ""),
        str(row.get("fix_hp") or ""),
    )


@dataclass(frozen=True)
class Regression:
    run_id: str
    metric: str
    value: float
    history_mean: float
    history_sd: float
    history_n: int

    def as_dict(self) -> dict[str, Any]:
        """run_id, metric, value, history_mean, history_sd, history_n: the report's JSON and
        a stored verdict (store/verdicts.py)."""
        return asdict(self)

    @property
    def drop(self) -> float:
        """Fraction below the history's mean (0.12 = 12 % slower)."""
        return 1.0 - self.value / self.history_mean

    def describe(self) -> str:
        return (
            f"{self.metric} {sig3(self.value)} img/s is {self.drop:.0%} below the mean "
            f"{sig3(self.history_mean)} ± {sig3(self.history_sd)} of the previous "
            f"{self.history_n} runs"
        )


def find_regressions(
    run: Mapping[Any, Any],
    history: Sequence[Mapping[Any, Any]],
    k: int = HISTORY_RUNS,
) -> list[Regression]:
    """Regressions of `run` against the last k succeeded runs of its configuration that finished
    before it (`history` may hold anything; it is filtered here)."""
    if run.get("status", "succeeded") != "succeeded" or run.get("finished_at") is None:
        return []
    key = config_key(run)
    earlier = [
        h
        for h in history
        if config_key(h) == key
        and h.get("status", "succeeded") == "succeeded"
        and h.get("finished_at") is not None
        and (h["finished_at"], str(h["run_id"])) < (run["finished_at"], str(run["run_id"]))
    ]
    earlier.sort(key=lambda h: (h["finished_at"], str(h["run_id"])))
    return _flags(run, earlier[-k:])


def _flags(run: Mapping[Any, Any], recent: Sequence[Mapping[Any, Any]]) -> list[Regression]:
    """The watched metrics of `run` that fall below the spread of `recent` (its last k runs)."""
    found = []
    for metric in WATCHED:
        value = run.get(metric)
        numbers = [float(v) for h in recent if (v := h.get(metric)) is not None]
        numbers = [v for v in numbers if math.isfinite(v)]
        if value is None or len(numbers) < MIN_HISTORY:
            continue
        value = float(value)
        # The cheap half of the rule first: statistics.stdev costs ~100x a mean, and most runs
        # are not 5 % below theirs (a configuration's whole history on the web page).
        if not value < statistics.fmean(numbers) * (1.0 - MIN_DROP):
            continue
        mean, sd = statistics.fmean(numbers), statistics.stdev(numbers)
        if value < mean - SIGMAS * sd:
            found.append(Regression(str(run["run_id"]), metric, value, mean, sd, len(numbers)))
    return found


def flag_history(
    history: Sequence[Mapping[Any, Any]], k: int = HISTORY_RUNS
) -> dict[str, list[Regression]]:
    """find_regressions for every succeeded run of `history` against the runs of its own
    configuration before it, in one pass (a window of the last k per configuration) rather than
    one scan of the history per run: a configuration's whole history on the web page."""
    ordered = sorted(
        (
            h
            for h in history
            if h.get("status", "succeeded") == "succeeded" and h.get("finished_at") is not None
        ),
        key=lambda h: (h["finished_at"], str(h["run_id"])),
    )
    windows: dict[ConfigKey, list[Mapping[str, Any]]] = {}
    flagged: dict[str, list[Regression]] = {}
    for row in ordered:
        window = windows.setdefault(config_key(row), [])
        found = _flags(row, window)
        if found:
            flagged[str(row["run_id"])] = found
        window.append(_watched(row))
        if len(window) > k:
            del window[0]
    return flagged


def regressions_by_run(
    rows: Sequence[Mapping[Any, Any]],
    history: Sequence[Mapping[Any, Any]],
    k: int = HISTORY_RUNS,
) -> dict[str, list[Regression]]:
    """find_regressions of each of `rows` against `history`, the same verdicts in
    O((rows + history) log history): each configuration's history sorted once, then each row's
    last k earlier runs found by bisection (rather than one scan of the history per row: 58 s
    for a configuration's 25,000 runs)."""
    by_config: dict[ConfigKey, list[Mapping[Any, Any]]] = {}
    for h in history:
        if h.get("status", "succeeded") == "succeeded" and h.get("finished_at") is not None:
            by_config.setdefault(config_key(h), []).append(h)
    order: dict[ConfigKey, list[tuple[Any, str]]] = {}
    values: dict[ConfigKey, list[Mapping[str, Any]]] = {}
    for key, runs in by_config.items():
        runs.sort(key=_order)  # stable: ties keep their order in `history`, as find_regressions
        order[key] = [_order(h) for h in runs]
        values[key] = [_watched(h) for h in runs]
    flagged = {}
    for row in rows:
        if row.get("status", "succeeded") != "succeeded" or row.get("finished_at") is None:
            continue
        key = config_key(row)
        before = bisect.bisect_left(order.get(key, []), _order(row))  # strictly earlier ones
        found = _flags(row, values.get(key, [])[max(0, before - k) : before])
        if found:
            flagged[str(row["run_id"])] = found
    return flagged


def _watched(run: Mapping[Any, Any]) -> dict[str, Any]:
    """The values a run lends its successors' flags, in a plain dict: read ten times each
    (once per successor), which a database row mapping makes several times slower."""
    return {metric: run.get(metric) for metric in WATCHED}


def _order(run: Mapping[Any, Any]) -> tuple[Any, str]:
    """Which of two runs finished first (the run id breaks a tie)."""
    return (run["finished_at"], str(run["run_id"]))
