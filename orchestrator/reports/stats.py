"""Repeats of one configuration, summarised: mean, spread (sample stdev, min-max) and n (the
regression flag that compares a run with the recent history of its configuration is
orchestrator/regressions.py).

Pure functions over seed_table rows (mappings with vendor, topology, config, precision, fix_hp,
finished_at, run_id and the metric columns). docs/reports.md explains the rules.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchestrator import units
from orchestrator.confidence import Interval, Moments, Olympic, interval_of, olympic
from orchestrator.regressions import ConfigKey, Regression, config_key

# The seed's numeric columns, summarised over repeats.
METRICS = ("e2e_time", "p_whole", "p_train", "p_core", "map")


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


class _Named:
    """A group's key by name: vendor, config (hardware + topology), precision, fix_hp."""

    key: ConfigKey

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


@dataclass
class Group(_Named):
    """The repeats of one configuration in a selection."""

    key: ConfigKey
    topology: str
    rows: list[Mapping[Any, Any]] = field(default_factory=list)

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

    @property
    def measured(self) -> bool:
        """Whether some run is ours with metrics (its empty mem: not measured on the device)."""
        return any(units.measured_here(r.get("p_core"), r.get("source")) for r in self.rows)

    def flags(self, regressions: Mapping[str, Sequence[Regression]]) -> list[Regression]:
        """The regression flags of this group's runs, in its runs' order."""
        return [r for run_id in self.run_ids for r in regressions.get(run_id, ())]

    def _mem_row(self) -> Mapping[Any, Any] | None:
        rows = [r for r in self.rows if r.get("mem")]
        return max(rows, key=lambda r: units.mem_used_gib(str(r["mem"])), default=None)


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


@dataclass(frozen=True)
class SummaryGroup(_Named):
    """A whole configuration as Group shows it, from its kept moments (the summaries) instead
    of its runs: the same figures (the sd up to rounding in its last digits), without the run
    ids, which only the per-run outputs (CSV, JSON) list."""

    key: ConfigKey
    topology: str
    n: int
    moments: Mapping[str, Moments]
    mem: str | None
    mem_source: str | None
    measured: bool
    flagged: Sequence[str]  # its runs with regression flags, in finishing order

    def stats(self, metric: str) -> Spread | None:
        found = self.moments.get(metric)
        return spread_of_moments(found) if found else None

    def interval(self, metric: str) -> Interval | None:
        found = self.moments.get(metric)
        return found.interval() if found else None

    def olympic(self, metric: str) -> Olympic | None:
        """The olympic mean from the sum less the extremes: the same mean as Group's."""
        m = self.moments.get(metric)
        if m is None:
            return None
        if m.n < 3:
            return Olympic(m.total / m.n, 0, m.n)
        return Olympic((m.total - m.low - m.high) / (m.n - 2), 2, m.n - 2)

    def flags(self, regressions: Mapping[str, Sequence[Regression]]) -> list[Regression]:
        return [r for run_id in self.flagged for r in regressions.get(run_id, ())]


AnyGroup = Group | SummaryGroup
