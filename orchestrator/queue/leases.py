"""The queue's store side: queued runs, scheduling decisions, node leases, cancel requests.

A run is claimed in ONE transaction that moves it from queued to running and inserts one
node_leases row per node; the (cluster, node_name) primary key makes double booking impossible,
so a conflict rolls the whole claim back and the worker tries the next run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, and_, delete, exists, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.errors import OrchestratorError
from orchestrator.redact import redact_text, without_password
from orchestrator.runs.folder import RunManifest
from orchestrator.specs import ClusterSpec, NodeSpec, Topology, with_inputs
from orchestrator.states import FINAL_STATUSES, RunStatus
from orchestrator.store import rows
from orchestrator.store import status as run_status
from orchestrator.store.models import Campaign, NodeLease, Run, RunNode, RunStatusChange
from orchestrator.store.quarantine import held_by_quarantine

if TYPE_CHECKING:
    from orchestrator.store import Store

LEASE_TTL_S = 60.0
_CLUSTERS: dict[str, ClusterSpec] = {}  # cluster_key -> parsed cluster, per process


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


class QueueError(OrchestratorError):
    """A queue operation that cannot be done (unknown run, already finished, ...)."""


# -- the queued request -------------------------------------------------------------------------


def request_doc(
    cluster: ClusterSpec,
    cluster_data: Mapping[str, Any] | None,
    topology: Topology,
    node_names: Sequence[str] | None,
    precision: str,
    sets: Sequence[tuple[str, str]],
    timeout_s: float | None,
    no_progress_timeout_s: float | None,
    command: str,
    campaign_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """What a worker on any machine needs to execute the run: the cluster file's parsed content
    (None: the embedded default) without its secrets, and the submit options. Anyone who may
    SELECT from the store reads this: the store URLs lose their passwords (a worker connects
    with its own --db and brings the password from the environment or ~/.pgpass)."""
    canonical = json.dumps(without_secrets(cluster_data), sort_keys=True, default=str)
    return {
        "cluster_source": cluster.source,
        "cluster_data": json.loads(canonical),
        "cluster_key": hashlib.sha256(canonical.encode()).hexdigest()[:16],
        "backend": cluster.backend,  # `--backend` may override the file
        "topology": str(topology),
        "node_names": list(node_names) if node_names else None,
        "precision": precision,
        "sets": [list(kv) for kv in sets],
        "timeout_s": timeout_s,
        "no_progress_timeout_s": no_progress_timeout_s,
        "command": redact_text(command),
        "campaign_id": campaign_id,
        **extra,
    }


def without_secrets(cluster_data: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The cluster file's content with no password in its [store] URLs."""
    store = cluster_data.get("store") if cluster_data else None
    if not cluster_data or not isinstance(store, Mapping):
        return cluster_data
    cleaned = {k: without_password(v) if isinstance(v, str) else v for k, v in store.items()}
    return {**cluster_data, "store": cleaned}


def cluster_from(doc: Mapping[str, Any]) -> ClusterSpec:
    key = str(doc.get("cluster_key"))
    cluster = _CLUSTERS.get(key)
    if cluster is None:
        from orchestrator.config import embedded_default, parse_cluster

        data = doc.get("cluster_data")
        cluster = embedded_default() if data is None else parse_cluster(data, doc["cluster_source"])
        _CLUSTERS[key] = cluster
    backend = doc.get("backend")
    if backend and backend != cluster.backend:
        cluster = replace(cluster, backend=backend)
    return with_inputs(cluster, doc.get("data_dir"), doc.get("backbone_weights"))


def cluster_file_data(cluster: ClusterSpec) -> dict[str, Any] | None:
    """The cluster file's parsed content, stored with each queued run (None: embedded default)."""
    if str(cluster.source).startswith("<"):
        return None
    from orchestrator.config import tomllib

    return tomllib.loads(Path(cluster.source).read_text(encoding="utf-8"))


