"""The queue's rows: a queued run (no nodes yet), the queue as the scheduler reads it, a
queued run's full request, and which nodes are held now."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.clock import utcnow
from orchestrator.runfolder.folder import RunManifest
from orchestrator.schedule import QueuedRun
from orchestrator.store import rows
from orchestrator.store import status as run_status
from orchestrator.store.campaigns import start_campaign
from orchestrator.store.leases import QueueError, lease_row
from orchestrator.store.models import NodeLease, Run
from orchestrator.store.quarantine import held_by_quarantine

if TYPE_CHECKING:
    from orchestrator.store import Store


def enqueue(conn: Connection, manifest: RunManifest, request: dict[str, Any]) -> None:
    """A queued runs row (no run_nodes yet: the worker chooses the nodes) and its history."""
    now = utcnow()
    row = rows.run_row(manifest, now)
    row.update(status="queued", request=request, submitted_at=now)
    run_status.insert_run(conn, row, None, now)


def read_queue(conn: Connection, limit: int | None = None) -> list[QueuedRun]:
    """The queued runs, oldest first. Their `request` holds only what scheduling needs (cluster
    key, node names, topology): the full documents embed the cluster file and cost far more to
    decode than the decision itself; `read_request` gets one when a run is claimed, and
    `requests_for_keys` one per cluster the caller has not parsed yet."""
    key = Run.request["cluster_key"].as_string()
    query = (
        select(
            Run.run_id,
            Run.cluster,
            Run.nnodes,
            Run.nproc_per_node,
            key,
            Run.request["node_names"].as_string(),  # JSON text: decoded only when not null
            Run.topology,
            Run.submitted_at,
        )
        .where(Run.status == "queued")
        .order_by(Run.submitted_at, Run.run_id)
    )
    if limit:
        query = query.limit(limit)
    queued = []
    for run_id, cluster, nnodes, nproc, ckey, names, topology, at in conn.execute(query):
        pinned = json.loads(names) if names and names != "null" else None
        doc = {"cluster_key": ckey, "node_names": pinned, "topology": topology}
        queued.append(QueuedRun(run_id, cluster, nnodes, nproc, doc, at))
    return queued


def requests_for_keys(conn: Connection, keys: Iterable[str]) -> list[dict[str, Any]]:
    """One full stored request per cluster key (to parse each cluster once)."""
    key = Run.request["cluster_key"].as_string()
    found = []
    for wanted in keys:
        full = conn.scalar(select(Run.request).where(key == wanted).limit(1))
        if full is not None:
            found.append(dict(full))
    return found


def read_request(conn: Connection, run_id: str) -> dict[str, Any]:
    request = conn.scalar(select(Run.request).where(Run.run_id == run_id))
    if request is None:
        raise QueueError(f"queued run {run_id} has no stored request", "submit it again")
    return dict(request)


def read_busy(conn: Connection) -> dict[tuple[str, str], str]:
    busy = held_by_quarantine(conn)  # the health gate's quarantined nodes are skipped too
    busy.update(
        ((c, n), f"run {r}")
        for c, n, r in conn.execute(
            select(NodeLease.cluster, NodeLease.node_name, NodeLease.run_id)
        )
    )
    return busy


def take(
    store: Store, run: QueuedRun, nodes: Sequence[str], holder: str, ttl_s: float
) -> dict[str, Any] | None:
    """Claim a queued run: status and node leases in one transaction; the run's full request
    when this worker took it and its nodes, None when another did."""
    now = utcnow()
    try:
        with store.engine.begin() as conn:
            moved = run_status.move(
                conn,
                run.run_id,
                "running",
                reason=f"worker {holder}",
                expect=["queued"],
                at=now,
                history_reason=f"worker {holder} leased {', '.join(nodes)}",
            )
            if not moved:
                raise _Taken()
            conn.execute(
                insert(NodeLease),
                [lease_row(run.cluster, run.run_id, n, holder, now, ttl_s) for n in nodes],
            )
            request = read_request(conn, run.run_id)
            start_campaign(conn, request.get("campaign_id"))
    except (_Taken, SQLAlchemyError):
        # Someone else took the run or one of its nodes first (IntegrityError): all rolled back.
        return None
    return request


class _Taken(Exception):
    pass
