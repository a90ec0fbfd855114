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
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator import units
from orchestrator.clock import utcnow
from orchestrator.convergence import Convergence
from orchestrator.errors import ConfigError
from orchestrator.regressions import Regression
from orchestrator.reports.stats import METRICS, AnyGroup, Group

# Column -> (header for people, formatter). Units in the headers; times to 0.1 s, throughputs to
# 3 significant digits, mAP to 3 decimals; CSV and JSON keep the stored values (docs/output.md).
Formatter = Callable[[Any], str]


def _text(value: Any) -> str:
    return fmt(value)


SEED_HEADERS: tuple[tuple[str, str, Formatter], ...] = (
    ("config", "config", _text),
    ("precision", "precision", _text),
    ("fix_hp", "fix_hp", _text),
    ("e2e_time", "e2e_time (s)", units.seconds),
    ("p_whole", "p_whole (img/s)", units.sig3),
    ("p_train", "p_train (img/s)", units.sig3),
    ("p_core", "p_core (img/s)", units.sig3),
    ("map", "mAP", units.map3),
    ("mem", "mem (GiB)", _text),
    ("run_id", "run", _text),
)
REPORT_FORMATS = ("table", "markdown", "csv", "json")
# Per-run keys that CSV and JSON carry after the seed's columns; the human formats fold
# mem_source into the mem cell. The energy keys (store.queries.with_energy) are None for runs
# whose monitors sampled no power.
EXTRA_KEYS = ("mem_source", "source", "energy_j", "energy_per_image_j", "power_coverage")
# Shown after the seed's columns, never in their place, when some run of the table has them.
ENERGY_HEADERS: tuple[tuple[str, str, Formatter], ...] = (
    ("energy_per_image_j", "J/image", units.sig3),
    ("power_coverage", "power coverage", lambda v: "" if v is None else f"{float(v):.0%}"),
)


def fmt(value: Any, pattern: str = "{}") -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    try:
        return pattern.format(value)
    except (ValueError, TypeError):
        return str(value)


def _measured_here(row: Mapping[Any, Any]) -> bool:
    return units.measured_here(row.get("p_core"), row.get("source"))


def seed_cells(row: Mapping[Any, Any]) -> list[str]:
    """One run's row of the seed's table, for people."""
    cells = [formatter(row.get(key)) for key, _, formatter in SEED_HEADERS]
    mem_at = [key for key, _, _ in SEED_HEADERS].index("mem")
    cells[mem_at] = units.mem_cell(row.get("mem"), _measured_here(row), row.get("mem_source"))
    return cells


def render_report(
    environment: Sequence[tuple[str, list[str]]],
    rows: Sequence[Mapping[Any, Any]],
    output: str = "markdown",
    regressions: Mapping[str, Sequence[Regression]] | None = None,
    plots: Sequence[tuple[str, str]] = (),
    warnings: Mapping[str, Sequence[str]] | None = None,
    convergence: Sequence[Convergence] = (),
) -> str:
    """One row per run. Warnings, regressions, convergence flags and plots are listed below the
    markdown table."""
    if output in ("markdown", "table"):
        extra = _warning_lines(warnings or {}) + _regression_lines(regressions or {})
        extra += convergence_lines(convergence) + _plot_lines(plots)
        headers = [header for _, header, _ in SEED_HEADERS]
        body = [seed_cells(row) for row in rows]
        if any(row.get("energy_per_image_j") is not None for row in rows):
            headers += [header for _, header, _ in ENERGY_HEADERS]
            body = [
                cells + [formatter(row.get(key)) for key, _, formatter in ENERGY_HEADERS]
                for cells, row in zip(body, rows)
            ]
        if output == "table":
            return _terminal(environment, headers, body, extra)
        return _markdown(environment, headers, body) + "".join(line + "\n" for line in extra)
    if output == "csv":
        keys = [key for key, _, _ in SEED_HEADERS] + list(EXTRA_KEYS)
        return to_csv(keys, [[row.get(key) for key in keys] for row in rows])
    if output == "json":
        document = {
            "environment": {label: values for label, values in environment},
            "runs": [_run_document(row) for row in rows],
            "warnings": {run_id: list(found) for run_id, found in (warnings or {}).items()},
            "convergence": [c.as_dict() for c in convergence],
        }
        return to_json(document)
    raise ConfigError(
        f"unknown report format {output!r}", f"use one of {', '.join(REPORT_FORMATS)}"
    )


def _run_document(row: Mapping[Any, Any]) -> dict[str, Any]:
    """One run in the JSON report: the seed's columns, then EXTRA_KEYS, at full precision."""
    return {key: row.get(key) for key in [k for k, _, _ in SEED_HEADERS] + list(EXTRA_KEYS)}


def _environment_lines(environment: Sequence[tuple[str, list[str]]]) -> list[str]:
    return [
        f"- {label}: {'; '.join(values) if values else 'not recorded'}"
        for label, values in environment
    ]


