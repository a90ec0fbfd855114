"""How the pages show numbers (always with their unit) and the chart specifications that
static/app.js hands to Chart.js. Pure functions; the templates call the filters by name."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from orchestrator import units
from orchestrator.regressions import Regression
from orchestrator.reports.changepoints import ChangePoint
from orchestrator.reports.compare import UNITS, metric_header, number
from orchestrator.reports.report import group_mem
from orchestrator.reports.stats import ScalingPoint
from orchestrator.store.follower import FollowerNow
from orchestrator.store.web_queries import Series

GIB = float(1 << 30)
# Monitor metric -> (chart title, unit, scale applied to stored values).
MONITOR_METRICS: dict[str, tuple[str, str, float]] = {
    "device_mem_used_bytes": ("device memory used", "GiB", 1 / GIB),
    "device_mem_total_bytes": ("device memory total", "GiB", 1 / GIB),
    "device_power_w": ("device power", "W", 1.0),
    "device_temp_c": ("device temperature", "°C", 1.0),
    "device_util_percent": ("device utilisation", "%", 1.0),
    "host_cpu_util_percent": ("host CPU", "%", 1.0),
    "host_mem_used_bytes": ("host memory used", "GiB", 1 / GIB),
}


def with_unit(value: Any, unit: str = "") -> str:
    """'1,234 img/s', '37.4 s', '0.372'; empty for a missing value."""
    if value is None or value == "":
        return ""
    text = number(float(value))
    return f"{text} {unit}" if unit else text


def metric_value(row: Mapping[Any, Any], metric: str) -> str:
    return with_unit(row.get(metric), UNITS.get(metric, ""))


def gib(value: Any) -> str:
    return "" if value is None else f"{float(value) / GIB:.1f} GiB"


def seconds(value: Any) -> str:
    return with_unit(value, "s")


def when(value: Any) -> str:
    if not isinstance(value, datetime):
        return "" if value is None else str(value)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def when_short(value: Any) -> str:
    """A time in a column whose header says UTC: '2026-01-14 10:15'."""
    return when(value).removesuffix(" UTC")


def follower_note(follower: FollowerNow | None) -> str:
    """What a running run's status says about its follower when it is gone (the store's rule,
    via the run_followers view): awaiting adoption, or past the grace awaiting settling."""
    if follower is None or follower.state == "alive":
        return ""
    since = f" since {seconds_utc(follower.lease_expires_at)}" if follower.lease_expires_at else ""
    if follower.state == "lost-pending":
        return f"follower gone{since}, awaiting settling (lost)"
    return f"follower gone{since}, awaiting adoption"


def seconds_utc(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def mem_cell(label: Any) -> str:
    """The seed table's mem label '37.1/64.0' (used/total GiB)."""
    return f"{label} GiB" if label else ""


def metric(value: Any, name: str) -> str:
    """`{{ r.map | metric('map') }}`: the CLI's formatting (orchestrator/units.py)."""
    return units.metric(name, value)


def run_mem(row: Mapping[Any, Any]) -> str:
    """A run's mem cell as `report` and `runs show` print it: `n/a (cpu)` for a CPU run."""
    measured = units.measured_here(row.get("p_core"), row.get("source"))
    return units.mem_cell(row.get("mem"), measured, row.get("mem_source"))


FILTERS = {
    "with_unit": with_unit,
    "metric_value": metric_value,
    "metric_header": metric_header,
    "gib": gib,
    "seconds": seconds,
    "when": when,
    "when_short": when_short,
    "follower_note": follower_note,
    "mem_cell": mem_cell,
    "number": number,
    "metric": metric,
    "run_mem": run_mem,
    "group_mem": group_mem,
}


# -- chart specifications (read by static/app.js) ------------------------------------------------


def chart(
    kind: str,
    x_label: str,
    y_label: str,
    datasets: list[dict[str, Any]],
    labels: Sequence[str] | None = None,
    x_time: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": kind,
        "xLabel": x_label,
        "yLabel": y_label,
        "datasets": datasets,
        "xTime": x_time,
    }
    if labels is not None:
        spec["labels"] = list(labels)
    return spec


def line(label: str, points: Iterable[tuple[float, float | None]], **style: Any) -> dict[str, Any]:
    return {"label": label, "data": [{"x": x, "y": y} for x, y in points], **style}


