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
) -> str:
    if output == "markdown":
        return _markdown(environment, rows)
    if output == "csv":
        return to_csv(
            [key for key, _, _ in SEED_HEADERS],
            [[row.get(key) for key, _, _ in SEED_HEADERS] for row in rows],
        )
    if output == "json":
        document = {
            "environment": {label: values for label, values in environment},
            "runs": [{key: row.get(key) for key, _, _ in SEED_HEADERS} for row in rows],
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
        cells = [fmt(row.get(key), pattern).replace("|", "\\|") for key, _, pattern in SEED_HEADERS]
        lines.append("| " + " | ".join(cells) + " |")
    if not rows:
        lines.append("")
        lines.append("No runs match this selection.")
    return "\n".join(lines) + "\n"


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
