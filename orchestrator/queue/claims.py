"""What a worker claims next: the queue read from the store, each cluster parsed once from its
stored request, the pure scheduler's first startable run taken in one transaction."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from orchestrator.runs.request import cluster_from, known_cluster_keys
from orchestrator.schedule import QueuedRun, iter_schedule
from orchestrator.store import queue as stored_queue
from orchestrator.store.leases import LEASE_TTL_S

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from orchestrator.specs import NodeSpec
    from orchestrator.store import Store


@dataclass(frozen=True)
class Claim:
    run_id: str
    nodes: tuple[str, ...]
    request: Mapping[str, Any]
    submitted_at: datetime


def read_queue(conn: Connection) -> list[QueuedRun]:
    """The queued runs, oldest first, with every cluster they name parsed (once per process)."""
    queued = stored_queue.read_queue(conn)
    missing = {str(q.request["cluster_key"]) for q in queued} - known_cluster_keys()
    for full in stored_queue.requests_for_keys(conn, sorted(missing)):
        cluster_from(full)  # parsed once per process, cached by key
    return queued


def nodes_of(run: QueuedRun) -> Sequence[NodeSpec]:
    return cluster_from(run.request).nodes


def claim_next(store: Store, holder: str, ttl_s: float = LEASE_TTL_S) -> Claim | None:
    """Take the first queued run whose nodes are free: leases and status change in one
    transaction. None when nothing can start now. The whole queue is read: a run deep in it
    may be the only one whose nodes are free."""
    with store.reading() as conn:
        queued = read_queue(conn)
        busy = stored_queue.read_busy(conn)
    for decision in iter_schedule(queued, busy, nodes_of, reasons=False):
        if decision.nodes is None:
            continue
        run = next(q for q in queued if q.run_id == decision.run_id)
        request = stored_queue.take(store, run, decision.nodes, holder, ttl_s)
        if request is not None:
            return Claim(run.run_id, decision.nodes, request, run.submitted_at)
    return None
