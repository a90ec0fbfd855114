"""`orchestrator worker`: take queued runs one at a time, hold their node leases while they
live, and beside the queue let every backend adopt and follow the runs nobody follows (the
SSH backend's orphans, Slurm jobs handed to Slurm)."""

from __future__ import annotations

import dataclasses
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator import backends
from orchestrator.backends.base import WorkerContext
from orchestrator.errors import OrchestratorError
from orchestrator.queue.claims import Claim, claim_next
from orchestrator.runs.keeper import LeaseKeeper
from orchestrator.runs.progress import summary_line
from orchestrator.runs.request import cluster_from, decode_request
from orchestrator.runs.stopping import StopEvent
from orchestrator.store.campaigns import finish_campaign_if_done
from orchestrator.store.leases import LEASE_TTL_S, release
from orchestrator.store.orphans import end_run
from orchestrator.store.queries import run_headline
from orchestrator.store.repeats import repeat_check
from orchestrator.store.stragglers import stored_line

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.store import Store

POLL_S = 1.0


def run_claim(
    store: Store,
    claim: Claim,
    holder: str,
    runs_dir: Path,
    worker_stop: threading.Event,
    console: Console,
    ttl_s: float,
) -> str:
    """Execute one claimed run under its leases; returns its final status."""
    doc = claim.request
    rule = repeat_check(store, doc)  # a campaign's repeat rule may already hold
    if rule is not None:
        console.print(f"run {claim.run_id}: {rule.describe()}", markup=False, highlight=False)
        if rule.holds:
            end_run(store, claim.run_id, "cancelled", rule.describe(), ["running"])
            release(store, claim.run_id, holder)
            finish_campaign_if_done(store, doc.get("campaign_id"))
            return "cancelled"
    try:
        cluster = cluster_from(doc)
        # Runs on disjoint nodes may run at once; nodes that share a network namespace (or a
        # host) would then collide on one rendezvous port: offset it by the rank-0 node's index.
        first = [n.name for n in cluster.nodes].index(claim.nodes[0])
        cluster = dataclasses.replace(cluster, master_port=cluster.master_port + first)
        req = decode_request(doc, claim.nodes)
        planned = backends.for_cluster(cluster).plan(cluster, req, run_id=claim.run_id)
    except OrchestratorError as exc:
        reason = f"cannot plan the queued run: {exc.one_line()}"
        end_run(store, claim.run_id, "failed", reason, ["running"])
        return "failed"
    run_stop = StopEvent()
    console.print(f"[bold]run {claim.run_id}[/]: {doc['topology']} on {', '.join(claim.nodes)}")
    began = time.monotonic()
    try:
        with LeaseKeeper(store, claim.run_id, holder, ttl_s, worker_stop, run_stop):
            outcome = planned.execute(
                req, store, runs_dir, run_stop, console, queued_at=claim.submitted_at
            )
    except OrchestratorError as exc:
        end_run(store, claim.run_id, "failed", exc.one_line(), ["running"])
        return "failed"
    finally:
        release(store, claim.run_id, holder)
        finish_campaign_if_done(store, doc.get("campaign_id"))
    if outcome.status == "queued":  # the health gate quarantined nodes: back in the queue
        return "queued"
    metrics = outcome.summary.metrics if outcome.summary else None
    wall = time.monotonic() - began
    with store.reading() as conn:  # the ranks publishing flagged, as `submit` says them
        head = run_headline(conn, claim.run_id)
    console.print(
        summary_line(
            outcome.status,
            claim.run_id,
            wall,
            metrics.p_core if metrics else None,
            metrics.map if metrics else None,
            outcome.run_dir,
            stored_line(head.stragglers if head else None, short=True),
        ),
        markup=False,
        highlight=False,
    )
    after = repeat_check(store, doc, before_run=False)
    if after is not None:  # says whether the configuration repeats again
        console.print(f"run {claim.run_id}: {after.describe()}", markup=False, highlight=False)
    return outcome.status


def run_worker(
    store: Store,
    holder: str,
    runs_dir: Path,
    stop: threading.Event,
    console: Console,
    *,
    once: bool = False,
    max_runs: int | None = None,
    idle_exit_s: float | None = None,
    ttl_s: float = LEASE_TTL_S,
    poll_s: float = POLL_S,
) -> dict[str, int]:
    """The worker loop; returns how many runs ended in each status. Each backend's followers
    adopt runs nobody follows, in threads beside the queue (Slurm's jobs wait in Slurm's
    queue, not ours); the worker is idle when nothing is queued that it can start and no
    follower is busy."""
    counts: dict[str, int] = {}
    ctx = WorkerContext(store, holder, runs_dir, stop, console, ttl_s, poll_s)
    followers = [backend.followers(ctx) for backend in backends.all_backends()]
    for follower in followers:
        follower.scan()
    last_reconcile = idle_since = time.monotonic()
    with ExitStack() as stack:
        for follower in followers:
            stack.enter_context(follower)
        while not stop.is_set():
            ended = sum(counts.values()) + sum(sum(f.ended().values()) for f in followers)
            if max_runs is not None and ended >= max_runs:
                break
            # Also between runs, not only when idle: an orphan must be adopted within its
            # grace, and a busy queue must not keep its nodes.
            if time.monotonic() - last_reconcile >= min(ttl_s / 2, 5.0):
                if sum(f.scan() for f in followers):
                    idle_since = time.monotonic()
                last_reconcile = time.monotonic()
            claim = claim_next(store, holder, ttl_s)
            if claim is None:
                if any(f.active() for f in followers):
                    idle_since = time.monotonic()
                elif once or (
                    idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s
                ):
                    break
                stop.wait(poll_s)
                continue
            status = run_claim(store, claim, holder, runs_dir, stop, console, ttl_s)
            if status == "queued":  # not ended: it waits for other nodes
                continue
            counts[status] = counts.get(status, 0) + 1
            idle_since = time.monotonic()
            if once:
                break
    for follower in followers:
        for status, n in follower.ended().items():
            counts[status] = counts.get(status, 0) + n
    return counts
