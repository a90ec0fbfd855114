"""`orchestrator db ...`: create and migrate the results store (Alembic, driven from code)."""

from __future__ import annotations

import click

from orchestrator.cli.context import AppContext


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
@click.pass_obj
def downgrade(app: AppContext, revision: str) -> None:
    """Take the schema down to REVISION ('base' drops every table and view: all results).

    \b
    Example: orchestrator --db sqlite:///scratch.db db downgrade base
    """
    from orchestrator.store import downgrade_store

    done = downgrade_store(app.store_url, revision)
    click.echo(
        f"results store at {done.url} downgraded from {_describe(done.before)} to {_describe(done.after)}"
    )


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
