"""One output convention for every command that lists or shows things:
`--format table|markdown|csv|json` (`md` for markdown). A command builds its sections (a title,
columns, rows of display cells) and one JSON document (full precision, stable keys, described
in docs/output.md); `emit` writes the chosen format to stdout."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from orchestrator.reports.report import console, table, to_csv, to_json

FORMATS = ("table", "markdown", "csv", "json")
_ALIASES = {"md": "markdown"}
F = TypeVar("F", bound=Callable[..., Any])


class FormatChoice(click.Choice):
    """The four formats; `md` is accepted for markdown."""

    def __init__(self, formats: Sequence[str] = FORMATS) -> None:
        super().__init__(list(formats), case_sensitive=False)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = str(value).strip().lower()
        return super().convert(_ALIASES.get(text, text), param, ctx)


def format_option(default: str = "table") -> Callable[[F], F]:
    return click.option(
        "--format",
        "output",
        type=FormatChoice(),
        default=default,
        show_default=True,
        help="table (for people), markdown (md), csv or json (full precision; docs/output.md).",
    )


@dataclass
class Section:
    """One table of a command's output: cells already formatted for people."""

    title: str | None
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    empty: str = ""  # said instead of an empty table (table and markdown)


@dataclass
class Output:
    sections: list[Section]
    document: Any  # what --format json prints
    csv_columns: Sequence[str] | None = None  # csv of one table with machine values
    csv_rows: Sequence[Sequence[Any]] = field(default_factory=list)
    footer: list[str] = field(default_factory=list)  # lines after the table (table, markdown)


def emit(output: Output, fmt: str) -> None:
    if fmt == "json":
        click.echo(to_json(output.document), nl=False)
    elif fmt == "csv":
        click.echo(_csv(output), nl=False)
    elif fmt == "markdown":
        click.echo(markdown(output), nl=False)
    else:
        out = console()
        for section in output.sections:
            if not section.rows and section.empty:
                out.print(section.empty)
            elif section.rows or section.columns:
                out.print(table(section.title, section.columns, section.rows))
        for line in output.footer:
            out.print(line, markup=False, highlight=False)


def _csv(output: Output) -> str:
    """One table: its columns. Several: long form, one line per cell (section,row,field,value)."""
    if output.csv_columns is not None:
        return to_csv(output.csv_columns, output.csv_rows)
    if len(output.sections) == 1:
        only = output.sections[0]
        return to_csv(only.columns, only.rows)
    long_rows = [
        [section.title or "", i, column, value]
        for section in output.sections
        for i, row in enumerate(section.rows)
        for column, value in zip(section.columns, row)
    ]
    return to_csv(["section", "row", "field", "value"], long_rows)


def _cell(value: Any) -> str:
    return ("" if value is None else str(value)).replace("|", "\\|").replace("\n", " ")


def markdown(output: Output) -> str:
    lines: list[str] = []
    for section in output.sections:
        if section.title:
            lines += [f"#### {section.title}", ""]
        if not section.rows and section.empty:
            lines += [section.empty, ""]
            continue
        lines.append("| " + " | ".join(_cell(c) for c in section.columns) + " |")
        lines.append("| " + " | ".join("---" for _ in section.columns) + " |")
        lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in section.rows]
        lines.append("")
    lines += output.footer
    return "\n".join(lines).rstrip("\n") + "\n"
