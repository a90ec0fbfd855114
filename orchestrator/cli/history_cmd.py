"""`orchestrator history CONFIG`: a configuration's level, how sure it is, and its change points
with the manifest fields that changed there."""

from __future__ import annotations

import click

from orchestrator.cli.context import AppContext
from orchestrator.reports.history_report import HISTORY_FORMATS
from orchestrator.reports.stats import METRICS


@click.command("history")
@click.argument("config")
@click.option(
    "--metric",
    type=click.Choice(METRICS),
    default="p_core",
    show_default=True,
    help="The metric the summary lines show (change points watch p_core, p_train, p_whole, map).",
)
@click.option("--since", help="Finished on or after: 2026-01-01, an ISO time, or 90d / 12h / 2w.")
@click.option(
    "--format", "output", type=click.Choice(HISTORY_FORMATS), default="table", show_default=True
)
@click.pass_obj
def history(app: AppContext, config: str, metric: str, since: str | None, output: str) -> None:
    """The history of configuration CONFIG (VENDOR:TOPOLOGY:PRECISION[:FIX_HP]): its mean,
    95 % interval and CV over all runs and since the last change point, and every change point
    (where p_core, p_train, p_whole or mAP moved) with the manifest fields that changed there
    (docs/reports.md).

    \b
    Examples:
      orchestrator history metax-c500:2x8:amp
      orchestrator history nvidia:1x8:fp32:/ --format json
    """
    from orchestrator.reports.compare_sides import resolve_configuration
    from orchestrator.reports.history_changes import load_history
    from orchestrator.reports.history_report import (
        CHANGE_COLUMNS,
        change_rows,
        history_document,
        summary_lines,
    )
    from orchestrator.reports.report import console, parse_since, table, to_json

    since_at = parse_since(since)
    with app.open_store() as store, store.reading() as conn:
        found = load_history(conn, resolve_configuration(conn, config), since_at)
    if output == "json":
        click.echo(to_json(history_document(found)), nl=False)
        return
    out = console()
    for line in summary_lines(found, metric):
        out.print(line, markup=False)
    if found.points:
        out.print(table("change points", CHANGE_COLUMNS, change_rows(found)))


def register(cli: click.Group) -> None:
    cli.add_command(history)
