"""`orchestrator campaign submit`, `worker`, `queue`, `cancel`: runs that run unattended."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from orchestrator.cli.context import (
    AppContext,
    command_line,
    open_store_for_submit,
    parse_duration,
    runs_folder,
    stop_on_signals,
)
from orchestrator.cli.output import Output, Section, emit, format_option
from orchestrator.config import tomllib

if TYPE_CHECKING:
    pass


def register(cli: click.Group) -> None:
    cli.add_command(campaign)
    cli.add_command(worker)
    cli.add_command(queue)
    cli.add_command(cancel)


@click.group()
def campaign() -> None:
    """Queue a matrix of runs from a campaign file (see docs/campaigns.md)."""


@campaign.command("submit")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Print the expansion and queue nothing.")
@click.pass_obj
def campaign_submit(app: AppContext, file: str, dry_run: bool) -> None:
    """Queue every run of campaign FILE; `orchestrator worker` executes them.

    \b
    Examples:
      orchestrator campaign submit nightly.toml --dry-run
      orchestrator --cluster lab.toml campaign submit nightly.toml
    """
    from orchestrator.campaign import check_runs, expand, load_campaign, render_expansion
    from orchestrator.config import load_cluster

    spec = load_campaign(file)
    runs = expand(spec)
    clusters = {c: (load_cluster(c) if c else app.cluster) for c in spec.clusters}
    check_runs(spec, runs, clusters)  # the dry run checks what the real submit checks
    default_cluster = app.cluster_file or "<--cluster>"
    if dry_run:
        click.echo(render_expansion(spec, runs, default_cluster), nl=False)
        return
    _queue_campaign(app, spec, runs, file, clusters)


def _queue_campaign(
    app: AppContext, spec: Any, runs: Any, file: str, clusters: dict[str | None, Any]
) -> None:
    from orchestrator.cli import with_global_options
    from orchestrator.plan import new_run_id
    from orchestrator.queue.enqueue import detach_hints, detached_counts, enqueue_runs
    from orchestrator.runs.lifecycle import SubmitRequest, submitter

    campaign_id = new_run_id(salt=spec.name)
    command = command_line()
    items = []
    for run in runs:
        req = SubmitRequest(
            topology=run.topology,
            node_names=spec.nodes,
            precision=run.precision,
            sets=run.sets,
            timeout_s=spec.timeout_s,
            no_progress_timeout_s=spec.no_progress_timeout_s,
            command=command,
            campaign_id=campaign_id,
        )
        extra: dict[str, Any] = {"set_name": run.set_name, "repeat": run.repeat}
        if spec.repeat_rule is not None:
            extra["repeat_rule"] = spec.repeat_rule.as_doc()
        items.append((clusters[run.cluster], req, extra))
    raw = tomllib.loads(Path(file).read_text(encoding="utf-8"))
    with open_store_for_submit(app) as store:
        ids = enqueue_runs(store, items, (campaign_id, spec.name, raw, submitter()))
    counts = ", ".join(f"{n} run(s) {how}" for how, n in detached_counts(items))
    click.echo(f"campaign {campaign_id}: {counts}")
    for rid in ids:
        click.echo(rid)
    for hint in detach_hints(items):
        click.echo(with_global_options(hint, app), err=True)


@click.command()
@click.option("--once", is_flag=True, help="Run at most one queued run, then exit.")
@click.option("--max-runs", type=click.IntRange(1), default=None, help="Exit after N runs.")
@click.option(
    "--idle-exit", default=None, help="Exit after the queue was empty this long, e.g. 30s."
)
@click.option("--id", "worker_id", default=None, help="Worker name in leases [default: host:pid].")
@click.option("--lease-ttl", type=click.FloatRange(3, 3600), default=60.0, show_default=True)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Local run folders [default: $ORCHESTRATOR_RUNS_DIR or ./runs].",
)
@click.pass_obj
def worker(
    app: AppContext,
    once: bool,
    max_runs: int | None,
    idle_exit: str | None,
    worker_id: str | None,
    lease_ttl: float,
    runs_dir: str | None,
) -> None:
    """Execute queued runs one at a time, holding their nodes' leases; reconcile runs whose
    worker died. Several workers may share one store. Ctrl-C stops the current run and exits.

    \b
    Examples:
      orchestrator --db postgresql://lab@db/results worker
      orchestrator worker --idle-exit 5m
    """
    from orchestrator.queue.worker import run_worker
    from orchestrator.runs.keeper import default_worker_id

    console = Console(stderr=True)
    holder = worker_id or default_worker_id()
    folder = runs_folder(runs_dir)
    idle = parse_duration(idle_exit, "--idle-exit")
    # A worker never creates a store: one that is missing is a mistyped URL, not a new lab.
    with app.open_store() as store, stop_on_signals() as stop:
        console.print(f"worker {holder} on {store.url}")
        counts = run_worker(
            store,
            holder,
            folder,
            stop,
            console,
            once=once,
            max_runs=max_runs,
            idle_exit_s=idle,
            ttl_s=lease_ttl,
        )
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    click.echo(f"worker {holder}: {summary}")


QUEUE_KEYS = ("run_id", "status", "topology", "cluster", "detail")


@click.command()
@format_option()
@click.pass_obj
def queue(app: AppContext, output: str) -> None:
    """Show queued runs (and why each waits) and running runs (worker, nodes, lease expiry).

    \b
    Example: orchestrator queue --format json
    """
    from orchestrator import backends
    from orchestrator.queue.claims import nodes_of, read_queue
    from orchestrator.schedule import schedule
    from orchestrator.store.queries import running_runs
    from orchestrator.store.queue import read_busy

    with app.open_store() as store:
        app.settle_orphans(store)
        with store.reading() as conn:
            queued = read_queue(conn)
            busy = read_busy(conn)
            running = running_runs(conn)
            described: dict[str, str] = {}
            for backend in backends.all_backends():
                for run_id, detail in backend.describe_running(conn).items():
                    described.setdefault(run_id, detail)
    decisions = {d.run_id: d for d in schedule(queued, busy, nodes_of)}
    rows: list[list[str]] = []
    for run in running:
        detail = described.get(run.run_id, "started by `orchestrator submit`")
        rows.append([run.run_id, "running", run.topology, run.cluster, detail])
    for q in queued:
        d = decisions[q.run_id]
        detail = d.reason or f"ready: nodes {', '.join(d.nodes or ())} free"
        rows.append([q.run_id, "queued", str(q.request["topology"]), q.cluster, detail])
    emit(
        Output(
            [
                Section(
                    None, ["run", "status", "topology", "cluster", "detail"], rows, "(queue empty)"
                )
            ],
            [dict(zip(QUEUE_KEYS, row)) for row in rows],
            csv_columns=QUEUE_KEYS,
            csv_rows=rows,
        ),
        output,
    )


@click.command()
@click.argument("run_id")
@click.pass_obj
def cancel(app: AppContext, run_id: str) -> None:
    """Cancel RUN_ID: a queued run at once; a running one is stopped by whoever follows it
    (its submit, a worker, an attach), or, if its follower is gone, its nodes are cleaned
    here (processes and containers) and it is marked cancelled."""
    from orchestrator import backends
    from orchestrator.runs.lifecycle import submitter
    from orchestrator.store.leases import QueueError
    from orchestrator.store.queries import run_brief

    with app.open_store() as store:
        with store.reading() as conn:
            brief = run_brief(conn, run_id)
        if brief is None:
            raise QueueError(
                f"no run {run_id} in results store at {store.url}", "check `orchestrator queue`"
            )
        backend = backends.by_name(brief.backend)
        result = backend.cancel(store, run_id, submitter(), runs_folder(), Console(stderr=True))
    click.echo(f"run {run_id}: {result}")
