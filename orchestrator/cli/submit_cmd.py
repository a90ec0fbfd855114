"""`orchestrator submit` and `orchestrator doctor`."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from orchestrator.cli.context import (
    AppContext,
    open_store_for_submit,
    parse_duration,
    print_outcome,
    runs_folder,
    say,
    stop_on_signals,
)
from orchestrator.states import BACKENDS, PRECISIONS, BackendName, Precision

if TYPE_CHECKING:
    from orchestrator.backends.base import PlannedRun
    from orchestrator.runs.lifecycle import Outcome, SubmitRequest
    from orchestrator.store import Store


def register(cli: click.Group) -> None:
    cli.add_command(submit)
    cli.add_command(doctor)


def detach_from_terminal(log: Path | None) -> None:
    """After SIGHUP: stdout and stderr go to `log` (or nowhere), stdin is /dev/null, so the
    process can go on following its run without a terminal."""
    target = str(log) if log is not None else os.devnull
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


class Hangup:
    """SIGHUP during a foreground submit: the run goes on and this process keeps following it
    in the background (its output in the run folder's submit.log); `orchestrator attach RUN`
    shows its progress again. Said once, then the terminal is let go."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.run_id: str | None = None
        self.seen = False

    def __call__(self) -> None:
        if self.seen:
            return
        self.seen = True
        run_dir = self.folder / self.run_id if self.run_id else None
        log = run_dir / "submit.log" if run_dir is not None and run_dir.is_dir() else None
        where = f"; re-attach with `orchestrator attach {self.run_id}`" if self.run_id else ""
        output = f" (output: {log})" if log else ""
        say(f"\nSIGHUP: the run goes on; this process keeps following it{output}{where}")
        detach_from_terminal(log)


@click.command()
@click.argument("topology")
@click.option(
    "--nodes", "node_names", help="Comma-separated node names (default: the first that fit)."
)
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a hyper-parameter, e.g. --set bs=16 --set lr=0.16.",
)
@click.option(
    "--repeat",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Run N times in a row.",
)
@click.option(
    "--timeout", "timeout", default=None, help="Overall limit per run, e.g. 2h (default: none)."
)
@click.option(
    "--no-progress-timeout",
    default="30m",
    show_default=True,
    help="Stop when rank 0 reports nothing for this long.",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Local run folders [default: $ORCHESTRATOR_RUNS_DIR or ./runs].",
)
@click.option(
    "--dry-run", is_flag=True, help="Print the plan (every node's exact command) and touch nothing."
)
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="Launch over SSH or through Slurm [default: the cluster file's backend].",
)
@click.option(
    "--detach", is_flag=True, help="Queue the run(s) for `orchestrator worker` and return at once."
)
@click.option(
    "--wait",
    "wait_for_nodes",
    is_flag=True,
    help="When another run holds the nodes, wait for them instead of refusing.",
)
@click.pass_obj
def submit(
    app: AppContext,
    topology: str,
    node_names: str | None,
    precision: Precision,
    sets: tuple[str, ...],
    repeat: int,
    timeout: str | None,
    no_progress_timeout: str | None,
    runs_dir: str | None,
    dry_run: bool,
    backend: BackendName | None,
    detach: bool,
    wait_for_nodes: bool,
) -> None:
    """Run the Faster R-CNN benchmark on TOPOLOGY (NODESxPROCESSES, e.g. 2x8).

    Connects to the nodes, checks them (preflight), starts torchrun on all of them at once,
    shows rank 0's progress, stops every node on any failure or Ctrl-C, collects the per-rank
    results into ./runs/RUN_ID and stores them. Exit code 0 only when every run succeeded.

    \b
    Examples:
      orchestrator submit 1x2 --set max_iters=20
      orchestrator --cluster lab.toml submit 2x8 --precision amp --set bs=16 --set lr=0.16
      orchestrator --cluster lab.toml submit 2x8 --dry-run
    """
    from orchestrator import backends
    from orchestrator.plan import parse_sets
    from orchestrator.runs.lifecycle import SubmitRequest
    from orchestrator.specs import Topology

    topo = Topology.parse(topology)
    req = SubmitRequest(
        topology=topo,
        node_names=tuple(n.strip() for n in node_names.split(",") if n.strip())
        if node_names
        else None,
        precision=precision,
        sets=tuple(parse_sets(list(sets)).items()),
        timeout_s=parse_duration(timeout, "--timeout"),
        no_progress_timeout_s=parse_duration(no_progress_timeout, "--no-progress-timeout"),
        command=shlex.join(["orchestrator", *sys.argv[1:]]),
    )
    cluster = app.cluster
    if backend and backend != cluster.backend:
        cluster = dataclasses.replace(cluster, backend=backend)
    chosen = backends.for_cluster(cluster)
    if detach and not dry_run:
        from orchestrator.queue.enqueue import EnqueueItem, detach_hints, enqueue_runs

        items: list[EnqueueItem] = [(cluster, req, {}) for _ in range(repeat)]
        with open_store_for_submit(app) as store:
            ids = enqueue_runs(store, items)
        for run_id in ids:
            click.echo(run_id)
        for hint in detach_hints(items):
            click.echo(hint, err=True)
        return
    if dry_run:
        click.echo(chosen.plan(cluster, req).render(), nl=False)
        return
    _run_repeats(app, req, repeat, runs_dir, lambda: chosen.plan(cluster, req), wait_for_nodes)


