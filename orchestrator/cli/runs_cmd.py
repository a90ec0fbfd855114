"""`orchestrator ingest`, `runs list|show`, `report` and `query`: the history in the store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from orchestrator.cli.context import AppContext
from orchestrator.cli.output import Output, Section, emit, format_option
from orchestrator.cli.runs_delete import delete_command
from orchestrator.reports.report import fmt, parse_since
from orchestrator.states import PRECISIONS, RUN_STATUSES
from orchestrator.units import sig3

if TYPE_CHECKING:
    from sqlalchemy import Connection

STATUS_CHOICES = click.Choice(RUN_STATUSES)


@click.command("ingest")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--replace",
    is_flag=True,
    help="Replace a stored run whose folder now holds other content (recorded in its history).",
)
@click.pass_obj
def ingest(app: AppContext, run_dirs: tuple[str, ...], replace: bool) -> None:
    """Load run folders (manifest.json + ranks/rank-*.json) into the results store.

    Each folder is checked, then written in a transaction of its own: every good folder is
    stored, each bad one is one line on stderr, and the exit code is 2 if any failed. A
    folder ingested again changes nothing; a stored run whose folder now holds other content
    is refused, naming what differs, unless --replace. Campaign runs bring their campaign.

    \b
    Example: orchestrator ingest runs/*
    """
    from orchestrator.store.ingest import WritePolicy

    policy = WritePolicy(
        replace_published=replace, adopt_campaigns=True, replaced_by="ingest --replace"
    )
    with app.open_store() as store:
        results = store.ingest_each(list(run_dirs), policy)
    failed = 0
    for result in results:
        if isinstance(result, Exception):
            failed += 1
            click.echo(f"error: {result.one_line()}", err=True)
            continue
        what = "stored" if result.changed else "unchanged (already in the store)"
        metrics = f", p_core {sig3(result.metrics.p_core)} img/s" if result.metrics else ""
        click.echo(
            f"{result.run_id}: {result.status}, {result.ranks} rank file(s){metrics}: {what}"
        )
    if failed:
        if len(results) > 1:
            click.echo(f"{len(results) - failed} folder(s) ingested, {failed} failed", err=True)
        raise SystemExit(2)


@click.group("runs")
def runs() -> None:
    """List and inspect the runs in the results store.

    \b
    Example: orchestrator runs list --vendor metax-c500 --since 2026-01-01
    """


LIST_COLUMNS = (
    ("run_id", "run"),
    ("status", "status"),
    ("config", "config"),
    ("precision", "precision"),
    ("fix_hp", "fix_hp"),
    ("p_core", "p_core (img/s)"),
    ("map", "mAP"),
    ("submitted_by", "by"),
    ("submitted_at", "submitted (UTC)"),
    ("reason", "reason"),
)
LIST_KEYS = (*[key for key, _ in LIST_COLUMNS], "finished_at")


@runs.command("list")
@click.option("--vendor", help="Only this vendor (its profile name), e.g. metax-c500.")
@click.option("--topology", help="Only this topology, e.g. 2x8.")
@click.option("--status", type=STATUS_CHOICES, help="Only runs with this status.")
@click.option("--since", help="Submitted on or after: 2026-01-01, an ISO time, or 90d / 12h / 2w.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@format_option()
@click.pass_obj
def list_command(
    app: AppContext,
    vendor: str | None,
    topology: str | None,
    status: str | None,
    since: str | None,
    limit: int,
    output: str,
) -> None:
    """Runs, newest first.

    \b
    Example: orchestrator runs list --topology 2x8 --status failed --since 90d --format json
    """
    from orchestrator.store.queries import list_runs

    since_at = parse_since(since)
    empty = "no runs match"
    with app.open_store() as store:
        app.settle_orphans(store)
        with store.reading() as conn:
            rows = list_runs(conn, vendor, topology, status, since_at, limit)
            if not rows:
                given = {"--vendor": vendor, "--topology": topology, "--status": status}
                empty = _no_runs(conn, {**given, "--since": since})
    cells = [
        [
            r["run_id"],
            r["status"],
            r["config"],
            r["precision"],
            r["fix_hp"],
            sig3(r["p_core"]),
            fmt(r["map"], "{:.3f}"),
            r["submitted_by"],
            fmt(r["submitted_at"]),
            fmt(r["reason"]),
        ]
        for r in rows
    ]
    emit(
        Output(
            [Section(None, [header for _, header in LIST_COLUMNS], cells, empty=empty)],
            [{key: r[key] for key in LIST_KEYS} for r in rows],
            csv_columns=LIST_KEYS,
            csv_rows=[[r[key] for key in LIST_KEYS] for r in rows],
        ),
        output,
    )
    if not rows and output not in ("table", "markdown"):
        click.echo(empty, err=True)  # the table says it; json and csv stay parseable


def _no_runs(conn: Connection, given: dict[str, str | None], what: str = "runs") -> str:
    """The empty result's line, naming the stored values of a filter that matches nothing."""
    from orchestrator.no_match import no_match
    from orchestrator.store.web_queries import filter_options

    options = filter_options(conn)
    stored = {
        "--vendor": options.vendors,
        "--topology": options.topologies,
        "--precision": options.precisions,
    }
    return no_match(what, given, stored)


@runs.command("show")
@click.argument("run")
@format_option()
@click.pass_obj
def show_command(app: AppContext, run: str, output: str) -> None:
    """One run: what was asked, status history, nodes and their environment, ranks, epochs.

    RUN is a run id or an unambiguous prefix of one. Epochs count from 1 here (the store's
    run_epochs.epoch, and --format json, keep the 0-based index).

    \b
    Example: orchestrator runs show 20260114-101500 --format json
    """
    from orchestrator.cli.runs_show import show_output
    from orchestrator.store.queries import run_detail

    with app.open_store() as store:
        app.settle_orphans(store)
        with store.reading() as conn:
            detail = run_detail(conn, run)
    emit(show_output(detail), output)


@click.command("report")
@click.option("--campaign", "campaign_id", help="Only the runs of this campaign.")
@click.option("--vendor", help="Only this vendor (its profile name), e.g. metax-c500.")
@click.option("--topology", help="Only this topology, e.g. 2x8.")
@click.option("--precision", type=click.Choice(PRECISIONS), help="Only this precision.")
@click.option("--since", help="Finished on or after: 2026-01-01, an ISO time, or 90d / 12h / 2w.")
@click.option(
    "--run", "run_ids", multiple=True, help="These runs (any status); repeat for several."
)
@click.option(
    "--group/--no-group",
    default=True,
    show_default=True,
    help="One row per configuration with mean ± 95 % CI and CV over its repeats, or one per run.",
)
@click.option(
    "--olympic",
    is_flag=True,
    help="Add the olympic mean (the fastest and slowest run dropped; below 3 runs, the mean).",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False),
    help="Write PNG plots (scaling, history, vendors) into this folder; the report links them.",
)
@format_option(default="markdown")
@click.pass_obj
def report(
    app: AppContext,
    campaign_id: str | None,
    vendor: str | None,
    topology: str | None,
    precision: str | None,
    since: str | None,
    run_ids: tuple[str, ...],
    group: bool,
    olympic: bool,
    plots_dir: str | None,
    output: str,
) -> None:
    """The seed's table (environment block, then the metrics) for a selection of runs.

    Without --run, only succeeded runs are shown. Repeats of a configuration are aggregated
    unless --no-group; a run clearly below the recent history of its configuration is flagged
    (docs/reports.md).

    \b
    Example: orchestrator report --vendor metax-c500 --topology 2x8 --plots plots/ > c500-2x8.md
    """
    from orchestrator.regressions import config_key, regressions_by_run
    from orchestrator.reports.convergence_reads import convergence_checks
    from orchestrator.reports.report import render_grouped_report, render_report
    from orchestrator.reports.stats import group_rows
    from orchestrator.store.history import campaign_run_ids, configuration_history
    from orchestrator.store.queries import (
        Selection,
        environment,
        resolve_run,
        run_warnings,
        seed_rows,
        with_energy,
    )

    since_at = parse_since(since)
    whole = group and output in ("markdown", "table") and plots_dir is None
    if whole and campaign_id is None and not run_ids and since_at is None:
        text = _whole_report(app, vendor, topology, precision, output, olympic)
        if text is not None:
            click.echo(text, nl=False)
            return
    with app.open_store() as store, store.reading() as conn:
        rows: list[Any] = []
        env = environment(conn, [])
        if campaign_id is not None:
            # The campaign's runs (succeeded ones unless --run names some), as explicit ids.
            chosen = set(campaign_run_ids(conn, campaign_id, None if run_ids else "succeeded"))
            if run_ids:
                chosen &= {resolve_run(conn, ref) for ref in run_ids}
            run_ids = tuple(sorted(chosen))
        selection = Selection(
            vendor=vendor, topology=topology, precision=precision, since=since_at, run_ids=run_ids
        )
        if campaign_id is None or run_ids:  # a campaign without matching runs: empty report
            rows = seed_rows(conn, selection)
            env = environment(conn, selection)
        if not rows and not run_ids and campaign_id is None:
            given = {"--vendor": vendor, "--topology": topology, "--precision": precision}
            click.echo(f"warning: {_no_runs(conn, given, 'succeeded runs')}", err=True)
        history = configuration_history(conn, rows, config_key)
        warnings = run_warnings(conn, [row["run_id"] for row in rows])
        checks = convergence_checks(conn, rows)
        shown = with_energy(conn, rows)  # J per image beside the seed's columns
    convergence = [c for c in checks.values() if c.flagged]
    regressions = regressions_by_run(rows, history)
    groups = group_rows(shown)
    plots: list[tuple[str, str]] = []
    if plots_dir is not None:
        from orchestrator.reports.plots import write_plots

        plots = write_plots(plots_dir, groups, history, regressions)
    if group:
        text = render_grouped_report(
            env, groups, rows, regressions, output, plots, warnings, olympic, convergence
        )
    else:
        text = render_report(env, shown, output, regressions, plots, warnings, convergence)
    click.echo(text, nl=False)


def _whole_report(
    app: AppContext,
    vendor: str | None,
    topology: str | None,
    precision: str | None,
    output: str,
    olympic: bool,
) -> str | None:
    """Every run of each configuration, grouped, from what the store keeps at publish
    (reports/whole_report.py); None while that is not current (the caller reads the runs)."""
    from orchestrator.reports.report import render_grouped_report
    from orchestrator.reports.whole_report import whole_view

    with app.open_store() as store, store.reading() as conn:
        view = whole_view(conn, vendor, topology, precision)
        if view is not None and not view.groups:
            given = {"--vendor": vendor, "--topology": topology, "--precision": precision}
            click.echo(f"warning: {_no_runs(conn, given, 'succeeded runs')}", err=True)
    if view is None:
        return None
    return render_grouped_report(
        view.environment,
        view.groups,
        [],
        view.regressions,
        output,
        (),
        view.warnings,
        olympic,
        view.convergence,
    )


@click.command("query")
@click.argument("sql")
@format_option()
@click.option("--max-rows", type=click.IntRange(1, 10_000_000), default=10_000, show_default=True)
@click.pass_obj
def query(app: AppContext, sql: str, output: str, max_rows: int) -> None:
    """Run one read-only SQL statement against the results store.

    The database refuses writes (SQLite read-only connection; PostgreSQL: a SELECT-only role,
    --read-db, in a READ ONLY transaction; a superuser or any role that may write is refused,
    see docs/security.md). Tables and views are described in docs/schema.md.

    \b
    Example: orchestrator query "SELECT config, max(p_core) FROM seed_table GROUP BY config"
    """
    from orchestrator.store import open_store
    from orchestrator.store.readonly import run_query

    url = app.read_url
    open_store(url).close()  # checks the schema revision first, with its remedy
    result = run_query(url, sql, max_rows)
    emit(
        Output(
            [Section(None, result.columns, [[fmt(v) for v in row] for row in result.rows])],
            [dict(zip(result.columns, row)) for row in result.rows],
            csv_columns=result.columns,
            csv_rows=result.rows,
            footer=[f"{len(result.rows)} row(s)"],
        ),
        output,
    )
    if result.truncated:
        click.echo(f"warning: output stopped at {max_rows} rows (raise --max-rows)", err=True)


runs.add_command(delete_command)


def register(cli: click.Group) -> None:
    cli.add_command(ingest)
    cli.add_command(runs)
    cli.add_command(report)
    cli.add_command(query)
