"""The Slurm backend behind orchestrator.backends.base.Backend: one batch job per run; Slurm
queues the jobs and owns the nodes, this process (or a worker) follows the job with
squeue/sacct and publishes the run when it ends."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.backends.base import Detached, DetachItem, DoctorReport, WorkerContext
from orchestrator.backends.slurm.attach import attach_slurm
from orchestrator.backends.slurm.detached import held_jobs
from orchestrator.backends.slurm.doctor import run_slurm_doctor
from orchestrator.backends.slurm.execute import cancel_run, execute
from orchestrator.backends.slurm.followers import SlurmFollowers
from orchestrator.backends.slurm.plan import make_slurm_plan, slurm_manifest
from orchestrator.clock import utcnow
from orchestrator.errors import ConfigError
from orchestrator.states import BackendName
from orchestrator.store import follows
from orchestrator.store.cancel import request_cancel
from orchestrator.store.follower import Follower
from orchestrator.store.queries import run_brief, running_runs

if TYPE_CHECKING:
    from rich.console import Console
    from sqlalchemy import Connection

    from orchestrator.backends.base import HealthRequest
    from orchestrator.backends.slurm.script import SlurmPlan
    from orchestrator.runs.health import HealthReport
    from orchestrator.runs.lifecycle import Outcome, SubmitRequest
    from orchestrator.specs import ClusterSpec, JobSpec
    from orchestrator.store import Store

DETACH_HINT = (
    "Slurm queues the submitted jobs; `orchestrator worker` follows them and stores their results"
)


@dataclass(frozen=True)
class SlurmRun:
    """A run planned for Slurm: the batch script and the sbatch command that submits it."""

    plan: SlurmPlan

    @property
    def job(self) -> JobSpec:
        return self.plan.job

    def render(self) -> str:
        return self.plan.render()

    def where(self) -> str:
        return "through Slurm"

    def check_free(self, store: Store) -> None:
        """Slurm owns the nodes: nothing to check here."""

    def execute(
        self,
        req: SubmitRequest,
        store: Store,
        runs_dir: Path,
        stop: threading.Event,
        console: Console,
        queued_at: datetime | None = None,
    ) -> Outcome:
        if queued_at is not None:
            raise ConfigError(
                f"run {self.plan.job.run_id} is a Slurm run: no worker claims it from the queue",
                "Slurm queues it; `orchestrator worker` follows it",
            )
        return execute(self.plan, req, store, runs_dir, stop, console)


class SlurmBackend:
    name: BackendName = "slurm"
    detached_as = "submitted to Slurm"
    detach_hint: str | None = DETACH_HINT

    def plan(self, cluster: ClusterSpec, req: SubmitRequest, run_id: str | None = None) -> SlurmRun:
        return SlurmRun(make_slurm_plan(cluster, req, run_id=run_id))

    def doctor(
        self, cluster: ClusterSpec, topology: str | None, node_names: str | None
    ) -> DoctorReport:
        if node_names:
            raise ConfigError(
                "--nodes does not apply to the slurm backend", "Slurm chooses the nodes"
            )
        return run_slurm_doctor(cluster, topology)

    @contextmanager
    def detach(self, items: Sequence[DetachItem]) -> Iterator[Detached]:
        """Submitted held, recorded `running` with their job ids in the caller's transaction,
        released when it commits (cancelled if it does not)."""
        planned = []
        for cluster, req, doc in items:
            plan = make_slurm_plan(cluster, req)
            manifest = slurm_manifest(plan, req, "running", None, submitted_at=utcnow())
            planned.append((plan, manifest, dict(doc)))
        with held_jobs([plan for plan, _, _ in planned]) as job_ids:

            def write(conn: Connection) -> None:
                for (_, manifest, doc), job_id in zip(planned, job_ids):
                    follows.insert_submitted(conn, manifest, doc, job_id)

            yield Detached([m.run_id for _, m, _ in planned], write)

    def cancel(self, store: Store, run_id: str, by: str, runs_dir: Path, console: Console) -> str:
        """A running run's job is scancelled; whoever follows it records it cancelled."""
        with store.reading() as conn:
            brief = run_brief(conn, run_id)
        if brief is None or brief.status != "running" or not brief.slurm_job_id:
            return request_cancel(store, run_id, by)
        job_id = cancel_run(store, run_id, by)
        return f"scancel {job_id}; whoever follows it (its submit or a worker) records it cancelled"

    def attach(
        self,
        store: Store,
        run_id: str,
        holder: str,
        runs_dir: Path,
        stop: threading.Event,
        console: Console,
    ) -> None:
        attach_slurm(store, run_id, holder, runs_dir, stop, console)

    def followers(self, ctx: WorkerContext) -> SlurmFollowers:
        return SlurmFollowers(
            ctx.store, ctx.holder, ctx.runs_dir, ctx.stop, ctx.console, ctx.ttl_s, ctx.poll_s
        )

    def settle(self, store: Store, holder: str, console: Console, runs_dir: Path) -> list[str]:
        """Slurm ends its jobs itself; a worker adopts the runs nobody follows."""
        return []

    def health(self, request: HealthRequest) -> tuple[HealthReport, int]:
        raise ConfigError(
            f"health runs over the ssh backend; cluster {request.cluster.name!r} uses slurm",
            "run it with a cluster file whose backend is ssh (the nodes reachable over SSH)",
        )

    def describe_running(self, conn: Connection) -> dict[str, str]:
        followed = follows.followers(conn)
        described = {}
        for run in running_runs(conn):
            job_id = run.slurm_job_id
            if not job_id:
                continue
            if run.run_id in followed:
                holder, until = followed[run.run_id]
                when = until.isoformat(timespec="seconds")
                who = Follower.decode(holder).described()
                described[run.run_id] = f"slurm job {job_id}, followed by {who} until {when}"
            elif run.queued:
                described[run.run_id] = (
                    f"slurm job {job_id}, not followed: start `orchestrator worker`"
                )
            else:
                described[run.run_id] = f"slurm job {job_id}, followed by its `orchestrator submit`"
        return described
