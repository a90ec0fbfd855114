"""`orchestrator worker`: take queued runs one at a time, hold their node leases while they
live, and adopt runs whose follower died (queue/adoption.py)."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import OrchestratorError
from orchestrator.queue import leases
from orchestrator.queue.adoption import Adopters
from orchestrator.queue.keeper import LeaseKeeper
from orchestrator.queue.leases import LEASE_TTL_S, Claim

__all__ = ["LeaseKeeper", "default_worker_id", "request_from_doc", "run_worker"]

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.submit import SubmitRequest

POLL_S = 1.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def request_from_doc(doc: Mapping[str, Any], nodes: Sequence[str] | None) -> SubmitRequest:
    """The submit options stored with a queued (or detached Slurm) run."""
    from orchestrator.specs import Topology
    from orchestrator.submit import SubmitRequest

    return SubmitRequest(
        topology=Topology.parse(doc["topology"]),
        node_names=tuple(nodes) if nodes else None,
        precision=doc["precision"],
        sets=tuple((str(k), str(v)) for k, v in doc["sets"]),
        timeout_s=doc.get("timeout_s"),
        no_progress_timeout_s=doc.get("no_progress_timeout_s"),
        command=doc.get("command") or "",
        campaign_id=doc.get("campaign_id"),
    )


def run_claim(
    store: Any,
    claim: Claim,
    holder: str,
    runs_dir: Path,
    worker_stop: threading.Event,
    console: Console,
    ttl_s: float,
) -> str:
    """Execute one claimed run under its leases; returns its final status."""
    from orchestrator.submit import execute, make_plan

    doc = claim.request
    try:
        cluster = leases.cluster_from(doc)
        # Runs on disjoint nodes may run at once; nodes that share a network namespace (or a
        # host) would then collide on one rendezvous port: offset it by the rank-0 node's index.
        first = [n.name for n in cluster.nodes].index(claim.nodes[0])
        cluster = dataclasses.replace(cluster, master_port=cluster.master_port + first)
        req = request_from_doc(doc, claim.nodes)
        plan = make_plan(cluster, req, run_id=claim.run_id)
    except OrchestratorError as exc:
        reason = f"cannot plan the queued run: {exc.one_line()}"
        leases.end_run(store, claim.run_id, "failed", reason, ["running"])
        return "failed"
    run_stop = threading.Event()
    console.print(f"[bold]run {claim.run_id}[/]: {doc['topology']} on {', '.join(claim.nodes)}")
    try:
        with LeaseKeeper(store, claim.run_id, holder, ttl_s, worker_stop, run_stop):
            outcome = execute(
                plan, req, store, runs_dir, run_stop, console, queued_at=claim.submitted_at
            )
    except OrchestratorError as exc:
        leases.end_run(store, claim.run_id, "failed", exc.one_line(), ["running"])
        return "failed"
    finally:
        leases.release(store, claim.run_id, holder)
        leases.finish_campaign_if_done(store, doc.get("campaign_id"))
    console.print(f"run {claim.run_id}: {outcome.status}")
    return outcome.status


def run_worker(
    store: Any,
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
    """The worker loop; returns how many runs ended in each status. Slurm runs are followed
    in threads beside the queue (their jobs wait in Slurm's queue, not ours); the worker is
    idle when nothing is queued that it can start and it follows no Slurm run."""
    from orchestrator.queue.slurm_followers import SlurmFollowers

    counts: dict[str, int] = {}
    adopters = Adopters(store, holder, runs_dir, stop, console, ttl_s)
    adopters.scan()
    last_reconcile = idle_since = time.monotonic()
    followers = SlurmFollowers(store, holder, runs_dir, stop, console, ttl_s, poll_s)
    with adopters, followers:
        while not stop.is_set():
            ended = sum(counts.values()) + sum(followers.ended().values())
            ended += sum(adopters.ended().values())
            if max_runs is not None and ended >= max_runs:
                break
            # Also between runs, not only when idle: an orphan must be adopted within its
            # grace, and a busy queue must not keep its nodes.
            if time.monotonic() - last_reconcile >= min(ttl_s / 2, 5.0):
                if adopters.scan():
                    idle_since = time.monotonic()
                last_reconcile = time.monotonic()
            claim = leases.claim_next(store, holder, ttl_s)
            if claim is None:
                if followers.active() or adopters.active():
                    idle_since = time.monotonic()
                elif once or (
                    idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s
                ):
                    break
                stop.wait(poll_s)
                continue
            status = run_claim(store, claim, holder, runs_dir, stop, console, ttl_s)
            counts[status] = counts.get(status, 0) + 1
            idle_since = time.monotonic()
            if once:
                break
    for status, n in [*followers.ended().items(), *adopters.ended().items()]:
        counts[status] = counts.get(status, 0) + n
    return counts
