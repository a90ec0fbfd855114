"""The SSH backend behind orchestrator.backends.base.Backend: this process (or a worker)
connects to every node, runs torchrun there, holds the nodes' leases in the store while it
follows the run, and the node guards end the run should every follower die."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.backends.base import Detached, DetachItem, DoctorReport, WorkerContext
from orchestrator.backends.ssh.submit import make_plan, ssh_manifest
from orchestrator.states import BackendName

# What reads or writes the store (SQLAlchemy) is imported by the methods that use it: planning
# a run (`submit --dry-run`) loads no store.
if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy import Connection

    from orchestrator.backends.base import HealthRequest
    from orchestrator.backends.ssh.adoption import Adopters
    from orchestrator.plan import Plan
    from orchestrator.runfolder.folder import RunManifest
    from orchestrator.runs.health import HealthReport
    from orchestrator.runs.lifecycle import Outcome, SubmitRequest
    from orchestrator.specs import ClusterSpec, JobSpec
    from orchestrator.store import Store


@dataclass(frozen=True)
class SshRun:
    """A run planned for the SSH backend: every node's exact command."""

    plan: Plan

    @property
    def job(self) -> JobSpec:
        return self.plan.job

    def render(self) -> str:
        return self.plan.render()

    def where(self) -> str:
        return "on " + ", ".join(n.node.name for n in self.plan.nodes)

    def check_free(self, store: Store) -> None:
        from orchestrator.store import leases

        nodes = [n.node.name for n in self.plan.nodes]
        leases.check_nodes_free(store, self.plan.job.cluster.name, nodes)

    def execute(
        self,
        req: SubmitRequest,
        store: Store,
        runs_dir: Path,
        stop: threading.Event,
        console: Console,
        queued_at: datetime | None = None,
    ) -> Outcome:
        from orchestrator.backends.ssh import health as ssh_health
        from orchestrator.backends.ssh.submit import execute
        from orchestrator.runs.lifecycle import Outcome

        health = self.plan.job.cluster.health
        gated = health.gates(self.plan.job.topology.nnodes)
        if gated and queued_at is not None and self.plan.runtime == "host":
            # A claimed run: its nodes are probed before it starts; a refusal quarantines
            # them and puts the run back in the queue, for other nodes.
            report = ssh_health.gate_queued_run(self.plan, store, runs_dir, stop, console)
            if not report.ok:
                return Outcome(self.job.run_id, "queued", runs_dir / self.job.run_id, None, None)
            gated = False
        gate = ssh_health.gate_before_run if gated else None
        return execute(
            self.plan, req, store, runs_dir, stop, console, queued_at=queued_at, gate=gate
        )


DETACH_HINT = (
    "queued runs start only when a worker takes them: run `orchestrator worker` "
    "where the nodes are reachable (it waits for queued runs)"
)


class SshBackend:
    name: BackendName = "ssh"
    detached_as = "queued"
    detach_hint: str | None = DETACH_HINT

    def plan(self, cluster: ClusterSpec, req: SubmitRequest, run_id: str | None = None) -> SshRun:
        return SshRun(make_plan(cluster, req, run_id=run_id))

    def doctor(
        self, cluster: ClusterSpec, topology: str | None, node_names: str | None
    ) -> DoctorReport:
        from orchestrator.backends.ssh.doctor import run_doctor

        return run_doctor(cluster, topology, node_names)

    @contextmanager
    def detach(self, items: Sequence[DetachItem]) -> Iterator[Detached]:
        """Queued for `orchestrator worker`: a `queued` row each, with its request."""
        from orchestrator.clock import utcnow
        from orchestrator.store.queue import enqueue

        queued: list[tuple[RunManifest, dict[str, object]]] = []
        for cluster, req, doc in items:
            plan = make_plan(cluster, req)
            manifest = ssh_manifest(plan, req, "queued", submitted_at=utcnow())
            queued.append((manifest, dict(doc)))

        def write(conn: Connection) -> None:
            for manifest, doc in queued:
                enqueue(conn, manifest, doc)

        yield Detached([m.run_id for m, _ in queued], write)

    def cancel(self, store: Store, run_id: str, by: str, runs_dir: Path, console: Console) -> str:
        """A queued run at once; a running one through its follower (it sees the request when
        it renews its leases), or, when its follower is gone, here: its nodes cleaned."""
        from orchestrator.backends.ssh import adoption
        from orchestrator.store.cancel import request_cancel
        from orchestrator.store.follower import Follower

        result = request_cancel(store, run_id, by)
        if result != "requested":
            return result
        ended = adoption.reconcile(
            store,
            Follower("cancel", f"{by} pid {os.getpid()}").encoded,
            console,
            runs_dir,
            mode="cancel",
            run_id=run_id,
            why=f"cancelled by {by} after its follower was gone",
        )
        return "cancelled" if ended else "cancel requested; its follower stops it"

    def attach(
        self,
        store: Store,
        run_id: str,
        holder: str,
        runs_dir: Path,
        stop: threading.Event,
        console: Console,
    ) -> None:
        from orchestrator.backends.ssh import adoption
        from orchestrator.runs.request import cluster_from
        from orchestrator.store import leases
        from orchestrator.store.orphans import find_orphans

        while _status(store, run_id) == "running" and not stop.is_set():
            orphans = find_orphans(store, self.name, run_id=run_id)
            if orphans:
                ttl = leases.follower_ttl_s(cluster_from(orphans[0].request).follower_grace_s)
                adoption.adopt_run(store, orphans[0], holder, runs_dir, stop, console, ttl)
            else:
                adoption.watch(store, run_id, console, stop)

    def followers(self, ctx: WorkerContext) -> Adopters:
        from orchestrator.backends.ssh.adoption import Adopters

        return Adopters(ctx.store, ctx.holder, ctx.runs_dir, ctx.stop, ctx.console, ctx.ttl_s)

    def settle(self, store: Store, holder: str, console: Console, runs_dir: Path) -> list[str]:
        from orchestrator.backends.ssh import adoption

        return adoption.reconcile(store, holder, console, runs_dir, mode="settle")

    def health(self, request: HealthRequest) -> tuple[HealthReport, int]:
        from orchestrator.backends.ssh.health import health_check

        return health_check(request)

    def describe_running(self, conn: Connection) -> dict[str, str]:
        from orchestrator.runs.liveness import liveness
        from orchestrator.store import leases

        return leases.describe_leases(conn, liveness)


def _status(store: Store, run_id: str) -> str | None:
    from orchestrator.store.queries import run_brief

    with store.reading() as conn:
        brief = run_brief(conn, run_id)
    return brief.status if brief else None
