"""`orchestrator history CONFIG`: a configuration's runs, how sure its level is (over all runs
and since its last change point), and its change points with what changed. Pure: the caller
reads the rows and explains the change points (orchestrator/reports/history_changes.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator import units
from orchestrator.confidence import Interval, interval_of
from orchestrator.errors import ConfigError
from orchestrator.reports.changepoints import ChangePoint, since_last
from orchestrator.reports.report import fmt
from orchestrator.reports.stats import METRICS

HISTORY_FORMATS = ("table", "json")


@dataclass(frozen=True)
class ConfigHistory:
    vendor: str
    config: str
    precision: str
    fix_hp: str
    rows: Sequence[Mapping[Any, Any]]  # succeeded runs, oldest first
    points: Sequence[ChangePoint]

    def intervals(self, since_change: bool) -> dict[str, Interval | None]:
        return {m: self.interval(m, since_change) for m in METRICS}

    def interval(self, metric: str, since_change: bool) -> Interval | None:
        rows = since_last(self.rows, self.points) if since_change else self.rows
        return interval_of(r.get(metric) for r in rows)

    @property
    def current_from(self) -> str | None:
        """The run the current level starts at (the last change point), None without one."""
        return self.points[-1].run_id if self.points else None


def interval_text(metric: str, found: Interval | None) -> str:
    if found is None:
        return "no values"
    text = f"{units.metric(metric, found.mean)}"
    if found.half_width is not None and found.cv is not None:
        text += f" ± {units.metric(metric, found.half_width)} (CV {found.cv * 100:.1f}%)"
    return f"{text}, n {found.n}"


def summary_lines(history: ConfigHistory, metric: str) -> list[str]:
    rows = history.rows
    title = (
        f"{history.vendor} {history.config} {history.precision} (fix_hp {history.fix_hp}): "
        f"{len(rows)} succeeded run{'s' if len(rows) != 1 else ''}"
    )
    if rows:
        title += f", {fmt(rows[0].get('finished_at'))} .. {fmt(rows[-1].get('finished_at'))}"
    name = "mAP" if metric == "map" else metric
    lines = [
        title,
        f"{name} over all runs: {interval_text(metric, history.intervals(False)[metric])}",
    ]
    if history.points:
        lines.append(
            f"{name} since the last change point ({history.current_from}): "
            f"{interval_text(metric, history.intervals(True)[metric])}"
        )
    lines.append(f"{len(history.points)} change point{'s' if len(history.points) != 1 else ''}")
    return lines


def change_rows(history: ConfigHistory) -> list[list[str]]:
    """One row per change point: run, finished, what moved, what changed."""
    return [
        [
            p.run_id,
            fmt(p.finished_at),
            "; ".join(s.describe() for s in p.shifts),
            "\n".join(c.describe() for c in p.changes) or "no manifest field changed",
        ]
        for p in history.points
    ]


CHANGE_COLUMNS = ("first run", "finished (UTC)", "moved", "what changed")


def history_document(history: ConfigHistory) -> dict[str, Any]:
    def intervals(since_change: bool) -> dict[str, Any]:
        found = history.intervals(since_change)
        return {m: (i.as_dict() if i else None) for m, i in found.items()}

    return {
        "vendor": history.vendor,
        "config": history.config,
        "precision": history.precision,
        "fix_hp": history.fix_hp,
        "runs": len(history.rows),
        "first_finished": history.rows[0].get("finished_at") if history.rows else None,
        "last_finished": history.rows[-1].get("finished_at") if history.rows else None,
        "all_runs": intervals(False),
        "since_last_change_point": {
            "from_run": history.current_from,
            "runs": len(since_last(history.rows, history.points)),
            **intervals(True),
        },
        "change_points": [p.as_dict() for p in history.points],
    }


def check_format(output: str) -> None:
    if output not in HISTORY_FORMATS:
        raise ConfigError(
            f"unknown history format {output!r}", f"use one of {', '.join(HISTORY_FORMATS)}"
        )
