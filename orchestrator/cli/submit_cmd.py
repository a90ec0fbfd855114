"""`orchestrator submit` and `orchestrator doctor`."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from orchestrator.cli.context import AppContext, runs_folder
from orchestrator.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | None, option: str) -> float | None:
    if text is None or text in ("", "none", "0"):
        return None
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"{option} {text!r} is not a duration", "write e.g. 90s, 45m or 2h")
    return float(match.group(1)) * _UNITS[match.group(2)]


def register(cli: click.Group) -> None:
    cli.add_command(submit)
    cli.add_command(doctor)


@contextmanager
def stop_on_signals(on_hangup: Callable[[], None] | None = None) -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM set an event the launcher checks every poll; it then stops all nodes.
    SIGHUP (a closed terminal) calls `on_hangup` instead, when given: the run goes on."""
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        if not stop.is_set():
            _say(f"\n{signal.Signals(signum).name}: stopping the run on every node…")
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    if on_hangup is not None:
        old[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda _s, _f: on_hangup())
    try:
        yield stop
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _say(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass  # the terminal is gone


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
        _say(f"\nSIGHUP: the run goes on; this process keeps following it{output}{where}")
        detach_from_terminal(log)


def open_store_for_submit(app: AppContext) -> Any:
    """A SQLite store that does not exist yet is created on first use (the embedded default
    works out of the box); an existing store of any kind must be upgraded explicitly
    (`orchestrator db upgrade`), so a lab's database never changes behind its back."""
    from orchestrator.store import open_store
    from orchestrator.store.engine import parse_url

    url = app.store_url
    parsed = parse_url(url)
    new_file = parsed.get_backend_name() == "sqlite" and not Path(str(parsed.database)).exists()
    return open_store(url, create=new_file)


@click.command()
@click.argument("topology")
@click.option(
    "--nodes", "node_names", help="Comma-separated node names (default: the first that fit)."
)
@click.option(
    "--precision", type=click.Choice(["fp32", "amp", "fp16"]), default="fp32", show_default=True
)
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
    type=click.Choice(["ssh", "slurm"]),
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
    precision: str,
    sets: tuple[str, ...],
    repeat: int,
    timeout: str | None,
    no_progress_timeout: str | None,
    runs_dir: str | None,
    dry_run: bool,
    backend: str | None,
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
    from orchestrator.plan import parse_sets
    from orchestrator.specs import Topology
    from orchestrator.submit import SubmitRequest, execute, make_plan

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
    if detach and not dry_run:
        from orchestrator.cli.campaign_cmd import SLURM_HINT, enqueue_runs

        with open_store_for_submit(app) as store:
            ids = enqueue_runs(store, [(cluster, req, {}) for _ in range(repeat)])
        for run_id in ids:
            click.echo(run_id)
        if cluster.backend == "slurm":
            click.echo(SLURM_HINT, err=True)
        return
    if cluster.backend == "slurm":
        _submit_slurm(app, cluster, req, repeat, runs_dir, dry_run)
        return
    if dry_run:
        click.echo(make_plan(cluster, req).render(), nl=False)
        return
    _run_repeats(
        app, req, repeat, runs_dir, lambda: make_plan(cluster, req), execute, "", wait_for_nodes
    )


def _submit_slurm(
    app: AppContext, cluster: Any, req: Any, repeat: int, runs_dir: str | None, dry_run: bool
) -> None:
    """The same submission through Slurm (orchestrator/slurm): one job per run."""
    from orchestrator.slurm.execute import execute, make_slurm_plan

    if dry_run:
        click.echo(make_slurm_plan(cluster, req).render(), nl=False)
        return
    _run_repeats(
        app, req, repeat, runs_dir, lambda: make_slurm_plan(cluster, req), execute, "Slurm"
    )


def _run_repeats(
    app: AppContext,
    req: Any,
    repeat: int,
    runs_dir: str | None,
    make: Callable[[], Any],
    execute: Callable[..., Any],
    through: str,
    wait_for_nodes: bool = False,
) -> None:
    """Run the request `repeat` times in a row (stopping early on Ctrl-C); exit 0 only when
    every run succeeded."""
    from orchestrator.queue.leases import check_nodes_free
    from orchestrator.submit import raise_for

    console = Console(stderr=True)
    folder = runs_folder(runs_dir)
    hangup = Hangup(folder)
    with open_store_for_submit(app) as store, stop_on_signals(hangup) as stop:
        app.settle_orphans(store, console)
        outcomes = []
        for i in range(repeat):
            plan = make()
            if not through and not wait_for_nodes:
                check_nodes_free(store, plan.job.cluster.name, [n.node.name for n in plan.nodes])
            hangup.run_id = plan.job.run_id
            where = (
                f"through {through}"
                if through
                else "on " + ", ".join(n.node.name for n in plan.nodes)
            )
            console.print(
                f"[bold]run {plan.job.run_id}[/] ({i + 1}/{repeat}): {req.topology} {where}, "
                f"{req.precision}"
            )
            outcome = _execute_when_free(
                app, store, console, stop, plan, wait_for_nodes, execute, req, folder
            )
            outcomes.append(outcome)
            _print_outcome(store, outcome)
            if stop.is_set():
                break
    for outcome in outcomes:
        raise_for(outcome)


def _execute_when_free(
    app: AppContext,
    store: Any,
    console: Console,
    stop: threading.Event,
    plan: Any,
    wait_for_nodes: bool,
    execute: Callable[..., Any],
    req: Any,
    folder: Path,
) -> Any:
    """Execute the plan; with --wait, a run that holds the nodes is waited for (and an
    abandoned one settled) instead of refusing."""
    from orchestrator.errors import RunCancelled
    from orchestrator.queue.leases import NodesBusy

    said = False
    while True:
        try:
            return execute(plan, req, store, folder, stop, console)
        except NodesBusy as exc:
            if not wait_for_nodes:
                raise
            if not said:
                console.print(f"[yellow]waiting: {exc.message}[/]")
                said = True
        if stop.wait(5.0):
            raise RunCancelled("stopped while waiting for the nodes", "nothing was started")
        app.settle_orphans(store, console)


def _print_outcome(store: Any, outcome: Any) -> None:
    print_outcome(store, outcome.run_id, outcome.status)
    click.echo(f"run folder: {outcome.run_dir}", err=True)


def print_outcome(store: Any, run_id: str, status: str) -> None:
    """A succeeded run's row of the seed table, with its environment above it."""
    from orchestrator.report import render_report
    from orchestrator.store.queries import Selection, environment, seed_rows

    if status == "succeeded":
        with store.reading() as conn:
            rows = seed_rows(conn, Selection(run_ids=(run_id,)))
            env = environment(conn, [run_id])
        click.echo(render_report(env, rows, "markdown"), nl=False)


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
    from orchestrator.doctor import run_doctor
    from orchestrator.report import console

    if app.cluster.backend == "slurm":
        from orchestrator.slurm.doctor import run_slurm_doctor

        if node_names:
            raise ConfigError(
                "--nodes does not apply to the slurm backend", "Slurm chooses the nodes"
            )
        ok = run_slurm_doctor(app.cluster, topology or None, console())
    else:
        ok = run_doctor(app.cluster, topology or None, node_names, console())
    if not ok:
        raise SystemExit(3)
