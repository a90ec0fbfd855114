"""When a configuration's history changed, and what changed with it.

Apache Otava's change-point detector (E-divisive means over sliding windows, each candidate kept
only when a t-test between the segments either side of it is significant; Fleming et al., "Hunter",
ICPE 2023) runs over each watched metric of a configuration's succeeded runs, oldest first. The
change points of the metrics are merged when they fall within a few runs of each other, and each
is explained by the manifest fields (image, wheels, driver, kernel, torch, hyper-parameters,
nodes, fabric, health-gate figures) whose usual value differs between the runs just before it
and the runs just after it.

Pure: rows are seed_table rows; facts are {run_id: {field: value}} read by
orchestrator/store/run_facts.py. docs/reports.md gives the rules and why Otava.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from orchestrator.errors import ConfigError

# The metrics whose moves are change points (throughputs and accuracy).
CHANGE_METRICS = ("p_core", "p_train", "p_whole", "map")
# Otava's settings: a window of 100 runs, and a change point kept at p < 1e-4 (Otava's default is
# 1e-3; with 200-run histories of CV 1-3 % noise that finds a false change point in one flat
# history in ten, 1e-4 in none of 90: bench/bench_changepoints.py).
WINDOW = 100
MAX_P = 1e-4
MERGE_RUNS = 3  # change points of different metrics this close are one change
EXPLAIN_RUNS = 5  # runs each side of a change point whose manifests are compared ...
EXPLAIN_GAP = 5  # ... leaving out this many either side: where the step may really be


@dataclass(frozen=True)
class Shift:
    """One metric's move at a change point: the means of the segments either side."""

    metric: str
    before: float
    after: float
    p: float

    @property
    def relative(self) -> float:
        return self.after / self.before - 1.0 if self.before else math.nan

    def describe(self) -> str:
        return f"{_name(self.metric)} {self.relative * 100:+.1f}% (p = {self.p:.1g})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "mean_before": self.before,
            "mean_after": self.after,
            "relative": self.relative,
            "p": self.p,
        }


@dataclass(frozen=True)
class FieldChange:
    """A manifest field whose usual value differs before and after a change point."""

    field: str
    before: str
    after: str
    first_run: str  # the first run around the change point with the new value

    def describe(self) -> str:
        return f"{self.field}: {self.before or '(none)'} → {self.after or '(none)'}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "before": self.before,
            "after": self.after,
            "first_run": self.first_run,
        }


@dataclass(frozen=True)
class ChangePoint:
    index: int  # position in the history: the first run of the new level
    run_id: str
    finished_at: Any
    shifts: tuple[Shift, ...]
    changes: tuple[FieldChange, ...] = field(default=())

    def describe(self) -> str:
        moved = ", ".join(s.describe() for s in self.shifts)
        why = "; ".join(c.describe() for c in self.changes) or "no manifest field changed"
        return f"{self.run_id}: {moved}; {why}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "run_id": self.run_id,
            "finished_at": self.finished_at,
            "shifts": [s.as_dict() for s in self.shifts],
            "changes": [c.as_dict() for c in self.changes],
        }


def _name(metric: str) -> str:
    return "mAP" if metric == "map" else metric


def detect(
    values: Sequence[float], window: int = WINDOW, max_p: float = MAX_P, metric: str = ""
) -> list[tuple[int, Shift]]:
    """Otava over one series (no missing values): each change point's index (the first value of
    the new level) and the means of the segments either side of it."""
    if len(values) < 4:
        return []
    try:
        from orchestrator.reports.edivisive import StudentTester, compute_change_points
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"change points need Apache Otava, which is not installed ({exc.name} is missing)",
            "run scripts/setup-venv.sh, or pip install --no-deps apache-otava==0.8.0",
        ) from None

    series = [float(v) for v in values]
    indexes = [int(c.index) for c in compute_change_points(series, window, max_p)]
    # The segments' statistics from the final change points: the ones Otava keeps can be stale
    # (its merge step recomputes the two points after a removed one, not the one before it).
    bounds = [0, *indexes, len(series)]
    shifts = []
    for n, at in enumerate(indexes):
        stats = StudentTester(max_p).compare(series[bounds[n] : at], series[at : bounds[n + 2]])
        shifts.append((at, Shift(metric, stats.mean_1, stats.mean_2, stats.pvalue)))
    return shifts