def epoch_charts(epochs_by_run: Mapping[str, Sequence[Mapping[Any, Any]]]) -> list[dict[str, Any]]:
    """Loss, mAP and per-epoch throughput, one line per run (overlaid on the compare page)."""
    charts = []
    for key, title, unit in (
        ("loss", "training loss", ""),
        ("map", "mAP after each epoch", ""),
        ("p_core", "p_core per epoch", "img/s"),
        ("p_train", "p_train per epoch", "img/s"),
    ):
        datasets = [
            # people count epochs from 1 (as the CLI); the store keeps the workload's 0-based index
            line(run_id, [(e["epoch"] + 1, e[key]) for e in epochs if e[key] is not None])
            for run_id, epochs in epochs_by_run.items()
        ]
        if any(d["data"] for d in datasets):
            y_label = f"{title} ({unit})" if unit else title
            charts.append({"title": title, "xStep": 1, **chart("line", "epoch", y_label, datasets)})
    return charts


def monitor_charts(series: Sequence[Series]) -> list[dict[str, Any]]:
    """One chart per monitor metric, a line per node (and device), x in minutes."""
    by_metric: dict[str, list[Series]] = {}
    for s in series:
        by_metric.setdefault(s.metric, []).append(s)
    charts = []
    for metric, found in sorted(by_metric.items(), key=lambda kv: _metric_order(kv[0])):
        title, unit, scale = MONITOR_METRICS.get(metric, (metric, "", 1.0))
        datasets = [
            line(
                s.node if s.device is None else f"{s.node} device {s.device}",
                [(round(t / 60.0, 3), round(v * scale, 4)) for t, v in s.points],
                pointRadius=0,
            )
            for s in found
        ]
        samples = sum(s.samples for s in found)
        y_label = f"{title} ({unit})" if unit else title
        charts.append(
            {
                "title": f"{title} ({samples:,} samples)",
                **chart("line", "minutes since the first sample", y_label, datasets),
            }
        )
    return charts


def _metric_order(metric: str) -> tuple[int, str]:
    names = list(MONITOR_METRICS)
    return (names.index(metric) if metric in names else len(names), metric)


def scaling_chart(points: Sequence[ScalingPoint], metric: str) -> dict[str, Any]:
    """Mean throughput against devices, one line per series with its dashed ideal line."""
    datasets = []
    series: dict[str, list[ScalingPoint]] = {}
    for p in points:
        series.setdefault(p.series, []).append(p)
    for name, found in series.items():
        datasets.append(line(name, [(p.devices, p.mean) for p in found]))
        datasets.append(
            line(f"{name} ideal", [(p.devices, p.ideal) for p in found], dashed=True, pointRadius=0)
        )
    return chart("line", "devices (nodes x devices per node)", f"{metric} (img/s)", datasets)


def vendors_chart(points: Sequence[ScalingPoint], metric: str) -> dict[str, Any]:
    """Bars: mean throughput per topology, one bar per series."""
    topologies = sorted({(p.devices, p.topology) for p in points})
    labels = [t for _, t in topologies]
    datasets = []
    for name in sorted({p.series for p in points}):
        values = {p.topology: p.mean for p in points if p.series == name}
        datasets.append({"label": name, "data": [values.get(t) for t in labels]})
    return chart("bar", "topology", f"{metric} (img/s)", datasets, labels=labels)


def history_chart(
    rows: Sequence[Mapping[Any, Any]],
    regressions: Mapping[str, Sequence[Regression]],
    metric: str,
    changes: Sequence[ChangePoint] = (),
) -> dict[str, Any]:
    """`metric` of each run against its finish time; flagged runs as a second, red series;
    change points as a third (triangles whose tooltip says what moved and what changed)."""
    points = [
        (r["finished_at"].timestamp() * 1000.0, r[metric], str(r["run_id"]))
        for r in rows
        if r.get(metric) is not None and r.get("finished_at") is not None
    ]
    unit = UNITS.get(metric, "")
    datasets = [
        line(metric, [(x, y) for x, y, _ in points]),
        line(
            "regression",
            [(x, y) for x, y, run_id in points if run_id in regressions],
            showLine=False,
            pointRadius=9,
            pointBorderWidth=3,
            pointStyle="crossRot",
            color="#d62728",
        ),
    ]
    by_run = {run_id: (x, y) for x, y, run_id in points}
    markers = [
        {"x": by_run[p.run_id][0], "y": by_run[p.run_id][1], "note": change_note(p)}
        for p in changes
        if p.run_id in by_run
    ]
    datasets.append(
        {
            "label": "change point",
            "data": markers,
            "showLine": False,
            "pointRadius": 10,
            "pointStyle": "triangle",
            "color": "#ff7f0e",
        }
    )
    y_label = f"{metric_header(metric)}" if unit else metric
    return chart("line", "finished at (UTC)", y_label, datasets, x_time=True)


def change_note(point: ChangePoint) -> str:
    """A change point in one line: what moved, and what changed there."""
    moved = ", ".join(s.describe() for s in point.shifts)
    why = "; ".join(c.describe() for c in point.changes) or "no manifest field changed"
    return f"from {point.run_id}: {moved}; {why}"