def _markdown(
    environment: Sequence[tuple[str, list[str]]],
    headers: Sequence[str],
    body: Sequence[Sequence[str]],
) -> str:
    lines = ["#### Environment", "", *_environment_lines(environment), "", "#### Metrics", ""]
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("| " + " | ".join("---" for _ in headers) + " |")
    for cells in body:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if not body:
        lines.append("")
        lines.append("No runs match this selection.")
    return "\n".join(lines) + "\n"


def _terminal(
    environment: Sequence[tuple[str, list[str]]],
    headers: Sequence[str],
    body: Sequence[Sequence[str]],
    extra: Sequence[str],
) -> str:
    """The report as a terminal table (--format table), captured as text."""
    out = Console(width=200, record=True, file=io.StringIO(), highlight=False)
    out.print("Environment", style="bold")
    for line in _environment_lines(environment):
        out.print(line, markup=False)
    out.print(table("Metrics", headers, body) if body else "No runs match this selection.")
    for line in extra:
        out.print(line, markup=False)
    return out.export_text()


# Grouped report: the seed's columns, each metric as mean ± sd (min-max) over the repeats.
GROUP_KEYS = ("config", "precision", "fix_hp")
_METRIC_FORMATS = {key: formatter for key, _, formatter in SEED_HEADERS if key in METRICS}


def _spread_cell(group: AnyGroup, metric: str, olympic: bool = False) -> str:
    """`mean ± half-width of the 95 % interval (CV)`, the mean alone for one run; with
    `olympic`, the olympic mean after it."""
    found = group.interval(metric)
    if found is None:
        return ""
    show = _METRIC_FORMATS.get(metric, units.sig3)
    cell = show(found.mean)
    if found.half_width is not None and found.cv is not None:
        cell += f" ± {show(found.half_width)} (CV {found.cv * 100:.1f}%)"
    top = group.olympic(metric)
    if olympic and top is not None:
        cell += f" [olympic {show(top.mean)}]"
    return cell


def metric_fields(group: AnyGroup, metric: str, olympic: bool = False) -> dict[str, Any]:
    """One metric of a configuration for CSV and JSON: n, mean, sd, min, max, the 95 %
    interval, its half-width in % of the mean, CV (and the olympic mean on request)."""
    spread, found = group.stats(metric), group.interval(metric)
    fields: dict[str, Any] = dict.fromkeys(METRIC_FIELDS)
    if spread is not None and found is not None:
        fields.update(spread.as_dict())
        fields.update(found.as_dict())
    if olympic:
        top = group.olympic(metric)
        fields["olympic"] = top.mean if top else None
    return fields


# The keys of metric_fields, in the order CSV columns carry them (`p_core_ci_low`, ...).
METRIC_FIELDS = ("n", "mean", "sd", "min", "max", "ci_low", "ci_high", "ci_half_pct", "cv")


def _spread_values(group: AnyGroup, metric: str) -> list[Any]:
    s = group.stats(metric)
    return [s.mean, s.sd, s.min, s.max] if s else [None] * 4


def _group_flag(group: AnyGroup, regressions: Mapping[str, Sequence[Regression]]) -> str:
    found = group.flags(regressions)
    return "; ".join(f"{r.run_id}: {r.metric} -{r.drop:.0%}" for r in found)


def render_grouped_report(
    environment: Sequence[tuple[str, list[str]]],
    groups: Sequence[AnyGroup],
    rows: Sequence[Mapping[Any, Any]],
    regressions: Mapping[str, Sequence[Regression]],
    output: str = "markdown",
    plots: Sequence[tuple[str, str]] = (),
    warnings: Mapping[str, Sequence[str]] | None = None,
    olympic: bool = False,
    convergence: Sequence[Convergence] = (),
) -> str:
    """Repeats aggregated per configuration; `rows` (one per run) go into the JSON as well.
    SummaryGroups (whole configurations from their summaries) only in markdown and table: CSV
    and JSON list each group's runs."""
    energy = _has_energy(groups)
    if output in ("markdown", "table"):
        return _grouped_text(
            environment, groups, regressions, plots, output, warnings or {}, olympic, convergence
        )
    listed = [_with_runs(g) for g in groups]
    if output == "csv":
        columns = [*GROUP_KEYS, "n"]
        names = METRIC_FIELDS + (("olympic",) if olympic else ())
        for metric in METRICS:
            columns += [metric if name == "mean" else f"{metric}_{name}" for name in names]
        columns += ["mem", "mem_source", "run_id", "regression"]  # run_id: space-separated
        columns += [f"{ENERGY_METRIC}{end}" for end in ("", "_sd", "_min", "_max")] * energy
        data = []
        for g in listed:
            line: list[Any] = [g.config, g.precision, g.fix_hp, g.n]
            for metric in METRICS:
                line += list(metric_fields(g, metric, olympic).values())
            line += [g.mem, g.mem_source, " ".join(g.run_ids), _group_flag(g, regressions)]
            if energy:  # after the seed's columns
                line += _spread_values(g, ENERGY_METRIC)
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
                    **{
                        m: (metric_fields(g, m, olympic) if g.interval(m) else None)
                        for m in METRICS
                    },
                    "mem": g.mem,
                    "mem_source": g.mem_source,
                    "run_ids": g.run_ids,
                    **(
                        {ENERGY_METRIC: (s.as_dict() if (s := g.stats(ENERGY_METRIC)) else None)}
                        if energy
                        else {}
                    ),
                }
                for g in listed
            ],
            "runs": [_run_document(row) for row in rows],
            "regressions": [r.as_dict() for found in regressions.values() for r in found],
            "plots": {title: path for title, path in plots},
            "warnings": {run_id: list(found) for run_id, found in (warnings or {}).items()},
            "convergence": [c.as_dict() for c in convergence],
        }
        return to_json(document)
    raise ConfigError(
        f"unknown report format {output!r}", f"use one of {', '.join(REPORT_FORMATS)}"
    )


