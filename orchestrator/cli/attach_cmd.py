"""`orchestrator attach RUN`: show a running run's progress again, and adopt it if its
follower (a killed `submit`, a dead worker) is gone."""

from __future__ import annotations

import os

import click
from rich.console import Console

from orchestrator.cli.context import AppContext, runs_folder
from orchestrator.store import Store


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
    from orchestrator.cli.submit_cmd import print_outcome, stop_on_signals
    from orchestrator.queue import leases
    from orchestrator.queue.adoption import adopt_run, watch
    from orchestrator.submit import submitter

    console = Console(stderr=True)
    holder = f"attach {submitter()} pid {os.getpid()}"
    with app.open_store() as store:
        status, backend = _run_of(store, run_id)
        with stop_on_signals() as stop:
            if backend == "slurm" and status == "running":
                from orchestrator.slurm.attach import attach_slurm

                attach_slurm(store, run_id, holder, runs_folder(folder), stop, console)
                status, _ = _run_of(store, run_id)
            while status == "running" and not stop.is_set():
                orphans = leases.find_orphans(store, run_id=run_id)
                if orphans:
                    ttl = leases.follower_ttl_s(
                        leases.cluster_from(orphans[0].request).follower_grace_s
                    )
                    adopt_run(store, orphans[0], holder, runs_folder(folder), stop, console, ttl)
                else:
                    watch(store, run_id, console, stop)
                status, _ = _run_of(store, run_id)
        if status == "running":  # Ctrl-C while another process follows it
            click.echo(f"stopped watching run {run_id}; it goes on", err=True)
            return
        print_outcome(store, run_id, status)
        reason = _reason_of(store, run_id)
    click.echo(f"run {run_id}: {status}" + (f" ({reason})" if reason else ""), err=True)
    if status != "succeeded":
        raise SystemExit(1)


def _reason_of(store: Store, run_id: str) -> str | None:
    from sqlalchemy import select

    from orchestrator.store.models import Run

    with store.reading() as conn:
        return conn.scalar(select(Run.reason).where(Run.run_id == run_id))


def _run_of(store: Store, run_id: str) -> tuple[str, str]:
    from sqlalchemy import select

    from orchestrator.queue.leases import QueueError
    from orchestrator.store.models import Run

    with store.reading() as conn:
        row = conn.execute(select(Run.status, Run.backend).where(Run.run_id == run_id)).first()
    if row is None:
        raise QueueError(
            f"no run {run_id} in results store at {store.url}", "check `orchestrator runs list`"
        )
    return str(row.status), str(row.backend)
