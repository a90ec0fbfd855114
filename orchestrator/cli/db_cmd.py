"""`orchestrator db ...`: create and migrate the results store (Alembic, driven from code)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from orchestrator.cli.context import AppContext
from orchestrator.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator.store.migrate import DowngradeImpact


def _describe(revision: str | None) -> str:
    return revision or "none (empty)"


@click.group("db")
def db() -> None:
    """Create, upgrade or inspect the results database schema.

    \b
    Example: orchestrator --db postgresql://bench@dbhost/results db upgrade
    """


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_obj
def upgrade(app: AppContext, revision: str) -> None:
    """Create the schema, or bring it up to this orchestrator's revision (one transaction).

    \b
    Example: orchestrator --db sqlite:///results.db db upgrade
    """
    from orchestrator.store import upgrade_store

    done = upgrade_store(app.store_url, revision)
    if done.before == done.after:
        click.echo(f"results store at {done.url} is already at revision {_describe(done.after)}")
    else:
        click.echo(
            f"results store at {done.url} upgraded from {_describe(done.before)} to {_describe(done.after)}"
        )


@db.command("downgrade")
@click.argument("revision")
@click.option("--yes", is_flag=True, help="Do not ask: drop what the downgrade removes.")
@click.pass_obj
def downgrade(app: AppContext, revision: str, yes: bool) -> None:
    """Take the schema down to REVISION ('base' drops every table and view: all results).

    Names the store, where its URL came from and how many runs it holds, and asks first;
    without a terminal it needs --yes.

    \b
    Example: orchestrator --db sqlite:///scratch.db db downgrade base --yes
    """
    from orchestrator.store import downgrade_impact, downgrade_store

    impact = downgrade_impact(app.store_url, revision)
    if impact.undone and not yes:
        _confirm_downgrade(app, impact, revision)
    done = downgrade_store(app.store_url, revision)
    click.echo(
        f"results store at {done.url} downgraded from {_describe(done.before)} to {_describe(done.after)}"
    )


@db.command("copy")
@click.option("--to", "target", required=True, help="The store to copy into (URL or file).")
@click.pass_obj
def copy(app: AppContext, target: str) -> None:
    """Copy the whole store (runs, ranks, epochs, nodes, monitors, images, campaigns, status
    history, imported runs) into another one: SQLite to PostgreSQL or back.

    One transaction on the target; rows it already holds are kept, so running the copy again
    adds only what is new. An empty target gets the schema first. Node leases are not copied.

    \b
    Example: orchestrator --db sqlite:///orchestrator.db db copy --to postgresql://bench@db/results
    """
    from orchestrator.store.copy import copy_store

    report = copy_store(app.store_url, target)
    for t in report.tables:
        click.echo(f"{t.table:<20} {t.copied:>9} copied {t.kept:>9} already there")
    copied = sum(t.copied for t in report.tables)
    click.echo(f"results store at {report.source} copied to {report.target}: {copied} row(s)")
    if report.live_runs:
        click.echo(
            f"warning: {report.live_runs} run(s) are queued or running in {report.source}: "
            "their submitters and workers go on writing there; copy again when they ended",
            err=True,
        )


@db.command("rebuild-summaries")
@click.pass_obj
def rebuild_summaries(app: AppContext) -> None:
    """Recompute the configuration summaries, the runs' verdicts (regression flags, convergence
    checks) and the downsampled monitor series from the raw rows, in one transaction. Every
    write keeps them up to date and `db upgrade` rebuilds them for a new version's rules; this
    is for a store changed by hand (SQL) or restored from a dump of some tables only.

    \b
    Example: orchestrator db rebuild-summaries
    """
    from orchestrator.store import open_store
    from orchestrator.store.derived import rebuild_all

    with open_store(app.store_url) as store, store.transaction() as conn:
        configs, flagged, runs = rebuild_all(conn)
    click.echo(
        f"results store at {store.url}: {configs} configuration summar"
        f"{'y' if configs == 1 else 'ies'}, the verdicts of {flagged} flagged run(s) and the "
        f"monitor series of {runs} run(s) rebuilt"
    )


def _interactive() -> bool:
    return sys.stdin.isatty()


def _confirm_downgrade(app: AppContext, impact: DowngradeImpact, revision: str) -> None:
    what = (
        "every table and view"
        if revision == "base"
        else f"what revision(s) {', '.join(impact.undone)} added"
    )
    question = (
        f"db downgrade {revision} drops {what} of the results store at {impact.url} "
        f"({app.store_origin}), which holds {impact.runs} run(s)"
    )
    if not _interactive():
        raise ConfigError(f"{question}; nothing was changed", "add --yes to confirm")
    if not click.confirm(f"{question}. Continue?", default=False, err=True):
        raise ConfigError("db downgrade declined; nothing was changed")


@db.command("current")
@click.pass_obj
def current(app: AppContext) -> None:
    """Show the store's schema revision and the one this orchestrator needs.

    \b
    Example: orchestrator db current
    """
    from orchestrator.store import current_revision, head_revision, redact_url

    revision = current_revision(app.store_url)
    head = head_revision()
    state = "up to date" if revision == head else "out of date: run orchestrator db upgrade"
    click.echo(
        f"results store at {redact_url(app.store_url)}: revision {_describe(revision)} (needs {head}, {state})"
    )


def register(cli: click.Group) -> None:
    cli.add_command(db)