def _with_runs(group: AnyGroup) -> Group:
    if not isinstance(group, Group):
        raise TypeError("a grouped CSV or JSON report lists the runs: build it from their rows")
    return group


GROUPED_NOTE = (
    "Cells are mean ± half-width of the 95 % confidence interval (Student's t) over the n "
    "repeats of a configuration, with the coefficient of variation (sd / mean); mem is the peak "
    "over them, from the accelerator tool (device) or the ranks' allocator (allocator)."
)
OLYMPIC_NOTE = (
    " The olympic mean drops the fastest and the slowest run (below 3 runs it is the plain mean)."
)
ENERGY_METRIC = "energy_per_image_j"  # grouped like the seed's metrics, after them


def _has_energy(groups: Sequence[AnyGroup]) -> bool:
    """Whether the grouped report gets its J/image columns: some run of it has the figure."""
    return any(g.stats(ENERGY_METRIC) is not None for g in groups)


def group_mem(group: AnyGroup) -> str:
    """A configuration's mem cell: its peak, or `n/a (cpu)` when its runs keep no memory
    statistics (the web's seed table shows the same)."""
    return units.mem_cell(group.mem, group.measured, group.mem_source)


def group_cells(
    group: AnyGroup, regressions: Mapping[str, Sequence[Regression]], olympic: bool = False
) -> list[str]:
    """One configuration's row of the grouped table, for people."""
    cells = [group.config, group.precision, group.fix_hp]
    cells += [_spread_cell(group, metric, olympic) for metric in METRICS]
    cells += [group_mem(group), str(group.n), _group_flag(group, regressions)]
    return cells


def _grouped_text(
    environment: Sequence[tuple[str, list[str]]],
    groups: Sequence[AnyGroup],
    regressions: Mapping[str, Sequence[Regression]],
    plots: Sequence[tuple[str, str]],
    output: str,
    warnings: Mapping[str, Sequence[str]],
    olympic: bool,
    convergence: Sequence[Convergence],
) -> str:
    headers = [header for key, header, _ in SEED_HEADERS if key != "run_id"] + ["n", "regression"]
    body = [group_cells(g, regressions, olympic) for g in groups]
    if _has_energy(groups):  # J per image beside the seed's columns, never in their place
        headers.append("J/image")
        body = [cells + [_spread_cell(g, ENERGY_METRIC)] for cells, g in zip(body, groups)]
    extra: list[str] = []
    if groups:
        extra += ["", GROUPED_NOTE + (OLYMPIC_NOTE if olympic else "")]
    extra += _warning_lines(warnings) + _regression_lines(regressions)
    extra += convergence_lines(convergence) + _plot_lines(plots)
    if output == "table":
        return _terminal(environment, headers, body, extra)
    return _markdown(environment, headers, body) + "".join(line + "\n" for line in extra)


def _warning_lines(warnings: Mapping[str, Sequence[str]]) -> list[str]:
    """What some runs must be read with (sockets where IB was meant, mem from the allocator)."""
    lines = [f"- {run_id}: {w}" for run_id, found in warnings.items() for w in found]
    return ["", "#### Warnings", "", *lines] if lines else []


def _regression_lines(regressions: Mapping[str, Sequence[Regression]]) -> list[str]:
    found = [r for runs in regressions.values() for r in runs]
    if not found:
        return []
    return ["", "#### Regressions", "", *[f"- {r.run_id}: {r.describe()}" for r in found]]


def convergence_lines(convergence: Sequence[Convergence]) -> list[str]:
    """Runs that got faster or slower while converging differently (docs/metrics.md)."""
    if not convergence:
        return []
    return ["", "#### Convergence", "", *[f"- {c.describe()}" for c in convergence]]


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
        # Text, not markup: a value like '[red]' from the store is shown as it is.
        out.add_row(*[Text(fmt(v)) for v in row])
    return out


_RELATIVE = re.compile(r"^(\d+)\s*([dhw])$")


def parse_since(
    text: str | None, now: datetime | None = None, option: str = "--since"
) -> datetime | None:
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
        return (now or utcnow()) - delta
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{option} {text!r} is not a date",
            "write a date like 2026-01-01, a time like 2026-01-01T08:00:00+00:00, or 90d / 12h / 2w",
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