def request_for(
    cluster: ClusterSpec, req: Any, data: Mapping[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """request_doc for a SubmitRequest (`data`: the cluster file's content, read if not given)."""
    return request_doc(
        cluster,
        cluster_file_data(cluster) if data is None else data,
        req.topology,
        req.node_names,
        req.precision,
        req.sets,
        req.timeout_s,
        req.no_progress_timeout_s,
        req.command,
        req.campaign_id,
        **{"data_dir": req.data_dir, "backbone_weights": req.backbone_weights, **extra},
    )


# -- enqueue --------------------------------------------------------------------------------------


def insert_campaign(
    conn: Connection, campaign_id: str, name: str, spec: dict[str, Any], by: str
) -> None:
    conn.execute(
        insert(Campaign),
        [
            {
                "campaign_id": campaign_id,
                "name": name,
                "spec": spec,
                "status": "queued",
                "created_by": by,
                "created_at": now_utc(),
            }
        ],
    )


def start_campaign(conn: Connection, campaign_id: str | None) -> None:
    """A campaign whose first run starts is running."""
    if campaign_id:
        conn.execute(
            update(Campaign)
            .where(Campaign.campaign_id == campaign_id, Campaign.status == "queued")
            .values(status="running")
        )


def enqueue(conn: Connection, manifest: RunManifest, request: dict[str, Any]) -> None:
    """A queued runs row (no run_nodes yet: the worker chooses the nodes) and its history."""
    now = now_utc()
    row = rows.run_row(manifest, now)
    row.update(status="queued", request=request, submitted_at=now)
    run_status.insert_run(conn, row, None, now)


# -- scheduling (pure) ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QueuedRun:
    run_id: str
    cluster: str
    nnodes: int
    nproc_per_node: int
    request: Mapping[str, Any]
    submitted_at: datetime


@dataclass(frozen=True)
class Decision:
    run_id: str
    nodes: tuple[str, ...] | None  # the nodes it may take now, or None: it waits
    reason: str  # why it waits ('' when it may start)


def schedule(
    queued: Sequence[QueuedRun],
    busy: Mapping[tuple[str, str], str],
    nodes_of: Callable[[QueuedRun], Sequence[NodeSpec]],
) -> list[Decision]:
    """FIFO over the queue. A run that must wait reserves the free nodes it would take, so later
    runs cannot starve it by taking those nodes one by one (no worse than FIFO per node set)."""
    return list(iter_schedule(queued, busy, nodes_of))


def iter_schedule(
    queued: Iterable[QueuedRun],
    busy: Mapping[tuple[str, str], str],
    nodes_of: Callable[[QueuedRun], Sequence[NodeSpec]],
    reasons: bool = True,
) -> Iterator[Decision]:
    """`schedule`, one decision at a time: a worker stops at the first run it can start.
    reasons=False skips building the wait reasons (a worker does not show them)."""
    held = dict(busy)  # (cluster, node) -> what holds it: 'run X' or 'waiting run Y'
    fitting: dict[tuple[Any, ...], list[tuple[str, str]]] = {}  # same nodes -> same candidates
    for run in queued:
        names = run.request.get("node_names")
        shape = (
            run.cluster,
            run.request.get("cluster_key"),
            run.nproc_per_node,
            names and tuple(names),
        )
        keys = fitting.get(shape)
        if keys is None:
            candidates = [n for n in nodes_of(run) if n.accelerators >= run.nproc_per_node]
            if names:
                candidates = [n for n in candidates if n.name in names]
            keys = fitting[shape] = [(run.cluster, n.name) for n in candidates]
        need = run.nnodes
        if len(keys) < need:
            reason = f"cluster {run.cluster!r} has no {need} fitting node(s)" if reasons else "-"
            yield Decision(run.run_id, None, reason)
            continue
        free = [k for k in keys if k not in held]
        if len(free) >= need and (not names or len(free) == len(keys)):
            chosen = free[:need]
            for key in chosen:
                held[key] = f"run {run.run_id}"
            yield Decision(run.run_id, tuple(k[1] for k in chosen), "")
            continue
        reason = "-"
        if reasons:
            reason = "nodes busy: " + ", ".join(f"{k[1]} ({held[k]})" for k in keys if k in held)
        for key in free:
            held[key] = f"waiting run {run.run_id}"
        yield Decision(run.run_id, None, reason)


def read_queue(conn: Connection, limit: int | None = None) -> list[QueuedRun]:
    """The queued runs, oldest first. Their `request` holds only what scheduling needs (cluster
    key, node names, topology): the full documents embed the cluster file and cost far more to
    decode than the decision itself; `read_request` gets one when a run is claimed."""
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
    for missing in {q.request["cluster_key"] for q in queued} - _CLUSTERS.keys():
        full = conn.scalar(select(Run.request).where(key == missing).limit(1))
        if full is not None:
            cluster_from(full)  # parsed once per process, cached by key
    return queued


def read_request(conn: Connection, run_id: str) -> dict[str, Any]:
    request = conn.scalar(select(Run.request).where(Run.run_id == run_id))
    if request is None:
        raise QueueError(f"queued run {run_id} has no stored request", "submit it again")
    return dict(request)


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
    for run_id, mine in held.items():
        holder = mine[0][1]
        who = holder if holder.startswith("submit ") else f"worker {holder}"
        until = max(expires for _, _, expires in mine)
        when = until.isoformat(timespec="seconds")
        living = alive(holder)
        state = f"lease until {when}" + (" (follower alive)" if living else "")
        if until <= now_utc():
            state = f"follower gone since {when}, awaiting adoption (`orchestrator attach`)"
        elif living is False:
            state = (
                f"follower gone (no such process on this host), its lease runs out at {when}; "
                f"then a worker or `orchestrator attach {run_id}` adopts the run"
            )
        described[run_id] = f"{who} on {', '.join(node for node, _, _ in mine)}, {state}"
    return described


def read_busy(conn: Connection) -> dict[tuple[str, str], str]:
    busy = held_by_quarantine(conn)  # the health gate's quarantined nodes are skipped too
    busy.update(
        ((c, n), f"run {r}")
        for c, n, r in conn.execute(
            select(NodeLease.cluster, NodeLease.node_name, NodeLease.run_id)
        )
    )
    return busy


def nodes_of(run: QueuedRun) -> Sequence[NodeSpec]:
    return cluster_from(run.request).nodes


# -- claim, renew, release ------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    run_id: str
    nodes: tuple[str, ...]
    request: Mapping[str, Any]
    submitted_at: datetime


def claim_next(store: Store, holder: str, ttl_s: float = LEASE_TTL_S) -> Claim | None:
    """Take the first queued run whose nodes are free: leases and status change in one
    transaction. None when nothing can start now. The whole queue is read: a run deep in it
    may be the only one whose nodes are free."""
    with store.reading() as conn:
        queued = read_queue(conn)
        busy = read_busy(conn)
    for decision in iter_schedule(queued, busy, nodes_of, reasons=False):
        if decision.nodes is None:
            continue
        run = next(q for q in queued if q.run_id == decision.run_id)
        request = _take(store, run, decision.nodes, holder, ttl_s)
        if request is not None:
            return Claim(run.run_id, decision.nodes, request, run.submitted_at)
    return None


def _take(
    store: Store, run: QueuedRun, nodes: Sequence[str], holder: str, ttl_s: float
) -> dict[str, Any] | None:
    """The run's full request when this worker took it and its nodes; None when another did."""
    now = now_utc()
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
                [
                    {
                        "cluster": run.cluster,
                        "node_name": n,
                        "run_id": run.run_id,
                        "holder": holder,
                        "acquired_at": now,
                        "expires_at": now + timedelta(seconds=ttl_s),
                    }
                    for n in nodes
                ],
            )
            request = read_request(conn, run.run_id)
            start_campaign(conn, request.get("campaign_id"))
    except (_Taken, SQLAlchemyError):
        # Someone else took the run or one of its nodes first (IntegrityError): all rolled back.
        return None
    return request


class _Taken(Exception):
    pass


def renew(
    store: Store, run_id: str, holder: str, ttl_s: float, table: Any = NodeLease
) -> tuple[int, bool]:
    """Push the run's leases out by ttl; returns (leases still held, cancel requested).
    `table`: NodeLease, or SlurmFollow for a followed Slurm run (same columns)."""
    with store.transaction() as conn:
        held = conn.execute(
            update(table)
            .where(table.run_id == run_id, table.holder == holder)
            .values(expires_at=now_utc() + timedelta(seconds=ttl_s))
        ).rowcount
        cancel = conn.scalar(select(Run.cancel_requested_at).where(Run.run_id == run_id))
    return held, cancel is not None


def release(store: Store, run_id: str, holder: str | None = None) -> None:
    with store.transaction() as conn:
        query = delete(NodeLease).where(NodeLease.run_id == run_id)
        if holder is not None:
            query = query.where(NodeLease.holder == holder)
        conn.execute(query)


def finish_campaign_if_done(store: Store, campaign_id: str | None) -> None:
    if not campaign_id:
        return
    with store.transaction() as conn:
        open_runs = conn.scalar(
            select(Run.run_id)
            .where(Run.campaign_id == campaign_id, Run.status.in_(("queued", "running")))
            .limit(1)
        )
        if open_runs is None:
            conn.execute(
                update(Campaign)
                .where(
                    Campaign.campaign_id == campaign_id, Campaign.status.in_(("queued", "running"))
                )
                .values(status="finished", finished_at=now_utc())
            )


# -- a foreground run's own leases ----------------------------------------------------------------


class NodesBusy(QueueError):
    """A foreground run's nodes are held by another run (live, or awaiting adoption)."""


def follower_ttl_s(grace_s: float) -> float:
    """A follower's lease: short enough that an adopter sees it expire well inside the grace."""
    return min(LEASE_TTL_S, grace_s / 3)


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
    now = now_utc()
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
                insert(NodeLease), [_lease(manifest, n, holder, now, ttl_s) for n in nodes]
            )
    except SQLAlchemyError:
        with store.reading() as conn:
            busy = nodes_busy(conn, manifest.cluster, nodes, manifest.run_id)
        if busy is None:
            raise
        raise busy from None


