"""Runs whose follower is gone (store/follower.py says when): finding them, one adopter
taking their expired leases over, and their guarded final transition."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, delete, exists, select, update

from orchestrator.clock import utcnow
from orchestrator.states import ACTIVE_STATUSES, FINAL_STATUSES, BackendName, RunStatus
from orchestrator.store import status as run_status
from orchestrator.store.models import NodeLease, Run, RunNode

if TYPE_CHECKING:
    from orchestrator.store import Store


@dataclass(frozen=True)
class Orphan:
    run_id: str
    request: Mapping[str, Any]
    nodes: tuple[str, ...]
    holders: tuple[str, ...]
    expired_at: datetime | None


def find_orphans(
    store: Store, backend: BackendName, now: datetime | None = None, run_id: str | None = None
) -> list[Orphan]:
    """The `backend`'s runs still `running` with a stored request whose every node lease
    expired (follower gone: a worker, or a foreground `submit`). The backend is the caller's
    to say: one whose jobs a scheduler owns holds no node leases (store/follows.py)."""
    now = now or utcnow()
    live = exists().where(and_(NodeLease.run_id == Run.run_id, NodeLease.expires_at > now))
    query = select(Run.run_id).where(
        Run.status == "running", Run.request.is_not(None), Run.backend == backend, ~live
    )
    if run_id:
        query = query.where(Run.run_id == run_id)
    with store.reading() as conn:
        found = [follow_state(conn, rid) for (rid,) in conn.execute(query).all()]
    return [o for o in found if o is not None]


def backends_with_active_runs(store: Store) -> set[str]:
    """The backends that have a queued or running run: only they can have runs to settle."""
    with store.reading() as conn:
        query = select(Run.backend).where(Run.status.in_(ACTIVE_STATUSES)).distinct()
        return set(conn.scalars(query))


def follow_state(conn: Connection, run_id: str) -> Orphan | None:
    """A running run's request, nodes and followers as its leases say (expired or not)."""
    request = conn.scalar(select(Run.request).where(Run.run_id == run_id))
    if request is None:
        return None
    leases = conn.execute(
        select(NodeLease.node_name, NodeLease.holder, NodeLease.expires_at).where(
            NodeLease.run_id == run_id
        )
    ).all()
    return Orphan(
        run_id,
        request,
        tuple(n for n, _, _ in leases),
        tuple(sorted({h for _, h, _ in leases})),
        max((e for _, _, e in leases), default=None),
    )


@dataclass(frozen=True)
class AdopteeRows:
    """What an adopter reads of a run to re-plan it: its nodes by rank with their environment
    as its preflight found it, and its times."""

    ranked: list[tuple[str, dict[str, Any] | None]]
    submitted_at: datetime
    started_at: datetime | None


def adoptee_rows(store: Store, run_id: str) -> AdopteeRows:
    with store.reading() as conn:
        ranked = conn.execute(
            select(RunNode.node_name, RunNode.env)
            .where(RunNode.run_id == run_id)
            .order_by(RunNode.node_rank, RunNode.node_name)
        ).all()
        row = conn.execute(
            select(Run.submitted_at, Run.started_at).where(Run.run_id == run_id)
        ).one()
    return AdopteeRows([(n, env) for n, env in ranked], row.submitted_at, row.started_at)


def adopt(store: Store, run_id: str, holder: str, ttl_s: float) -> bool:
    """Take over an orphan's expired leases so that only one reconciler cleans it."""
    now = utcnow()
    with store.transaction() as conn:
        total = len(
            conn.execute(select(NodeLease.node_name).where(NodeLease.run_id == run_id)).all()
        )
        taken = conn.execute(
            update(NodeLease)
            .where(NodeLease.run_id == run_id, NodeLease.expires_at <= now)
            .values(holder=holder, expires_at=now + timedelta(seconds=ttl_s))
        ).rowcount
        running = conn.scalar(select(Run.status).where(Run.run_id == run_id)) == "running"
    return running and taken == total


def end_run(
    store: Store, run_id: str, status: RunStatus, reason: str, expect: Sequence[RunStatus]
) -> bool:
    """Guarded final transition (only from `expect`), history entry, leases released."""
    now = utcnow()
    with store.transaction() as conn:
        moved = run_status.move(
            conn,
            run_id,
            status,
            reason=reason,
            failure={"reason": reason},
            expect=expect,
            at=now,
            values={"finished_at": now},
        )
        if moved:
            conn.execute(delete(NodeLease).where(NodeLease.run_id == run_id))
    return bool(moved)


def release_final_leases(store: Store) -> int:
    """Leases left by a worker that died after its run ended: nothing runs there any more."""
    with store.transaction() as conn:
        final = select(Run.run_id).where(Run.status.in_(FINAL_STATUSES))
        return conn.execute(delete(NodeLease).where(NodeLease.run_id.in_(final))).rowcount
