"""PNG and SVG plots for reports: throughput scaling with the ideal line, a configuration's
history over time, vendors side by side. matplotlib (the `plots` extra) is imported only when a plot is made,
with the Agg backend, so the control plane runs without it and without a display.

Each `*_figure` function returns the Figure (tests inspect its axes); `write_plots` saves them.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ConfigError
from orchestrator.regressions import Regression, config_key
from orchestrator.reports.stats import Group, devices

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


def _hardware(group: Group) -> str:
    return group.config.split(" ", 1)[0] if group.config else group.vendor


def _series_name(group: Group) -> str:
    return f"{_hardware(group)} {group.precision}".strip()


def _configuration(group: Group) -> tuple[str, str, str, str]:
    """What one scaling series holds: the same vendor, hardware, precision and
    hyper-parameters; only the topology changes along it."""
    return (group.vendor, _hardware(group), group.precision, group.fix_hp)


LEGEND_WIDTH = 48  # characters per legend line: long hyper-parameter lists wrap, not overflow


def _wrapped(label: str) -> str:
    return textwrap.fill(label, LEGEND_WIDTH, break_long_words=False, break_on_hyphens=False)


def _configuration_label(key: tuple[str, str, str, str]) -> str:
    _, hardware, precision, fix_hp = key
    hyper = f" ({fix_hp})" if fix_hp and fix_hp != "/" else ""
    return f"{hardware} {precision}{hyper}".strip()


def _legend_inside(ax: Any) -> None:
    if ax.lines or ax.patches:
        ax.legend(fontsize="small", loc="best", framealpha=0.85)


def _device_axis(ax: Any, counts: Sequence[int]) -> None:
    """Integer device counts as ticks on a log2 axis (1, 2, 4, 8, 16 where they were run)."""
    ax.set_xscale("log", base=2)
    ticks = sorted(set(counts)) or [1]
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter([str(t) for t in ticks]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)


def scaling_figure(
    groups: Sequence[Group], metrics: Sequence[str] = ("p_train", "p_core")
) -> Figure:
    """x: total devices (1x1 -> 1, 1x8 -> 8, 2x8 -> 16), y from 0: mean throughput, one line
    per configuration (vendor, hardware, precision, hyper-parameters) and metric; with two or
    more topologies, a dashed ideal line: the smallest topology's per-device value times the
    devices."""
    fig = _figure()
    ax = fig.add_subplot()
    series: dict[tuple[str, str, str, str], list[tuple[int, Group]]] = {}
    for g in groups:
        count = devices(g.topology)
        if count is not None:
            series.setdefault(_configuration(g), []).append((count, g))
    top = 0.0
    for key, points in sorted(series.items()):
        points.sort(key=lambda p: p[0])
        name = _configuration_label(key)
        for metric in metrics:
            measured = [(x, s.mean) for x, g in points if (s := g.stats(metric)) is not None]
            if not measured:
                continue
            xs, ys = zip(*measured)
            (line,) = ax.plot(xs, ys, marker="o", label=_wrapped(f"{name} {metric}"))
            top = max(top, *ys)
            if len(measured) >= 2:
                base_x, base_y = measured[0]
                ideal = [base_y / base_x * x for x in xs]
                top = max(top, *ideal)
                ax.plot(
                    xs,
                    ideal,
                    linestyle="--",
                    color=line.get_color(),
                    alpha=0.6,
                    label=_wrapped(f"{name} {metric} ideal"),
                )
    _device_axis(ax, [x for points in series.values() for x, _ in points])
    ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)
    ax.set_title("Throughput scaling")
    ax.set_xlabel("devices (nodes x devices per node)")
    ax.set_ylabel("throughput (images/s)")
    ax.grid(True, alpha=0.3)
    _legend_inside(ax)
    fig.tight_layout()
    return fig


def _time_axis(ax: Any, times: Sequence[datetime]) -> None:
    """An x axis spanning the data (a tenth of the span either side; half an hour either side
    of a single run), concise dates."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    if not times:
        return
    first, last = min(times), max(times)
    pad = max((last - first) * 0.1, timedelta(minutes=1)) if last > first else timedelta(minutes=30)
    ax.set_xlim(first - pad, last + pad)
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def history_figure(
    history: Sequence[Mapping[Any, Any]],
    regressions: Mapping[str, Sequence[Regression]] | None = None,
    metric: str = "p_core",
) -> Figure:
    """One line per configuration: `metric` of each succeeded run against its finish time
    (y from 0); flagged runs marked with a red x."""
    fig = _figure(9.0, 5.0)
    ax = fig.add_subplot()
    lines: dict[tuple[str, str, str, str], list[Mapping[Any, Any]]] = {}
    for row in history:
        if row.get("finished_at") is not None and row.get(metric) is not None:
            lines.setdefault(config_key(row), []).append(row)
    flagged = regressions or {}
    top = 0.0
    for key, rows in sorted(lines.items()):
        rows = sorted(rows, key=lambda r: (r["finished_at"], str(r["run_id"])))
        top = max(top, *(float(r[metric]) for r in rows))
        ax.plot(
            [r["finished_at"] for r in rows],
            [r[metric] for r in rows],
            marker="o",
            label=_wrapped(f"{key[1]} {key[2]} ({key[3]})"),
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
    _time_axis(ax, [r["finished_at"] for rows in lines.values() for r in rows])
    ax.set_ylim(0, top * 1.1 if top > 0 else 1.0)
    ax.set_title(f"History of {metric} per configuration")
    ax.set_xlabel("finished at (UTC)")
    ax.set_ylabel(f"{metric} (images/s)")
    ax.grid(True, alpha=0.3)
    _legend_inside(ax)
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
    ax.set_ylim(bottom=0)
    ax.set_title(f"Vendors side by side: {metric}")
    ax.set_xlabel("topology")
    ax.set_ylabel(f"{metric} (images/s)")
    ax.grid(True, axis="y", alpha=0.3)
    _legend_inside(ax)
    fig.tight_layout()
    return fig


def write_plots(
    directory: str | Path,
    groups: Sequence[Group],
    history: Sequence[Mapping[Any, Any]],
    regressions: Mapping[str, Sequence[Regression]] | None = None,
) -> list[tuple[str, str]]:
    """Save the three plots into `directory`, each as PNG (linked from the report) and SVG;
    return (title, PNG path) pairs for the report."""
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
        for target, kind in ((path, "png"), (path.with_suffix(".svg"), "svg")):
            tmp = target.with_name(f".{target.name}.tmp")
            fig.savefig(tmp, format=kind)
            tmp.replace(target)  # no half-written file under the final name
        made.append((title, str(path)))
    return made
