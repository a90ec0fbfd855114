"""Monitor series downsampled once, at publish: each (metric, node, device) series of a run
averaged into at most BUCKETS time buckets, stored in run_monitor_series. The run page reads
those few rows instead of averaging the raw samples on every request (a run monitored for
hours holds 100,000 samples or more)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select

from orchestrator.store.bulk import chunks, insert_rows
from orchestrator.store.models import MonitorSample, RunMonitorSeries

BUCKETS = 120
# A row the monitors write when a node lacks its SMI tool: a fact, not a series to draw.
NOT_DRAWN = "monitor_tool_missing"
SeriesKey = tuple[str, str, "int | None"]


def _order(key: SeriesKey) -> tuple[str, str, int]:
    metric, node, device = key
    return (metric, node, -1 if device is None else device)


def downsample(
    run_id: str, samples: Iterable[Mapping[Any, Any]], buckets: int = BUCKETS
) -> list[dict[str, Any]]:
    """run_monitor_series rows for one run's samples (dicts with metric, node_name,
    device_index, ts, value): the buckets span the run's first to last sample of any metric;
    a point is (the bucket's middle in seconds from the first sample, the bucket's mean)."""
    rows = list(samples)
    if not rows:
        return []
    times = [_seconds(r["ts"]) for r in rows]
    t0 = min(times)
    width = max((max(times) - t0) / buckets, 1e-3)
    sums: dict[SeriesKey, dict[int, list[float]]] = {}
    for row, t in zip(rows, times):
        if row["metric"] == NOT_DRAWN:
            continue
        key = (str(row["metric"]), str(row["node_name"]), row["device_index"])
        bucket = sums.setdefault(key, {}).setdefault(math.floor((t - t0) / width), [0.0, 0])
        bucket[0] += float(row["value"])
        bucket[1] += 1
    out = []
    for i, key in enumerate(sorted(sums, key=_order)):
        points = [
            [round((index + 0.5) * width, 3), total / n]
            for index, (total, n) in sorted(sums[key].items())
        ]
        out.append(
            {
                "run_id": run_id,
                "series": i,
                "metric": key[0],
                "node_name": key[1],
                "device_index": key[2],
                "samples": int(sum(n for _, n in sums[key].values())),
                "points": points,
            }
        )
    return out


def _seconds(ts: datetime) -> float:
    return ts.timestamp()


def write(conn: Connection, rows_by_run: Mapping[str, Sequence[Mapping[Any, Any]]]) -> None:
    """Store the downsampled series of these runs (their old ones must be gone)."""
    rows = [r for run_id, samples in rows_by_run.items() for r in downsample(run_id, samples)]
    insert_rows(conn, RunMonitorSeries, rows)


def stored(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    query = (
        select(RunMonitorSeries)
        .where(RunMonitorSeries.run_id == run_id)
        .order_by(RunMonitorSeries.series)
    )
    return [dict(r) for r in conn.execute(query).mappings()]


def rebuild(conn: Connection) -> int:
    """Downsample every run's raw samples again (db rebuild-summaries); runs rebuilt."""
    conn.execute(delete(RunMonitorSeries))
    run_ids = list(conn.scalars(select(MonitorSample.run_id).distinct()))
    columns = (
        MonitorSample.metric,
        MonitorSample.node_name,
        MonitorSample.device_index,
        MonitorSample.ts,
        MonitorSample.value,
    )
    for chunk in chunks(run_ids, 20):
        found: dict[str, list[Mapping[Any, Any]]] = {}
        query = select(MonitorSample.run_id, *columns).where(MonitorSample.run_id.in_(chunk))
        for row in conn.execute(query).mappings():
            found.setdefault(row["run_id"], []).append(row)
        write(conn, found)
    return len(run_ids)
