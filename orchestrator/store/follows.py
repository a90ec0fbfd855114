"""The store side of runs whose job a scheduler owns (Slurm), queued by `campaign submit` or
`submit --detach` or followed by their `submit`: the runs rows (written with their held jobs
in one transaction) and `slurm_follows`, which says which worker follows each job. Slurm queues the jobs and owns the nodes, so these runs take no
node_leases; a follow row is renewed like a lease, and when its worker dies it expires and
another worker adopts the run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, delete, exists, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.clock import utcnow
from orchestrator.runfolder.folder import RunManifest
from orchestrator.states import BackendName, RunStatus
from orchestrator.store import rows
from orchestrator.store import status as run_status
from orchestrator.store.campaigns import start_campaign
from orchestrator.store.models import Run, RunNode, SlurmFollow

if TYPE_CHECKING:
    from orchestrator.store import Store


def insert_submitted(
    conn: Connection, manifest: RunManifest, request: dict[str, Any], job_id: str
) -> None:
    """A `running` row for a run whose job Slurm holds or queues, with the request a worker
    needs to follow it, its placeholder nodes and its first history entry."""
    now = utcnow()
    row = rows.run_row(manifest, now)
    row.update(status="running", request=request, submitted_at=now, slurm_job_id=job_id)
    run_status.insert_run(conn, row, f"slurm job {job_id} submitted; Slurm queues it", now)
    conn.execute(
        insert(RunNode), [rows.node_row(manifest.run_id, n, None, None) for n in manifest.nodes]
    )
    start_campaign(conn, request.get("campaign_id"))


def record_followed(
    store: Store, run_id: str, job_id: str, request: dict[str, Any], holder: str, ttl_s: float
) -> None:
    """A foreground `submit` that just sbatched its job: the job id, the request a worker needs
    should this process die, and this process's follow row, in one transaction (so no worker
    adopts the run while its submit follows it)."""
    now = utcnow()
    with store.transaction() as conn:
        conn.execute(
            update(Run).where(Run.run_id == run_id).values(slurm_job_id=job_id, request=request)
        )
        conn.execute(
            insert(SlurmFollow),
            [
                {
                    "run_id": run_id,
                    "job_id": job_id,
                    "holder": holder,
                    "acquired_at": now,
                    "expires_at": now + timedelta(seconds=ttl_s),
                }
            ],
        )


@dataclass(frozen=True)
class Unfollowed:
    run_id: str
    job_id: str
    request: Mapping[str, Any]
    submitted_at: datetime
    started_at: datetime | None
    cancel_requested_at: datetime | None


def unfollowed(store: Store, backend: BackendName, now: datetime | None = None) -> list[Unfollowed]:
    """The `backend`'s running runs with a job and a stored request that no live worker
    follows, oldest first."""
    now = now or utcnow()
    live = exists().where(and_(SlurmFollow.run_id == Run.run_id, SlurmFollow.expires_at > now))
    query = (
        select(
            Run.run_id,
            Run.slurm_job_id,
            Run.request,
            Run.submitted_at,
            Run.started_at,
            Run.cancel_requested_at,
        )
        .where(
            Run.status == "running",
            Run.backend == backend,
            Run.slurm_job_id.is_not(None),
            Run.request.is_not(None),
            ~live,
        )
        .order_by(Run.submitted_at, Run.run_id)
    )
    with store.reading() as conn:
        return [Unfollowed(*row) for row in conn.execute(query).all()]


def adopt(store: Store, run_id: str, job_id: str, holder: str, ttl_s: float) -> bool:
    """Become the run's follower: take an expired follow row over, or insert the first one.
    False when another worker follows it (or took it first) or the run ended meanwhile."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_s)
    try:
        with store.engine.begin() as conn:
            running = conn.scalar(select(Run.status).where(Run.run_id == run_id)) == "running"
            if not running:
                return False
            taken = conn.execute(
                update(SlurmFollow)
                .where(SlurmFollow.run_id == run_id, SlurmFollow.expires_at <= now)
                .values(holder=holder, acquired_at=now, expires_at=expires)
            ).rowcount
            if taken:
                return True
            conn.execute(
                insert(SlurmFollow),
                [
                    {
                        "run_id": run_id,
                        "job_id": job_id,
                        "holder": holder,
                        "acquired_at": now,
                        "expires_at": expires,
                    }
                ],
            )
    except SQLAlchemyError:
        return False  # the primary key: a live follower, or another worker was first
    return True


def release(store: Store, run_id: str, holder: str) -> None:
    with store.transaction() as conn:
        conn.execute(
            delete(SlurmFollow).where(SlurmFollow.run_id == run_id, SlurmFollow.holder == holder)
        )


def followers(conn: Connection) -> dict[str, tuple[str, datetime]]:
    """run_id -> (holder, expires_at) of every follow row, for `orchestrator queue`."""
    return {
        run_id: (holder, expires)
        for run_id, holder, expires in conn.execute(
            select(SlurmFollow.run_id, SlurmFollow.holder, SlurmFollow.expires_at)
        )
    }


@dataclass(frozen=True)
class JobRow:
    """A run's job as the store has it: the job id, the stored request and the run's status."""

    job_id: str | None
    request: Mapping[str, Any] | None
    status: RunStatus


def job_of(store: Store, run_id: str) -> JobRow | None:
    """The run's job id, request and status (None: no such run)."""
    with store.reading() as conn:
        row = conn.execute(
            select(Run.slurm_job_id, Run.request, Run.status).where(Run.run_id == run_id)
        ).first()
    return None if row is None else JobRow(row.slurm_job_id, row.request, row.status)