def find_change_points(
    rows: Sequence[Mapping[Any, Any]], metrics: Sequence[str] = CHANGE_METRICS
) -> list[ChangePoint]:
    """The change points of a configuration's history (rows oldest first), the metrics' own
    merged when within MERGE_RUNS runs of each other; not yet explained."""
    moves: list[tuple[int, Shift]] = []
    for metric in metrics:
        positions = [i for i, r in enumerate(rows) if _finite(r.get(metric))]
        series = [float(rows[i][metric]) for i in positions]
        moves += [(positions[i], s) for i, s in detect(series, metric=metric)]
    moves.sort(key=lambda m: m[0])
    clusters: list[list[tuple[int, Shift]]] = []
    for move in moves:
        if clusters and move[0] - clusters[-1][-1][0] <= MERGE_RUNS:
            clusters[-1].append(move)
        else:
            clusters.append([move])
    points = []
    for cluster in clusters:
        index = min(cluster, key=lambda m: m[1].p)[0]  # where the clearest metric moved
        order = {m: i for i, m in enumerate(metrics)}
        shifts = tuple(sorted((s for _, s in cluster), key=lambda s: order.get(s.metric, 99)))
        row = rows[index]
        points.append(ChangePoint(index, str(row["run_id"]), row.get("finished_at"), shifts))
    return points


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def explain_windows(points: Sequence[ChangePoint], count: int) -> list[range]:
    """The positions whose manifests explain each change point."""
    reach = EXPLAIN_GAP + EXPLAIN_RUNS
    return [range(max(0, p.index - reach), min(count, p.index + reach)) for p in points]


def explain(
    points: Sequence[ChangePoint],
    rows: Sequence[Mapping[Any, Any]],
    facts: Mapping[str, Mapping[str, str]],
) -> list[ChangePoint]:
    """Each change point with the fields whose most common value differs between EXPLAIN_RUNS
    runs before it and as many after it, leaving out EXPLAIN_GAP runs either side (the detector
    may place a step a few runs early or late), never reaching past the neighbouring change
    points (where they are close, the gap shrinks first)."""
    explained = []
    for n, point in enumerate(points):
        low = points[n - 1].index if n else 0
        high = points[n + 1].index if n + 1 < len(points) else len(rows)
        at = point.index
        gap_low = max(low, at - EXPLAIN_GAP)
        gap_high = min(high, at + EXPLAIN_GAP)
        before = rows[max(low, gap_low - EXPLAIN_RUNS) : gap_low] or rows[low:at]
        after = rows[gap_high : min(high, gap_high + EXPLAIN_RUNS)] or rows[at:high]
        changes = field_changes(
            [facts.get(str(r["run_id"]), {}) for r in before],
            [facts.get(str(r["run_id"]), {}) for r in after],
            [(str(r["run_id"]), facts.get(str(r["run_id"]), {})) for r in rows[gap_low:high]],
        )
        explained.append(replace(point, changes=tuple(changes)))
    return explained


def field_changes(
    before: Sequence[Mapping[str, str]],
    after: Sequence[Mapping[str, str]],
    around: Sequence[tuple[str, Mapping[str, str]]] = (),
) -> list[FieldChange]:
    """Fields whose usual (most common) value differs between `before` and `after`; `around`
    (run id, facts) from just before the change point on names the first run with the new
    value."""
    names = sorted({k for f in [*before, *after] for k in f}, key=field_order)
    found = []
    for name in names:
        old, new = _usual(before, name), _usual(after, name)
        if old != new:
            first = next((run_id for run_id, f in around if f.get(name, "") == new), "")
            found.append(FieldChange(name, old, new, first))
    return found


def _usual(facts: Sequence[Mapping[str, str]], name: str) -> str:
    if not facts:
        return ""
    counts = Counter(f.get(name, "") for f in facts)
    return counts.most_common(1)[0][0]


# Fields listed in this order (the rest alphabetically after them).
FIELD_ORDER = (
    "image",
    "wheels",
    "driver",
    "kernel",
    "torch",
    "torchvision",
    "os",
    "docker",
    "nodes",
    "fabric",
    "orchestrator",
)


def field_order(name: str) -> tuple[int, str]:
    head = name.split(".", 1)[0]
    return (FIELD_ORDER.index(head) if head in FIELD_ORDER else len(FIELD_ORDER), name)


def since_last(
    rows: Sequence[Mapping[Any, Any]], points: Sequence[ChangePoint]
) -> list[Mapping[Any, Any]]:
    """The runs from the last change point on (all of them when there is none)."""
    return list(rows[points[-1].index :]) if points else list(rows)
