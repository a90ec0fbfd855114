"""Runs handed to the unattended path (`campaign submit`, `submit --detach`): each backend
plans and prepares its own (queued for workers over SSH, held jobs on Slurm), and all of them,
with the campaign's row, are written in one transaction: a campaign is queued whole or not at
all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from orchestrator import backends
from orchestrator.runs.request import ExtraField, cluster_file_data, encode_request
from orchestrator.store.campaigns import insert_campaign

if TYPE_CHECKING:
    from orchestrator.backends.base import Backend, DetachItem
    from orchestrator.runs.lifecycle import SubmitRequest
    from orchestrator.specs import ClusterSpec
    from orchestrator.store import Store

EnqueueItem = tuple["ClusterSpec", "SubmitRequest", Mapping[str, ExtraField]]


def enqueue_runs(
    store: Store,
    items: Sequence[EnqueueItem],
    campaign_row: tuple[str, str, dict[str, Any], str] | None = None,
) -> list[str]:
    """(cluster, SubmitRequest, extra request fields) -> run ids in the order given, all in
    one transaction. Every run is planned first: topology, nodes and precision fail here,
    before anything is written or submitted."""
    data_cache: dict[str, dict[str, Any] | None] = {}
    by_backend: dict[str, tuple[Backend, list[int], list[DetachItem]]] = {}
    for index, (cluster, req, extra) in enumerate(items):
        if cluster.source not in data_cache:
            data_cache[cluster.source] = cluster_file_data(cluster)
        doc = encode_request(cluster, req, data_cache[cluster.source], **extra)
        backend = backends.for_cluster(cluster)
        _, indices, mine = by_backend.setdefault(backend.name, (backend, [], []))
        indices.append(index)
        mine.append((cluster, req, doc))
    order: list[str] = [""] * len(items)
    with ExitStack() as stack:
        detached = []
        for backend, indices, mine in by_backend.values():
            prepared = stack.enter_context(backend.detach(mine))
            detached.append(prepared)
            for index, run_id in zip(indices, prepared.run_ids):
                order[index] = run_id
        with store.transaction() as conn:
            if campaign_row:
                insert_campaign(conn, *campaign_row)
            for prepared in detached:
                prepared.write(conn)
    return order


def detached_counts(items: Sequence[EnqueueItem]) -> list[tuple[str, int]]:
    """How many runs each backend took, as `campaign submit` says it ('2 run(s) queued, 1
    run(s) submitted to Slurm'): only the backends that took some."""
    counts = []
    for backend in backends.all_backends():
        n = sum(1 for cluster, _, _ in items if cluster.backend == backend.name)
        if n:
            counts.append((backend.detached_as, n))
    return counts


def detach_hints(items: Sequence[EnqueueItem]) -> list[str]:
    """What each backend that took runs says once after (e.g. who follows Slurm's jobs)."""
    used = {cluster.backend for cluster, _, _ in items}
    return [b.detach_hint for b in backends.all_backends() if b.name in used and b.detach_hint]