def _lease(
    manifest: RunManifest, node: str, holder: str, now: datetime, ttl_s: float
) -> dict[str, Any]:
    return {
        "cluster": manifest.cluster,
        "node_name": node,
        "run_id": manifest.run_id,
        "holder": holder,
        "acquired_at": now,
        "expires_at": now + timedelta(seconds=ttl_s),
    }


def nodes_busy(
    conn: Connection, cluster: str, nodes: Sequence[str], run_id: str | None = None
) -> NodesBusy | None:
    """The error for `nodes` held by other runs (None when all are free): which nodes, which
    run, who follows it and whether that follower is alive, and how to clear it."""
    now = now_utc()
    query = select(NodeLease.node_name, NodeLease.run_id, NodeLease.holder, NodeLease.expires_at)
    query = query.where(NodeLease.cluster == cluster, NodeLease.node_name.in_(tuple(nodes)))
    held: dict[str, list[Any]] = {}
    for node, rid, holder, expires in conn.execute(query.order_by(NodeLease.node_name)):
        if rid != run_id and rid is not None:
            entry = held.setdefault(rid, [[], holder, expires])
            entry[0].append(node)
            entry[2] = max(entry[2], expires)
    if not held:
        return None
    parts = []
    for rid, (names, holder, expires) in held.items():
        when = expires.isoformat(timespec="seconds")
        if expires > now:
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


