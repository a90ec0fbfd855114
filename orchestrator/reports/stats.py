"""Repeats of one configuration, summarised: mean, spread (sample stdev, min-max) and n; and the
regression flag that compares a run with the recent history of its configuration.

Pure functions over seed_table rows (mappings with vendor, topology, config, precision, fix_hp,
finished_at, run_id and the metric columns). docs/reports.md explains the rules.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator.confidence import Interval, Moments, Olympic, interval_of, olympic
from orchestrator.units import sig3

# The seed's numeric columns, summarised over repeats.
METRICS = ("e2e_time", "p_whole", "p_train", "p_core", "map")
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
class Spread:
    n: int
    mean: float
    sd: float | None  # sample standard deviation; None for a single value
    min: float
    max: float

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "sd": self.sd, "min": self.min, "max": self.max, "n": self.n}


def spread(values: Iterable[Any]) -> Spread | None:
    numbers = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not numbers:
        return None
    sd = statistics.stdev(numbers) if len(numbers) > 1 else None
    return Spread(len(numbers), statistics.fmean(numbers), sd, min(numbers), max(numbers))


def spread_of_moments(moments: Moments) -> Spread | None:
    """spread() of the values a summary row's moments describe (up to rounding in the last
    digits of the sd)."""
    found = moments.interval()
    if found is None:
        return None
    return Spread(found.n, found.mean, found.sd, moments.low, moments.high)


@dataclass(frozen=True)
class Regression:
    run_id: str
    metric: str
    value: float
    history_mean: float
    history_sd: float
    history_n: int

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
        past = spread(numbers)
        if past is None or past.sd is None:
            continue
        if value < past.mean - SIGMAS * past.sd:
            found.append(Regression(str(run["run_id"]), metric, value, past.mean, past.sd, past.n))
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


@dataclass
class Group:
    """The repeats of one configuration in a selection."""

    key: ConfigKey
    topology: str
    rows: list[Mapping[Any, Any]] = field(default_factory=list)

    @property
    def vendor(self) -> str:
        return self.key[0]

    @property
    def config(self) -> str:
        return self.key[1]

    @property
    def precision(self) -> str:
        return self.key[2]

    @property
    def fix_hp(self) -> str:
        return self.key[3]

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def run_ids(self) -> list[str]:
        return [str(r["run_id"]) for r in self.rows]

    def stats(self, metric: str) -> Spread | None:
        return spread(r.get(metric) for r in self.rows)

    def interval(self, metric: str) -> Interval | None:
        """n, mean, 95 % interval and CV over the runs that have the metric."""
        return interval_of(r.get(metric) for r in self.rows)

    def olympic(self, metric: str) -> Olympic | None:
        return olympic(r.get(metric) for r in self.rows)

    @property
    def mem(self) -> str | None:
        """The peak over the repeats: the label with the most memory used."""
        top = self._mem_row()
        return str(top["mem"]) if top is not None else None

    @property
    def mem_source(self) -> str | None:
        """Where that peak comes from: 'device' (the SMI tool) or 'allocator'."""
        top = self._mem_row()
        return top.get("mem_source") if top is not None else None

    def _mem_row(self) -> Mapping[Any, Any] | None:
        rows = [r for r in self.rows if r.get("mem")]
        return max(rows, key=lambda r: _mem_used(str(r["mem"])), default=None)


def _mem_used(label: str) -> float:
    try:
        return float(label.split("/", 1)[0])
    except ValueError:
        return -1.0


def group_rows(rows: Sequence[Mapping[Any, Any]]) -> list[Group]:
    """Rows grouped by configuration, in the order each configuration first appears."""
    groups: dict[ConfigKey, Group] = {}
    for row in rows:
        key = config_key(row)
        if key not in groups:
            groups[key] = Group(key, str(row.get("topology") or ""))
        groups[key].rows.append(row)
    return list(groups.values())


def devices(topology: str) -> int | None:
    """'2x8' -> 16."""
    try:
        nodes, per_node = topology.lower().split("x", 1)
        return int(nodes) * int(per_node)
    except ValueError:
        return None


@dataclass(frozen=True)
class ScalingPoint:
    """A series' mean throughput at one topology, against the ideal line through its smallest
    topology (per-device value x devices: the 1x1 value x devices when 1x1 was run)."""

    series: str
    topology: str
    devices: int
    mean: float
    ideal: float

    @property
    def efficiency(self) -> float:
        """Measured over ideal: 1.0 scales perfectly, 0.8 loses a fifth to communication."""
        return self.mean / self.ideal if self.ideal else 0.0


def scaling_points(measured: Iterable[tuple[str, str, float]]) -> list[ScalingPoint]:
    """(series, topology, mean) -> points sorted by series then devices; a topology that
    does not parse is left out."""
    series: dict[str, list[tuple[int, str, float]]] = {}
    for name, topology, mean in measured:
        count = devices(topology)
        if count is not None and count > 0:
            series.setdefault(name, []).append((count, topology, float(mean)))
    points = []
    for name, found in sorted(series.items()):
        found.sort()
        base_devices, _, base_mean = found[0]
        per_device = base_mean / base_devices
        points += [ScalingPoint(name, t, n, mean, per_device * n) for n, t, mean in found]
    return points
