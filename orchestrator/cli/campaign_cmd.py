"""`orchestrator campaign submit`, `worker`, `queue`, `cancel`: runs that run unattended."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from orchestrator.cli.context import AppContext, runs_folder
from orchestrator.config import tomllib


def register(cli: click.Group) -> None:
    cli.add_command(campaign)
    cli.add_command(worker)
    cli.add_command(queue)
    cli.add_command(cancel)


SLURM_HINT = (
    "Slurm queues the submitted jobs; `orchestrator worker` follows them and stores their results"
)


def enqueue_runs(
    store: Any,
    items: list[tuple[Any, Any, dict[str, Any]]],
    campaign_row: tuple[str, str, dict[str, Any], str] | None = None,
) -> list[str]:
    """(cluster, SubmitRequest, extra request fields) -> run ids, all in one transaction: a
    campaign is queued whole or not at all. Runs on SSH clusters are queued for workers; runs
    on Slurm clusters are submitted as held jobs, recorded `running` with their job ids, then
    released: Slurm queues them, and a worker follows them (docs/slurm.md)."""
    from orchestrator.queue import leases
    from orchestrator.slurm import follows
    from orchestrator.slurm.detached import held_jobs
    from orchestrator.slurm.execute import make_slurm_plan, slurm_manifest
    from orchestrator.submit import make_plan, manifest_for

    queued, slurm, order = [], [], []
    data_cache: dict[str, Any] = {}
    for cluster, req, extra in items:
        if cluster.source not in data_cache:
            data_cache[cluster.source] = leases.cluster_file_data(cluster)
        doc = leases.request_for(cluster, req, data_cache[cluster.source], **extra)
        # Every run is planned now: topology, nodes and precision fail here, not later.
        if cluster.backend == "slurm":
            splan = make_slurm_plan(cluster, req)
            manifest = slurm_manifest(splan, req, "running", None, submitted_at=leases.now_utc())
            slurm.append((splan, manifest, doc))
        else:
            manifest = manifest_for(
                make_plan(cluster, req), req, "queued", submitted_at=leases.now_utc()
            )
            queued.append((manifest, doc))
        order.append(manifest.run_id)
    with held_jobs([plan for plan, _, _ in slurm]) as job_ids, store.transaction() as conn:
        if campaign_row:
            leases.insert_campaign(conn, *campaign_row)
        for manifest, doc in queued:
            leases.enqueue(conn, manifest, doc)
        for (_, manifest, doc), job_id in zip(slurm, job_ids):
            follows.insert_submitted(conn, manifest, doc, job_id)
    return order


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
    from orchestrator.campaign import expand, load_campaign, render_expansion

    spec = load_campaign(file)
    runs = expand(spec)
    default_cluster = app.cluster_file or "<--cluster>"
    if dry_run:
        click.echo(render_expansion(spec, runs, default_cluster), nl=False)
        return
    _queue_campaign(app, spec, runs, file)


def _queue_campaign(app: AppContext, spec: Any, runs: Any, file: str) -> None:
    from orchestrator.cli.submit_cmd import open_store_for_submit
    from orchestrator.config import load_cluster
    from orchestrator.plan import new_run_id
    from orchestrator.submit import SubmitRequest, submitter

    clusters = {c: (load_cluster(c) if c else app.cluster) for c in spec.clusters}
    campaign_id = new_run_id(salt=spec.name)
    command = shlex.join(["orchestrator", *sys.argv[1:]])
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
        items.append((clusters[run.cluster], req, {"set_name": run.set_name, "repeat": run.repeat}))
    raw = tomllib.loads(Path(file).read_text(encoding="utf-8"))
    with open_store_for_submit(app) as store:
        ids = enqueue_runs(store, items, (campaign_id, spec.name, raw, submitter()))
    on_slurm = sum(1 for cluster, _, _ in items if cluster.backend == "slurm")
    click.echo(
        f"campaign {campaign_id}: {len(ids) - on_slurm} run(s) queued, "
        f"{on_slurm} run(s) submitted to Slurm"
    )
    for rid in ids:
        click.echo(rid)
    if on_slurm:
        click.echo(SLURM_HINT, err=True)


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
    from orchestrator.cli.submit_cmd import open_store_for_submit, parse_duration, stop_on_signals
    from orchestrator.queue.worker import default_worker_id, run_worker

    console = Console(stderr=True)
    holder = worker_id or default_worker_id()
    folder = runs_folder(runs_dir)
    idle = parse_duration(idle_exit, "--idle-exit")
    with open_store_for_submit(app) as store, stop_on_signals() as stop:
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


@click.command()
@click.pass_obj
def queue(app: AppContext) -> None:
    """Show queued runs (and why each waits) and running runs (worker, nodes, lease expiry)."""
    from sqlalchemy import select

    from orchestrator.queue import leases
    from orchestrator.slurm import follows
    from orchestrator.store.models import NodeLease, Run

    with app.open_store() as store:
        app.settle_orphans(store)
        with store.reading() as conn:
            queued = leases.read_queue(conn)
            busy = leases.read_busy(conn)
            running = conn.execute(
                select(
                    Run.run_id,
                    Run.topology,
                    Run.cluster,
                    Run.slurm_job_id,
                    Run.request.is_not(None).label("queued"),
                )
                .where(Run.status == "running")
                .order_by(Run.submitted_at)
            ).all()
            held = conn.execute(
                select(
                    NodeLease.run_id, NodeLease.node_name, NodeLease.holder, NodeLease.expires_at
                )
            ).all()
            followed = follows.followers(conn)
    decisions = {d.run_id: d for d in leases.schedule(queued, busy, leases.nodes_of)}
    click.echo(f"{'run':<40} {'status':<8} {'topology':<8} {'cluster':<12} detail")
    for run_id, topo, cluster, job_id, was_queued in running:
        mine = [h for h in held if h[0] == run_id]
        if mine:
            who = mine[0][2] if mine[0][2].startswith("submit ") else f"worker {mine[0][2]}"
            until = max(h[3] for h in mine)
            when = until.isoformat(timespec="seconds")
            state = f"lease until {when}"
            if until <= leases.now_utc():
                state = f"follower gone since {when}, awaiting adoption (`orchestrator attach`)"
            detail = f"{who} on {', '.join(h[1] for h in mine)}, {state}"
        elif job_id and run_id in followed:
            holder, until = followed[run_id]
            when = until.isoformat(timespec="seconds")
            who = holder if holder.startswith("submit ") else f"worker {holder}"
            detail = f"slurm job {job_id}, followed by {who} until {when}"
        elif job_id and was_queued:
            detail = f"slurm job {job_id}, not followed: start `orchestrator worker`"
        elif job_id:
            detail = f"slurm job {job_id}, followed by its `orchestrator submit`"
        else:
            detail = "started by `orchestrator submit`"
        click.echo(f"{run_id:<40} {'running':<8} {topo:<8} {cluster:<12} {detail}")
    for q in queued:
        d = decisions[q.run_id]
        detail = d.reason or f"ready: nodes {', '.join(d.nodes or ())} free"
        click.echo(
            f"{q.run_id:<40} {'queued':<8} {q.request['topology']:<8} {q.cluster:<12} {detail}"
        )
    if not running and not queued:
        click.echo("(queue empty)")


@click.command()
@click.argument("run_id")
@click.pass_obj
def cancel(app: AppContext, run_id: str) -> None:
    """Cancel RUN_ID: a queued run at once; a running one is stopped by whoever follows it
    (its submit, a worker, an attach), or, if its follower is gone, its nodes are cleaned
    here (processes and containers) and it is marked cancelled."""
    from orchestrator.queue import leases
    from orchestrator.queue.adoption import reconcile
    from orchestrator.submit import submitter

    with app.open_store() as store:
        if _slurm_job_of(store, run_id):
            from orchestrator.slurm.execute import cancel_run

            job_id = cancel_run(store, run_id, submitter())
            click.echo(
                f"run {run_id}: scancel {job_id}; whoever follows it (its submit or a worker) "
                "records it cancelled"
            )
            return
        result = leases.request_cancel(store, run_id, submitter())
        if result == "requested":
            ended = reconcile(
                store,
                f"cancel {submitter()} pid {os.getpid()}",
                Console(stderr=True),
                runs_folder(),
                mode="cancel",
                run_id=run_id,
                why=f"cancelled by {submitter()} after its follower was gone",
            )
            result = "cancelled" if ended else "cancel requested; its follower stops it"
    click.echo(f"run {run_id}: {result}")


def _slurm_job_of(store: Any, run_id: str) -> str | None:
    """The Slurm job of a running Slurm run: Slurm, not our leases, owns its nodes."""
    from sqlalchemy import select

    from orchestrator.store.models import Run

    with store.reading() as conn:
        row = conn.execute(
            select(Run.backend, Run.status, Run.slurm_job_id).where(Run.run_id == run_id)
        ).first()
    if row is None or row.backend != "slurm" or row.status != "running":
        return None
    return row.slurm_job_id