# -- orphans and final states ---------------------------------------------------------------------


@dataclass(frozen=True)
class Orphan:
    run_id: str
    request: Mapping[str, Any]
    nodes: tuple[str, ...]
    holders: tuple[str, ...]
    expired_at: datetime | None


def find_orphans(
    store: Store, now: datetime | None = None, run_id: str | None = None
) -> list[Orphan]:
    """Runs still `running` with a stored request whose every lease expired (follower gone:
    a worker, or a foreground `submit`). Slurm runs hold no node leases: Slurm owns their
    nodes (backends/slurm/follows.py adopts them)."""
    now = now or now_utc()
    live = exists().where(and_(NodeLease.run_id == Run.run_id, NodeLease.expires_at > now))
    query = select(Run.run_id).where(
        Run.status == "running", Run.request.is_not(None), Run.backend != "slurm", ~live
    )
    if run_id:
        query = query.where(Run.run_id == run_id)
    with store.reading() as conn:
        found = [follow_state(conn, rid) for (rid,) in conn.execute(query).all()]
    return [o for o in found if o is not None]


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


def adopt(store: Store, run_id: str, holder: str, ttl_s: float) -> bool:
    """Take over an orphan's expired leases so that only one reconciler cleans it."""
    now = now_utc()
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
    now = now_utc()
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


# -- cancel ----------------------------------------------------------------------------------------


def request_cancel(store: Store, run_id: str, by: str) -> str:
    """'cancelled' for a queued run (at once), 'requested' for a running one (its worker stops
    it; reconcile does when the worker is gone)."""
    with store.reading() as conn:
        row = conn.execute(select(Run.status, Run.request).where(Run.run_id == run_id)).first()
    if row is None:
        raise QueueError(
            f"no run {run_id} in results store at {store.url}", "check `orchestrator queue`"
        )
    status, request = row
    if status == "queued":
        if end_run(store, run_id, "cancelled", f"cancelled by {by} before it started", ["queued"]):
            return "cancelled"
        return request_cancel(store, run_id, by)  # a worker took it meanwhile
    if status == "running":
        if request is None:
            raise QueueError(
                f"run {run_id} was started by `orchestrator submit`, not by a worker",
                "stop it with Ctrl-C where it runs",
            )
        record_cancel_request(store, run_id, "running", f"{CANCEL_NOTE}{by}")
        return "requested"
    raise QueueError(f"run {run_id} already ended ({status})", "nothing to cancel")


CANCEL_NOTE = "cancel requested by "  # the history line `orchestrator cancel` leaves


def cancel_note(store: Store, run_id: str) -> str | None:
    """The history's latest "cancel requested by WHO" line of the run, if any."""
    with store.reading() as conn:
        return conn.scalar(
            select(RunStatusChange.reason)
            .where(
                RunStatusChange.run_id == run_id,
                RunStatusChange.reason.like(f"{CANCEL_NOTE}%"),
            )
            .order_by(RunStatusChange.at.desc())
            .limit(1)
        )


def record_cancel_request(store: Store, run_id: str, status: RunStatus, reason: str) -> None:
    """Stamp runs.cancel_requested_at (first request only) and say so in the history; the
    run's worker, follower or submit sees it on its next renewal."""
    with store.transaction() as conn:
        conn.execute(
            update(Run)
            .where(Run.run_id == run_id, Run.cancel_requested_at.is_(None))
            .values(cancel_requested_at=now_utc())
        )
        run_status.note(conn, run_id, status, reason)
