"""`orchestrator worker`: take queued runs one at a time, hold their node leases while they
live, and reconcile runs whose worker died (clean their nodes, mark them lost)."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.errors import OrchestratorError
from orchestrator.queue import leases
from orchestrator.queue.leases import LEASE_TTL_S, Claim

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.specs import ClusterSpec
    from orchestrator.submit import SubmitRequest

POLL_S = 1.0
RENEW_MAX_S = 5.0  # renew (and look for a cancel request) at least this often


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseKeeper:
    """Renews the run's leases and turns a cancel request, the worker's own stop signal or
    lost leases into the run's stop event. A Slurm run (Slurm owns the job) maps some of them
    to a detach event instead: `on_worker_stop` (a worker that stops leaves the job to the
    next worker) and `on_lost` (another follower took it over)."""

    def __init__(
        self,
        store: Any,
        run_id: str,
        holder: str,
        ttl_s: float,
        worker_stop: threading.Event,
        run_stop: threading.Event,
        renew: Callable[[Any, str, str, float], tuple[int, bool]] = leases.renew,
        on_worker_stop: threading.Event | None = None,
        on_lost: threading.Event | None = None,
    ) -> None:
        self.store, self.run_id, self.holder, self.ttl_s = store, run_id, holder, ttl_s
        self.worker_stop, self.run_stop, self.renew = worker_stop, run_stop, renew
        self.on_worker_stop = on_worker_stop or run_stop
        self.on_lost = on_lost or run_stop
        self.done = threading.Event()
        self.why: str | None = None
        self.thread = threading.Thread(target=self._loop, name=f"lease-{run_id}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        every = min(self.ttl_s / 3, RENEW_MAX_S)
        next_renew = time.monotonic() + every
        while not self.done.wait(0.2):
            if self.worker_stop.is_set():
                self.on_worker_stop.set()
            if time.monotonic() < next_renew:
                continue
            next_renew = time.monotonic() + every
            try:
                held, cancel = self.renew(self.store, self.run_id, self.holder, self.ttl_s)
            except OrchestratorError:
                continue  # the store is briefly away: the lease still has time left
            if cancel and not self.run_stop.is_set():
                self.why = "cancel requested"
                self.run_stop.set()
            if held == 0 and not self.run_stop.is_set():
                self.why = "its leases were taken over (this worker was presumed dead)"
                self.on_lost.set()


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


def clean_nodes(cluster: ClusterSpec, names: Sequence[str], run_id: str) -> dict[str, str]:
    """Kill the run's processes and containers and remove its folder on each node; returns
    node -> problem for the nodes that could not be cleaned."""
    from orchestrator.launch import kill_run_processes
    from orchestrator.specs import JobSpec, Topology
    from orchestrator.transport import NodeSession

    nodes = [cluster.node(n) for n in names]
    job = JobSpec(run_id, cluster, Topology(len(nodes), 1), tuple(nodes))

    def clean(transport: Any) -> None:
        kill_run_processes(transport, run_id)
        if cluster.runtime == "docker":
            from orchestrator.images.containers import remove_run_containers

            remove_run_containers(transport, run_id, transport.node.docker_host)
        transport.run(["rm", "-rf", "--", str(job.run_dir_on(transport.node))], timeout=60)

    with NodeSession(nodes, cluster.ssh, require_all=False) as session:
        problems = dict(session.connect_failures)
        results = session.fan_out_results(clean, timeout=120, what="cleaning an orphaned run")
        for node, result in results.items():
            if isinstance(result, BaseException):
                problems[node] = str(result)
    return problems


def reconcile(
    store: Any,
    holder: str,
    console: Console,
    ttl_s: float = LEASE_TTL_S,
    run_id: str | None = None,
    status: str = "lost",
    why: str | None = None,
) -> list[str]:
    """Runs whose worker stopped renewing their leases: clean their nodes, end them with a
    reason, release the leases. A node that cannot be cleaned keeps its lease (nothing else
    may start there) and the next reconcile tries again. Returns the runs ended."""
    leases.release_final_leases(store)
    ended = []
    for orphan in leases.find_orphans(store, run_id=run_id):
        if not leases.adopt(store, orphan.run_id, holder, ttl_s):
            continue  # another reconciler has it, or it ended meanwhile
        try:
            problems = clean_nodes(leases.cluster_from(orphan.request), orphan.nodes, orphan.run_id)
        except OrchestratorError as exc:
            problems = {"*": exc.one_line()}
        if problems:
            detail = "; ".join(f"{n}: {p}" for n, p in problems.items())
            console.print(f"[yellow]run {orphan.run_id}: nodes not cleaned yet ({detail})[/]")
            continue
        owners = ", ".join(orphan.holders) or "unknown worker"
        expired = orphan.expired_at.isoformat(timespec="seconds") if orphan.expired_at else "?"
        reason = why or f"worker {owners} stopped renewing its leases (expired {expired})"
        reason += f"; nodes {', '.join(orphan.nodes) or '-'} cleaned by {holder}"
        if leases.end_run(store, orphan.run_id, status, reason, ["running"]):
            ended.append(orphan.run_id)
            console.print(f"run {orphan.run_id}: {status} ({reason})")
        leases.finish_campaign_if_done(store, orphan.request.get("campaign_id"))
    return ended


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
    reconcile(store, holder, console, ttl_s)
    last_reconcile = idle_since = time.monotonic()
    with SlurmFollowers(store, holder, runs_dir, stop, console, ttl_s, poll_s) as followers:
        while not stop.is_set():
            ended = sum(counts.values()) + sum(followers.ended().values())
            if max_runs is not None and ended >= max_runs:
                break
            # Also between runs, not only when idle: a busy queue must not keep an orphan's
            # nodes.
            if time.monotonic() - last_reconcile >= ttl_s / 2:
                if reconcile(store, holder, console, ttl_s):
                    idle_since = time.monotonic()  # freed nodes: queued runs may start now
                last_reconcile = time.monotonic()
            claim = leases.claim_next(store, holder, ttl_s)
            if claim is None:
                if followers.active():
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
    for status, n in followers.ended().items():
        counts[status] = counts.get(status, 0) + n
    return counts
