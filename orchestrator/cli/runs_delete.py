"""`orchestrator runs delete`: remove runs from the history, deliberately (a summary, then a
question, or --yes)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from orchestrator.cli.context import AppContext
from orchestrator.errors import ConfigError
from orchestrator.reports.report import fmt, parse_since
from orchestrator.states import RUN_STATUSES

if TYPE_CHECKING:
    from sqlalchemy.engine import RowMapping

SHOWN = 20  # runs listed before the question; the rest are counted


@click.command("delete")
@click.argument("runs", nargs=-1)
@click.option("--status", type=click.Choice(RUN_STATUSES), help="Only runs with this status.")
@click.option("--vendor", help="Only this vendor, e.g. metax-c500.")
@click.option("--topology", help="Only this topology, e.g. 2x8.")
@click.option("--before", help="Submitted before: 2026-02-01, an ISO time, or 30d / 12h / 2w ago.")
@click.option("--since", help="Submitted on or after: 2026-01-01, an ISO time, or 90d.")
@click.option("--reason", help="Only runs whose failure reason contains this text.")
@click.option(
    "--not-started",
    is_flag=True,
    help="Only runs that ended before the workload started (refused by the preflight, "
    "e.g. a mistyped --data-dir, or stopped while staging).",
)
@click.option("--dry-run", is_flag=True, help="Show what would be deleted and delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask (needed without a terminal).")
@click.pass_obj
def delete_command(
    app: AppContext,
    runs: tuple[str, ...],
    status: str | None,
    vendor: str | None,
    topology: str | None,
    before: str | None,
    since: str | None,
    reason: str | None,
    not_started: bool,
    dry_run: bool,
    yes: bool,
) -> None:
    """Delete runs from the results store: each run with its status history, nodes, rank
    results, epochs, monitor samples and leases, all in one transaction.

    RUNS are run ids (or unambiguous prefixes); the options select runs, or narrow the runs
    named. Queued and running runs are refused (cancel them first). Shows what will go and
    asks; without a terminal it needs --yes. Run folders on disk are kept.

    \b
    Examples:
      orchestrator runs delete 20260115-131500
      orchestrator runs delete --status failed --not-started --before 2026-02-01
      orchestrator runs delete --status failed --reason 'dataset:' --yes
    """
    from orchestrator.store.delete import (
        DeleteSelection,
        delete_runs,
        refuse_active,
        selected_runs,
    )

    selection = DeleteSelection(
        run_refs=runs,
        status=status,
        vendor=vendor,
        topology=topology,
        before=parse_since(before, option="--before"),
        since=parse_since(since),
        reason=reason,
        not_started=not_started,
    )
    with app.open_store() as store:
        with store.reading() as conn:
            rows = selected_runs(conn, selection)
        if not rows:
            click.echo("no runs match; nothing was deleted", err=True)
            return
        refuse_active(rows)
        summary = f"{_summary(rows)} from the results store at {store.url} ({app.store_origin})"
        _show(rows)
        if dry_run:
            click.echo(f"dry run: would delete {summary}; nothing was deleted", err=True)
            return
        if not yes:
            _confirm(summary)
        with store.transaction() as conn:
            removed = delete_runs(conn, [str(r["run_id"]) for r in rows])
    children = sum(n for table, n in removed.items() if table != "runs")
    click.echo(f"deleted {removed['runs']} run(s) and {children} row(s) that belonged to them")


def _summary(rows: Sequence[RowMapping]) -> str:
    """Count, statuses and date range: what the person confirms."""
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[str(row["status"])] = by_status.get(str(row["status"]), 0) + 1
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
    first, last = fmt(rows[0]["submitted_at"]), fmt(rows[-1]["submitted_at"])
    span = first if first == last else f"{first} to {last}"
    return f"{len(rows)} run(s) ({statuses}; submitted {span})"


def _show(rows: Sequence[RowMapping]) -> None:
    for row in rows[:SHOWN]:
        why = f"  {row['reason']}" if row["reason"] else ""
        click.echo(f"  {row['run_id']}  {row['status']}  {fmt(row['submitted_at'])}{why}", err=True)
    if len(rows) > SHOWN:
        click.echo(f"  ... and {len(rows) - SHOWN} more", err=True)


def _interactive() -> bool:
    return sys.stdin.isatty()


def _confirm(summary: str) -> None:
    if not _interactive():
        raise ConfigError(
            f"runs delete would delete {summary}; nothing was deleted", "add --yes to confirm"
        )
    if not click.confirm(f"Delete {summary}?", default=False, err=True):
        raise ConfigError("runs delete declined; nothing was deleted")
