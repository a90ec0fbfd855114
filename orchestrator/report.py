"""The seed's table and its environment block, as markdown, CSV or JSON; tables for the terminal.

Pure formatting: rows come from orchestrator.store.queries. The markdown matches the vendor case
page the project grew from (shared/seed/...): an environment block, then one row per run with
config, precision, fix_hp, e2e_time, p_whole, p_train, p_core, mAP and mem.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from orchestrator.errors import ConfigError
from orchestrator.report_stats import METRICS, Group, Regression

# Column -> (header, format). e2e_time in seconds, throughputs in images/s, mem in GiB.
SEED_HEADERS: tuple[tuple[str, str, str], ...] = (
    ("config", "config", "{}"),
    ("precision", "precision", "{}"),
    ("fix_hp", "fix_hp", "{}"),
    ("e2e_time", "e2e_time", "{:.0f}"),
    ("p_whole", "p_whole", "{:.1f}"),
    ("p_train", "p_train", "{:.1f}"),
    ("p_core", "p_core", "{:.1f}"),
    ("map", "mAP", "{:.3f}"),
    ("mem", "mem", "{}"),
    ("run_id", "run", "{}"),
)
REPORT_FORMATS = ("markdown", "csv", "json")
# Per-run keys that CSV and JSON carry after the seed's columns; markdown folds mem_source into
# the mem cell.
EXTRA_KEYS = ("mem_source", "source")


def mem_cell(mem: Any, source: Any) -> str:
    """'37.1/64.0 (device)': which figure mem is, the SMI tool's or the allocator's."""
    if not mem:
        return ""
    return f"{mem} ({source})" if source else str(mem)


def fmt(value: Any, pattern: str = "{}") -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    try:
        return pattern.format(value)
    except (ValueError, TypeError):
        return str(value)


def render_report(
    environment: Sequence[tuple[str, list[str]]],
    rows: Sequence[Mapping[Any, Any]],
    output: str = "markdown",
    regressions: Mapping[str, Sequence[Regression]] | None = None,
    plots: Sequence[tuple[str, str]] = (),
) -> str:
    """One row per run. Regressions and plots are listed below the markdown table."""
    if output == "markdown":
        extra = _regression_lines(regressions or {}) + _plot_lines(plots)
        return _markdown(environment, rows) + "".join(line + "\n" for line in extra)
    keys = [key for key, _, _ in SEED_HEADERS] + list(EXTRA_KEYS)
    if output == "csv":
        return to_csv(keys, [[row.get(key) for key in keys] for row in rows])
    if output == "json":
        document = {
            "environment": {label: values for label, values in environment},
            "runs": [{key: row.get(key) for key in keys} for row in rows],
        }
        return to_json(document)
    raise ConfigError(
        f"unknown report format {output!r}", f"use one of {', '.join(REPORT_FORMATS)}"
    )


def _markdown(
    environment: Sequence[tuple[str, list[str]]], rows: Sequence[Mapping[Any, Any]]
) -> str:
    lines = ["#### Environment", ""]
    for label, values in environment:
        lines.append(f"- {label}: {'; '.join(values) if values else 'not recorded'}")
    lines += ["", "#### Metrics", ""]
    lines.append("| " + " | ".join(header for _, header, _ in SEED_HEADERS) + " |")
    lines.append("| " + " | ".join("---" for _ in SEED_HEADERS) + " |")
    for row in rows:
        cells = [
            mem_cell(row.get("mem"), row.get("mem_source"))
            if key == "mem"
            else fmt(row.get(key), pattern)
            for key, _, pattern in SEED_HEADERS
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if not rows:
        lines.append("")
        lines.append("No runs match this selection.")
    return "\n".join(lines) + "\n"


# Grouped report: the seed's columns, each metric as mean ± sd (min-max) over the repeats.
GROUP_KEYS = ("config", "precision", "fix_hp")
_METRIC_PATTERNS = {key: pattern for key, _, pattern in SEED_HEADERS if key in METRICS}


def _spread_cell(group: Group, metric: str) -> str:
    stats = group.stats(metric)
    if stats is None:
        return ""
    pattern = _METRIC_PATTERNS[metric]
    if stats.n == 1 or stats.sd is None:
        return pattern.format(stats.mean)
    return (
        f"{pattern.format(stats.mean)} ± {pattern.format(stats.sd)} "
        f"({pattern.format(stats.min)}–{pattern.format(stats.max)})"
    )


def _group_flag(group: Group, regressions: Mapping[str, Sequence[Regression]]) -> str:
    found = [r for run_id in group.run_ids for r in regressions.get(run_id, ())]
    return "; ".join(f"{r.run_id}: {r.metric} -{r.drop:.0%}" for r in found)


def render_grouped_report(
    environment: Sequence[tuple[str, list[str]]],
    groups: Sequence[Group],
    rows: Sequence[Mapping[Any, Any]],
    regressions: Mapping[str, Sequence[Regression]],
    output: str = "markdown",
    plots: Sequence[tuple[str, str]] = (),
) -> str:
    """Repeats aggregated per configuration; `rows` (one per run) go into the JSON as well."""
    if output == "markdown":
        return _grouped_markdown(environment, groups, regressions, plots)
    if output == "csv":
        columns = [*GROUP_KEYS, "n"]
        for metric in METRICS:
            columns += [metric, f"{metric}_sd", f"{metric}_min", f"{metric}_max"]
        columns += ["mem", "mem_source", "run_id", "regression"]  # run_id: space-separated
        data = []
        for g in groups:
            line: list[Any] = [g.config, g.precision, g.fix_hp, g.n]
            for metric in METRICS:
                s = g.stats(metric)
                line += [s.mean, s.sd, s.min, s.max] if s else [None] * 4
            line += [g.mem, g.mem_source, " ".join(g.run_ids), _group_flag(g, regressions)]
            data.append(line)
        return to_csv(columns, data)
    if output == "json":
        document = {
            "environment": {label: values for label, values in environment},
            "groups": [
                {
                    "vendor": g.vendor,
                    "topology": g.topology,
                    "config": g.config,
                    "precision": g.precision,
                    "fix_hp": g.fix_hp,
                    "n": g.n,
                    **{m: (s.as_dict() if (s := g.stats(m)) else None) for m in METRICS},
                    "mem": g.mem,
                    "mem_source": g.mem_source,
                    "run_ids": g.run_ids,
                }
                for g in groups
            ],
            "runs": [
                {key: row.get(key) for key in [k for k, _, _ in SEED_HEADERS] + list(EXTRA_KEYS)}
                for row in rows
            ],
            "regressions": [
                {
                    "run_id": r.run_id,
                    "metric": r.metric,
                    "value": r.value,
                    "history_mean": r.history_mean,
                    "history_sd": r.history_sd,
                    "history_n": r.history_n,
                }
                for found in regressions.values()
                for r in found
            ],
            "plots": {title: path for title, path in plots},
        }
        return to_json(document)
    raise ConfigError(
        f"unknown report format {output!r}", f"use one of {', '.join(REPORT_FORMATS)}"
    )


def _grouped_markdown(
    environment: Sequence[tuple[str, list[str]]],
    groups: Sequence[Group],
    regressions: Mapping[str, Sequence[Regression]],
    plots: Sequence[tuple[str, str]],
) -> str:
    lines = ["#### Environment", ""]
    for label, values in environment:
        lines.append(f"- {label}: {'; '.join(values) if values else 'not recorded'}")
    lines += ["", "#### Metrics", ""]
    headers = [header for key, header, _ in SEED_HEADERS if key != "run_id"]
    lines.append("| " + " | ".join([*headers, "n", "regression"]) + " |")
    lines.append("| " + " | ".join("---" for _ in range(len(headers) + 2)) + " |")
    for g in groups:
        cells = [g.config, g.precision, g.fix_hp]
        cells += [_spread_cell(g, metric) for metric in METRICS]
        cells += [mem_cell(g.mem, g.mem_source), str(g.n), _group_flag(g, regressions)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if not groups:
        lines += ["", "No runs match this selection."]
    else:
        lines += [
            "",
            "Cells are mean ± sample standard deviation (min–max) over the n repeats of a "
            "configuration; mem is the peak over them, from the accelerator tool (device) or "
            "the ranks' allocator (allocator).",
        ]
    lines += _regression_lines(regressions)
    lines += _plot_lines(plots)
    return "\n".join(lines) + "\n"


def _regression_lines(regressions: Mapping[str, Sequence[Regression]]) -> list[str]:
    found = [r for runs in regressions.values() for r in runs]
    if not found:
        return []
    return ["", "#### Regressions", "", *[f"- {r.run_id}: {r.describe()}" for r in found]]


def _plot_lines(plots: Sequence[tuple[str, str]]) -> list[str]:
    if not plots:
        return []
    return ["", "#### Plots", "", *[f"![{title}]({path})" for title, path in plots]]


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def to_json(document: Any) -> str:
    return json.dumps(document, indent=2, default=_plain, allow_nan=False) + "\n"


def to_csv(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else _plain(v) for v in row])
    return buffer.getvalue()


def console() -> Console:
    """Rich output; wide enough when piped so that tables are not squeezed to 80 columns."""
    terminal = sys.stdout.isatty()
    return Console(width=None if terminal else 200, soft_wrap=not terminal, highlight=False)


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    out = Table(title=title, title_justify="left", show_lines=False)
    for name in columns:
        out.add_column(name, overflow="fold")
    for row in rows:
        out.add_row(*[fmt(v) for v in row])
    return out


_RELATIVE = re.compile(r"^(\d+)\s*([dhw])$")


def parse_since(text: str | None, now: datetime | None = None) -> datetime | None:
    """'2026-01-01', '2026-01-01T08:00:00+01:00', or a relative '90d', '12h', '2w' (UTC)."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    match = _RELATIVE.match(value)
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        delta = {
            "d": timedelta(days=amount),
            "h": timedelta(hours=amount),
            "w": timedelta(weeks=amount),
        }[unit]
        return (now or datetime.now(timezone.utc)) - delta
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is not a date",
            "write a date like 2026-01-01, a time like 2026-01-01T08:00:00+00:00, or 90d / 12h / 2w",
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