def _run_repeats(
    app: AppContext,
    req: SubmitRequest,
    repeat: int,
    runs_dir: str | None,
    make: Callable[[], PlannedRun],
    wait_for_nodes: bool = False,
) -> None:
    """Run the request `repeat` times in a row (stopping early on Ctrl-C); exit 0 only when
    every run succeeded."""
    from orchestrator.runs.lifecycle import raise_for

    console = Console(stderr=True)
    folder = runs_folder(runs_dir)
    hangup = Hangup(folder)
    with open_store_for_submit(app) as store, stop_on_signals(hangup) as stop:
        app.settle_orphans(store, console)
        outcomes = []
        for i in range(repeat):
            planned = make()
            if not wait_for_nodes:
                planned.check_free(store)
            hangup.run_id = planned.job.run_id
            console.print(
                f"[bold]run {planned.job.run_id}[/] ({i + 1}/{repeat}): {req.topology} "
                f"{planned.where()}, {req.precision}"
            )
            outcome = _execute_when_free(
                app, store, console, stop, planned, wait_for_nodes, req, folder
            )
            outcomes.append(outcome)
            _print_outcome(store, outcome)
            if stop.is_set():
                break
    for outcome in outcomes:
        raise_for(outcome)


def _execute_when_free(
    app: AppContext,
    store: Store,
    console: Console,
    stop: threading.Event,
    planned: PlannedRun,
    wait_for_nodes: bool,
    req: SubmitRequest,
    folder: Path,
) -> Outcome:
    """Execute the plan; with --wait, a run that holds the nodes is waited for (and an
    abandoned one settled) instead of refusing."""
    from orchestrator.errors import RunCancelled
    from orchestrator.queue.leases import NodesBusy

    said = False
    while True:
        try:
            return planned.execute(req, store, folder, stop, console)
        except NodesBusy as exc:
            if not wait_for_nodes:
                raise
            if not said:
                console.print(f"[yellow]waiting: {exc.message}[/]")
                said = True
        if stop.wait(5.0):
            raise RunCancelled("stopped while waiting for the nodes", "nothing was started")
        app.settle_orphans(store, console)


def _print_outcome(store: Store, outcome: Outcome) -> None:
    print_outcome(store, outcome.run_id, outcome.status)
    click.echo(f"run folder: {outcome.run_dir}", err=True)


@click.command()
@click.argument("topology", default="")
@click.option("--nodes", "node_names", help="Comma-separated node names (default: every node).")
@click.pass_obj
def doctor(app: AppContext, topology: str, node_names: str | None) -> None:
    """Check that nodes are ready to run TOPOLOGY: reachable, host key known, torch (or Docker),
    accelerators, dataset, weights, disk, InfiniBand. Prints a report per node. On a Slurm
    cluster: Slurm's commands, the controller, the partition, shared_dir, and `sbatch
    --test-only` of the exact job `submit` would send (no job is created).

    \b
    Examples:
      orchestrator doctor
      orchestrator --cluster lab.toml doctor 2x8
    """
    from orchestrator import backends
    from orchestrator.report import console

    ok = backends.for_cluster(app.cluster).doctor(
        app.cluster, topology or None, node_names, console()
    )
    if not ok:
        raise SystemExit(3)
