"""Quarantined nodes (docs/health.md, "Quarantine"): a node the health gate found below
threshold in the queue is skipped by the scheduler until `orchestrator nodes release NODE` or
its expiry; the run it was caught gating goes back to the queue, to run on other nodes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, insert, select

from orchestrator.clock import utcnow
from orchestrator.store import status as run_status
from orchestrator.store.models import NodeLease, NodeQuarantine


@dataclass(frozen=True)
class Quarantined:
    cluster: str
    node: str
    reason: str
    since: datetime
    expires_at: datetime


def quarantine(
    conn: Connection,
    cluster: str,
    nodes: Sequence[str],
    reason: str,
    expiry_s: float,
    check_id: int | None = None,
) -> None:
    """Put `nodes` of `cluster` in quarantine (again: the newest reason and expiry win)."""
    now = utcnow()
    for node in nodes:
        conn.execute(
            delete(NodeQuarantine).where(
                NodeQuarantine.cluster == cluster, NodeQuarantine.node_name == node
            )
        )
        conn.execute(
            insert(NodeQuarantine).values(
                cluster=cluster,
                node_name=node,
                reason=reason[:1024],
                since=now,
                expires_at=now + timedelta(seconds=expiry_s),
                check_id=check_id,
            )
        )


def active(conn: Connection, cluster: str | None = None) -> list[Quarantined]:
    """The quarantines not yet expired, by cluster and node."""
    table = NodeQuarantine.__table__
    query = select(table).where(NodeQuarantine.expires_at > utcnow())
    if cluster is not None:
        query = query.where(NodeQuarantine.cluster == cluster)
    rows = conn.execute(query.order_by(NodeQuarantine.cluster, NodeQuarantine.node_name))
    return [
        Quarantined(q["cluster"], q["node_name"], q["reason"], q["since"], q["expires_at"])
        for q in rows.mappings()
    ]


def held_by_quarantine(conn: Connection) -> dict[tuple[str, str], str]:
    """(cluster, node) -> why the scheduler must skip it: the leases' `busy` map's shape."""
    return {
        (q.cluster, q.node): f"quarantined until {q.expires_at.isoformat(timespec='seconds')}"
        for q in active(conn)
    }


def release(conn: Connection, cluster: str | None, node: str) -> int:
    """Lift a node's quarantine (in `cluster`, or in every cluster); how many were lifted."""
    query = delete(NodeQuarantine).where(NodeQuarantine.node_name == node)
    if cluster is not None:
        query = query.where(NodeQuarantine.cluster == cluster)
    return int(conn.execute(query).rowcount)


def requeue_after_gate(
    conn: Connection,
    run_id: str,
    cluster: str,
    nodes: Sequence[str],
    reason: str,
    expiry_s: float,
    check_id: int | None,
) -> bool:
    """In the caller's transaction: quarantine `nodes`, give the run's leases back and put it
    back in the queue (from running, as a worker claimed it), to be scheduled on other nodes.
    Returns whether the run moved."""
    quarantine(conn, cluster, nodes, reason, expiry_s, check_id)
    conn.execute(delete(NodeLease).where(NodeLease.run_id == run_id))
    return run_status.move(
        conn,
        run_id,
        "queued",
        reason=None,
        expect=["running"],
        values={"started_at": None},
        history_reason=f"health gate: {', '.join(nodes)} quarantined; back in the queue",
    )
