"""PNG plots for reports: throughput scaling with the ideal line, a configuration's history over
time, vendors side by side. matplotlib (the `plots` extra) is imported only when a plot is made,
with the Agg backend, so the control plane runs without it and without a display.

Each `*_figure` function returns the Figure (tests inspect its axes); `write_plots` saves them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError
from orchestrator.report_stats import (
    Group,
    Regression,
    ScalingPoint,
    config_key,
    devices,
    scaling_points,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SCALING_FILE = "throughput-scaling.png"
HISTORY_FILE = "history.png"
VENDORS_FILE = "vendors.png"


def _figure(width: float = 8.0, height: float = 5.0) -> Figure:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            "plots need matplotlib, which is not installed",
            "pip install 'orchestrator[plots]', or leave out --plots",
        ) from None
    return Figure(figsize=(width, height), dpi=100)


def _series_name(group: Group) -> str:
    hardware = group.config.split(" ", 1)[0] if group.config else group.vendor
    return f"{hardware} {group.precision}".strip()


def scaling_figure(
    groups: Sequence[Group], metrics: Sequence[str] = ("p_train", "p_core")
) -> Figure:
    """x: total devices (1x1 -> 1, 1x8 -> 8, 2x8 -> 16), y: mean throughput, one line per
    hardware/precision and metric; dashed ideal line = the smallest topology's per-device value
    times the devices (the 1x1 value x devices when 1x1 was run)."""
    fig = _figure()
    ax = fig.add_subplot()
    measured = [
        (f"{_series_name(g)} {metric}", g.topology, s.mean)
        for metric in metrics
        for g in groups
        if (s := g.stats(metric)) is not None
    ]
    lines: dict[str, list[ScalingPoint]] = {}
    for point in scaling_points(measured):
        lines.setdefault(point.series, []).append(point)
    for name, points in lines.items():
        xs = [p.devices for p in points]
        (line,) = ax.plot(xs, [p.mean for p in points], marker="o", label=name)
        ax.plot(
            xs,
            [p.ideal for p in points],
            linestyle="--",
            color=line.get_color(),
            alpha=0.6,
            label=f"{name} ideal",
        )
    ax.set_title("Throughput scaling")
    ax.set_xlabel("devices (nodes x devices per node)")
    ax.set_ylabel("throughput (images/s)")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def history_figure(
    history: Sequence[Mapping[Any, Any]],
    regressions: Mapping[str, Sequence[Regression]] | None = None,
    metric: str = "p_core",
) -> Figure:
    """One line per configuration: `metric` of each succeeded run against its finish time;
    flagged runs marked with a red x."""
    fig = _figure(9.0, 5.0)
    ax = fig.add_subplot()
    lines: dict[tuple[str, str, str, str], list[Mapping[Any, Any]]] = {}
    for row in history:
        if row.get("finished_at") is not None and row.get(metric) is not None:
            lines.setdefault(config_key(row), []).append(row)
    flagged = regressions or {}
    for key, rows in sorted(lines.items()):
        rows = sorted(rows, key=lambda r: (r["finished_at"], str(r["run_id"])))
        ax.plot(
            [r["finished_at"] for r in rows],
            [r[metric] for r in rows],
            marker="o",
            label=f"{key[1]} {key[2]} ({key[3]})",
        )
        bad = [r for r in rows if str(r["run_id"]) in flagged]
        if bad:
            ax.plot(
                [r["finished_at"] for r in bad],
                [r[metric] for r in bad],
                linestyle="none",
                marker="x",
                markersize=12,
                color="red",
                label="regression",
            )
    ax.set_title(f"History of {metric} per configuration")
    ax.set_xlabel("finished at (UTC)")
    ax.set_ylabel(f"{metric} (images/s)")
    ax.grid(True, alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    fig.autofmt_xdate()
    fig.tight_layout()
    return fig


def vendors_figure(groups: Sequence[Group], metric: str = "p_core") -> Figure:
    """Bars: mean `metric` per topology (x groups), one bar per hardware/precision, sd as error bar."""
    fig = _figure()
    ax = fig.add_subplot()
    topologies = sorted({g.topology for g in groups}, key=lambda t: (devices(t) or 0, t))
    names = sorted({_series_name(g) for g in groups})
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs, ys, errs = [], [], []
        for j, topology in enumerate(topologies):
            for g in groups:
                s = g.stats(metric)
                if _series_name(g) == name and g.topology == topology and s is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(s.mean)
                    errs.append(s.sd or 0.0)
        if xs:
            ax.bar(xs, ys, width=width, yerr=errs, capsize=3, label=name)
    ax.set_xticks(range(len(topologies)), topologies)
    ax.set_title(f"Vendors side by side: {metric}")
    ax.set_xlabel("topology")
    ax.set_ylabel(f"{metric} (images/s)")
    ax.grid(True, axis="y", alpha=0.3)
    if names:
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def write_plots(
    directory: str | Path,
    groups: Sequence[Group],
    history: Sequence[Mapping[Any, Any]],
    regressions: Mapping[str, Sequence[Regression]] | None = None,
) -> list[tuple[str, str]]:
    """Save the three plots into `directory`; return (title, path) pairs for the report."""
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the plots folder {out}: {exc.strerror}", "pass a writable --plots DIR"
        ) from None
    made = []
    for title, name, fig in (
        ("throughput scaling", SCALING_FILE, scaling_figure(groups)),
        ("history over time", HISTORY_FILE, history_figure(history, regressions)),
        ("vendors side by side", VENDORS_FILE, vendors_figure(groups)),
    ):
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        fig.savefig(tmp, format="png")
        tmp.replace(path)  # no half-written PNG under the final name
        made.append((title, str(path)))
    return made
