"""`orchestrator attach RUN`: show a running run's progress again, and adopt it if its
follower (a killed `submit`, a dead worker) is gone."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.console import Console

from orchestrator.cli.context import (
    AppContext,
    print_outcome,
    print_summary,
    runs_folder,
    stop_on_signals,
)

if TYPE_CHECKING:
    from orchestrator.store import Store
    from orchestrator.store.queries import RunBrief

# Ctrl-C / SIGTERM: only a run this attach adopted is stopped; one it watches goes on.
STOP_LINE = "stopping: a run this attach adopted is stopped, a watched one goes on"


def register(cli: click.Group) -> None:
    cli.add_command(attach)


@click.command()
@click.argument("run_id")
@click.option(
    "--runs-dir",
    "folder",
    type=click.Path(file_okay=False),
    default=None,
    help="Local run folders [default: $ORCHESTRATOR_RUNS_DIR or ./runs].",
)
@click.pass_obj
def attach(app: AppContext, run_id: str, folder: str | None) -> None:
    """Show RUN_ID's live progress (rank 0's log) until it ends. A run whose follower is
    gone is adopted: this process then follows it like its submit did (Ctrl-C cancels it; a
    Slurm job is left to Slurm and the next worker), collects and stores it. While another
    process follows the run, Ctrl-C only stops watching. Exit 0 only when the run succeeded
    (or when watching stopped with the run still going).

    \b
    Example: orchestrator attach 20261201-203000-1a2b3c
    """
    from orchestrator import backends
    from orchestrator.runs.lifecycle import follower_id

    console = Console(stderr=True)
    holder = follower_id("attach")
    with app.open_store() as store:
        brief = _run_of(store, run_id)
        if brief.status == "running":
            with stop_on_signals(announce=STOP_LINE) as stop:
                backend = backends.by_name(brief.backend)
                backend.attach(store, run_id, holder, runs_folder(folder), stop, console)
            brief = _run_of(store, run_id)
        if brief.status == "running":  # Ctrl-C while another process follows it
            click.echo(f"stopped watching run {run_id}; it goes on", err=True)
            return
        print_outcome(store, run_id, brief.status)
        print_summary(store, run_id, runs_folder(folder) / run_id)
    reason = brief.reason
    if reason and brief.status != "succeeded":
        click.echo(f"run {run_id}: {brief.status} ({reason})", err=True)
    if brief.status != "succeeded":
        raise SystemExit(1)


def _run_of(store: Store, run_id: str) -> RunBrief:
    from orchestrator.store.leases import QueueError
    from orchestrator.store.queries import run_brief

    with store.reading() as conn:
        brief = run_brief(conn, run_id)
    if brief is None:
        raise QueueError(
            f"no run {run_id} in results store at {store.url}", "check `orchestrator runs list`"
        )
    return brief
