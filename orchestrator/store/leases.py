"""Node leases and follow rows: who follows a run, until when.

A run is claimed in ONE transaction that moves it from queued to running and inserts one
node_leases row per node; the (cluster, node_name) primary key makes double booking impossible,
so a conflict rolls the whole claim back and the worker tries the next run. A foreground run
takes its leases with its row (NodesBusy when another run holds a node). A followed Slurm job
holds a slurm_follows row instead (store/follows.py); `renew` keeps either alive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.clock import utcnow
from orchestrator.errors import OrchestratorError
from orchestrator.runfolder.folder import RunManifest
from orchestrator.store import rows
from orchestrator.store import status as run_status
from orchestrator.store.follower import Follower, follower_state
from orchestrator.store.models import NodeLease, Run, RunNode, SlurmFollow

if TYPE_CHECKING:
    from orchestrator.store import Store

LEASE_TTL_S = 60.0
# What a follower holds: leases on the run's nodes, or the follow row of a job that a
# scheduler owns (Slurm: the nodes are the scheduler's, not ours to lease).
LeaseKind = Literal["nodes", "job"]
_LEASE_TABLES: dict[LeaseKind, type[NodeLease] | type[SlurmFollow]] = {
    "nodes": NodeLease,
    "job": SlurmFollow,
}


class QueueError(OrchestratorError):
    """A queue operation that cannot be done (unknown run, already finished, ...)."""


class NodesBusy(QueueError):
    """A foreground run's nodes are held by another run (live, or awaiting adoption)."""


def follower_ttl_s(grace_s: float) -> float:
    """A follower's lease: short enough that an adopter sees it expire well inside the grace."""
    return min(LEASE_TTL_S, grace_s / 3)


# -- claim, renew, release ------------------------------------------------------------------------


def renew(
    store: Store, run_id: str, holder: str, ttl_s: float, lease: LeaseKind = "nodes"
) -> tuple[int, bool]:
    """Push the run's leases (or its job's follow row) out by ttl; returns (leases still
    held, cancel requested)."""
    table = _LEASE_TABLES[lease]
    with store.transaction() as conn:
        held = conn.execute(
            update(table)
            .where(table.run_id == run_id, table.holder == holder)
            .values(expires_at=utcnow() + timedelta(seconds=ttl_s))
        ).rowcount
        cancel = conn.scalar(select(Run.cancel_requested_at).where(Run.run_id == run_id))
    return held, cancel is not None


def release(store: Store, run_id: str, holder: str | None = None) -> None:
    with store.transaction() as conn:
        query = delete(NodeLease).where(NodeLease.run_id == run_id)
        if holder is not None:
            query = query.where(NodeLease.holder == holder)
        conn.execute(query)


# -- a foreground run's own leases ----------------------------------------------------------------


def create_followed_run(
    store: Store,
    manifest: RunManifest,
    request: dict[str, Any],
    nodes: Sequence[str],
    holder: str,
    ttl_s: float,
) -> None:
    """The row of a run that `submit` starts and follows itself, with the request an adopter
    needs should this process die, its run_nodes, its history and its node leases, in one
    transaction: a node held by another run refuses the whole of it (NodesBusy)."""
    now = utcnow()
    row = rows.run_row(manifest, now)
    row.update(status="running", request=request, submitted_at=manifest.submitted_at or now)
    try:
        with store.engine.begin() as conn:
            run_status.insert_run(conn, row, f"{holder} leased {', '.join(nodes)}", now)
            conn.execute(
                insert(RunNode),
                [rows.node_row(manifest.run_id, n, None, None) for n in manifest.nodes],
            )
            conn.execute(
                insert(NodeLease),
                [
                    lease_row(manifest.cluster, manifest.run_id, n, holder, now, ttl_s)
                    for n in nodes
                ],
            )
    except SQLAlchemyError:
        with store.reading() as conn:
            busy = nodes_busy(conn, manifest.cluster, nodes, manifest.run_id)
        if busy is None:
            raise
        raise busy from None


def lease_row(
    cluster: str, run_id: str, node: str, holder: str, now: datetime, ttl_s: float
) -> dict[str, Any]:
    return {
        "cluster": cluster,
        "node_name": node,
        "run_id": run_id,
        "holder": holder,
        "acquired_at": now,
        "expires_at": now + timedelta(seconds=ttl_s),
    }


def nodes_busy(
    conn: Connection, cluster: str, nodes: Sequence[str], run_id: str | None = None
) -> NodesBusy | None:
    """The error for `nodes` held by other runs (None when all are free): which nodes, which
    run, who follows it and whether that follower is alive, and how to clear it."""
    now = utcnow()
    query = select(NodeLease.node_name, NodeLease.run_id, NodeLease.holder, NodeLease.expires_at)
    query = query.where(NodeLease.cluster == cluster, NodeLease.node_name.in_(tuple(nodes)))
    held: dict[str, tuple[list[str], str, datetime]] = {}
    for node, rid, holder, expires in conn.execute(query.order_by(NodeLease.node_name)):
        if rid != run_id and rid is not None:
            names, first_holder, until = held.get(rid, ([], holder, expires))
            held[rid] = ([*names, node], first_holder, max(until, expires))
    if not held:
        return None
    parts = []
    for rid, (names, holder, expires) in held.items():
        when = expires.isoformat(timespec="seconds")
        if follower_state(expires, None, now) == "alive":
            state = f"follower {holder}, lease until {when}"
        else:
            state = f"follower {holder} stopped renewing at {when}; awaiting adoption"
        parts.append(f"{', '.join(names)} held by run {rid} ({state})")
    first = next(iter(held))
    return NodesBusy(
        "nodes busy: " + "; ".join(parts),
        f"wait for it (`submit --wait`), follow it (`orchestrator attach {first}`) "
        f"or stop it (`orchestrator cancel {first}`)",
    )


def check_nodes_free(store: Store, cluster: str, nodes: Sequence[str]) -> None:
    """NodesBusy now, before anything is printed or written (the claim itself re-checks)."""
    with store.reading() as conn:
        busy = nodes_busy(conn, cluster, nodes)
    if busy is not None:
        raise busy


def describe_leases(
    conn: Connection, alive: Callable[[str], bool | None] = lambda holder: None
) -> dict[str, str]:
    """run id -> who holds its node leases, on which nodes, until when (`orchestrator queue`);
    a follower whose leases expired is named as gone, awaiting adoption. `alive(holder)`:
    whether the follower's process lives (None: not known, e.g. on another host)."""
    held: dict[str, list[tuple[str, str, datetime]]] = {}
    for run_id, node, holder, expires in conn.execute(
        select(NodeLease.run_id, NodeLease.node_name, NodeLease.holder, NodeLease.expires_at)
    ):
        held.setdefault(str(run_id), []).append((node, holder, expires))
    described = {}
    now = utcnow()
    for run_id, mine in held.items():
        holder = mine[0][1]
        who = Follower.decode(holder).described()
        until = max(expires for _, _, expires in mine)
        when = until.isoformat(timespec="seconds")
        living = alive(holder)
        state = f"lease until {when}" + (" (follower alive)" if living else "")
        if follower_state(until, None, now) != "alive":
            state = f"follower gone since {when}, awaiting adoption (`orchestrator attach`)"
        elif living is False:
            state = (
                f"follower gone (no such process on this host), its lease runs out at {when}; "
                f"then a worker or `orchestrator attach {run_id}` adopts the run"
            )
        described[run_id] = f"{who} on {', '.join(node for node, _, _ in mine)}, {state}"
    return described
