"""The queue's scheduling decision, pure: FIFO over the queued runs, given which nodes are
held and which nodes each run may take. No store, no I/O: the store reads the queue
(store/queue.py) and `queue/claims.py` acts on the decisions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.specs import NodeSpec


@dataclass(frozen=True)
class QueuedRun:
    run_id: str
    cluster: str
    nnodes: int
    nproc_per_node: int
    request: Mapping[str, Any]  # at least cluster_key, node_names, topology (JSON values)
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
    fitting: dict[tuple[object, ...], list[tuple[str, str]]] = {}  # same nodes: same candidates
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
