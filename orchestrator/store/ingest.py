"""Publishing run folders into the store: validated first, then written in one transaction.

Idempotent by content: a run whose folder digest is already stored is skipped, so ingesting the
same folder twice changes nothing. A run already in the store with another digest (the provisional
row `submit` made, or a folder collected again) is replaced: its rank, epoch and node rows are
rewritten, its status history only gains a row when the status changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update

from orchestrator.errors import IngestError
from orchestrator.monitor import sample_rows
from orchestrator.runs.folder import RunFolder
from orchestrator.store import rows
from orchestrator.store import status as run_status
from orchestrator.store.bulk import insert_rows, insert_values
from orchestrator.store.metrics import RunMetrics, aggregate
from orchestrator.store.models import (
    Campaign,
    MonitorSample,
    RankResult,
    Run,
    RunEpoch,
    RunNode,
)

_CHUNK = 500  # ids per IN (...) list, well below every backend's parameter limit


@dataclass(frozen=True)
class RunSummary:
    """What publishing one run folder did."""

    run_id: str
    status: str
    changed: bool  # False: the store already held exactly this folder
    ranks: int
    metrics: RunMetrics | None
    path: str = ""


@dataclass(frozen=True)
class PreparedRun:
    folder: RunFolder
    metrics: RunMetrics | None


def prepare(folders: Sequence[RunFolder]) -> list[PreparedRun]:
    """Cross-file checks and metrics for every folder, before anything is written."""
    seen: dict[str, str] = {}
    prepared = []
    for folder in folders:
        run_id = folder.manifest.run_id
        if run_id in seen:
            raise IngestError(
                f"run {run_id} is given twice ({seen[run_id]} and {folder.path})",
                "ingest each run folder once",
            )
        seen[run_id] = folder.path
        prepared.append(PreparedRun(folder, aggregate(folder)))
    return prepared


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _existing(conn: Connection, run_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    found: dict[str, tuple[str, str | None]] = {}
    for chunk in _chunks(run_ids):
        query = select(Run.run_id, Run.status, Run.source_digest).where(Run.run_id.in_(chunk))
        for run_id, status, digest in conn.execute(query):
            found[run_id] = (status, digest)
    return found


def _check_campaigns(conn: Connection, prepared: Sequence[PreparedRun]) -> None:
    wanted = {p.folder.manifest.campaign_id for p in prepared} - {None}
    if not wanted:
        return
    known = set(conn.scalars(select(Campaign.campaign_id).where(Campaign.campaign_id.in_(wanted))))
    for p in prepared:
        if p.folder.manifest.campaign_id not in known | {None}:
            raise IngestError(
                f"{p.folder.path}/manifest.json: field campaign_id: campaign "
                f"{p.folder.manifest.campaign_id!r} is not in this store",
                "ingest into the store that holds the campaign, or set campaign_id to null",
            )


def _kept_envs(conn: Connection, run_ids: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """Environments recorded live (record_environment) that a folder without env.json keeps."""
    kept: dict[tuple[str, int], dict[str, Any]] = {}
    for chunk in _chunks(run_ids):
        query = select(RunNode.run_id, RunNode.node_rank, RunNode.env, RunNode.captured_at).where(
            RunNode.run_id.in_(chunk), RunNode.env.is_not(None)
        )
        for run_id, node_rank, env, captured_at in conn.execute(query):
            kept[(run_id, node_rank)] = {"env": env, "captured_at": captured_at}
    return kept


def write(
    conn: Connection, prepared: Sequence[PreparedRun], now: datetime | None = None
) -> list[RunSummary]:
    """Write prepared runs; the caller owns the transaction (all runs or none)."""
    now = now or datetime.now(timezone.utc)
    _check_campaigns(conn, prepared)
    existing = _existing(conn, [p.folder.manifest.run_id for p in prepared])
    summaries: list[RunSummary] = []
    new_runs: list[PreparedRun] = []
    replaced: list[PreparedRun] = []
    for p in prepared:
        before = existing.get(p.folder.manifest.run_id)
        unchanged = before is not None and before[1] == p.folder.digest
        summaries.append(
            RunSummary(
                p.folder.manifest.run_id,
                p.folder.manifest.status,
                not unchanged,
                len(p.folder.ranks),
                p.metrics,
                p.folder.path,
            )
        )
        if not unchanged:
            (replaced if before is not None else new_runs).append(p)

    kept_envs = _delete_children(conn, [p.folder.manifest.run_id for p in replaced])
    history = _insert_runs(conn, new_runs, now)
    history += _update_runs(conn, replaced, {k: v[0] for k, v in existing.items()}, now)
    run_status.notes(conn, history)
    _insert_children(conn, new_runs + replaced, kept_envs, now)
    return summaries


def _delete_children(conn: Connection, run_ids: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """Remove the rank, epoch and node rows of runs about to be replaced; return the node
    environments recorded live, which a folder without env.json keeps."""
    kept = _kept_envs(conn, run_ids)
    for chunk in _chunks(run_ids):
        conn.execute(delete(RunEpoch).where(RunEpoch.run_id.in_(chunk)))
        conn.execute(delete(RankResult).where(RankResult.run_id.in_(chunk)))
        conn.execute(delete(RunNode).where(RunNode.run_id.in_(chunk)))
        conn.execute(delete(MonitorSample).where(MonitorSample.run_id.in_(chunk)))
    return kept


def _insert_runs(conn: Connection, runs: list[PreparedRun], now: datetime) -> list[dict[str, Any]]:
    """Insert new run rows; return their status history as the manifests tell it."""
    insert_rows(conn, Run, [rows.published_run_row(p.folder, p.metrics, now) for p in runs])
    return [h for p in runs for h in rows.history_rows(p.folder.manifest, now)]


def _update_runs(
    conn: Connection, runs: list[PreparedRun], status_before: dict[str, str], now: datetime
) -> list[dict[str, Any]]:
    """Overwrite existing run rows (all but created_at); return a history row per status change."""
    if not runs:
        return []
    updates, history = [], []
    for p in runs:
        row = rows.published_run_row(p.folder, p.metrics, now)
        del row["created_at"]  # the row keeps its first creation time
        updates.append({f"b_{k}": v for k, v in row.items()})
        manifest = p.folder.manifest
        if status_before[manifest.run_id] != manifest.status:
            history.append(
                {
                    "run_id": manifest.run_id,
                    "status": manifest.status,
                    "reason": manifest.reason,
                    "at": manifest.finished_at or now,
                }
            )
    columns = [k for k in updates[0] if k != "b_run_id"]
    statement = (
        update(Run)
        .where(Run.run_id == bindparam("b_run_id"))
        .values({k[2:]: bindparam(k) for k in columns})
    )
    conn.execute(statement, updates)
    return history


def _insert_children(
    conn: Connection,
    runs: list[PreparedRun],
    kept_envs: dict[tuple[str, int], dict[str, Any]],
    now: datetime,
) -> None:
    node_rows: list[dict[str, Any]] = []
    rank_values: list[tuple[Any, ...]] = []
    epoch_rows: list[dict[str, Any]] = []
    monitor_rows: list[dict[str, Any]] = []
    for p in runs:
        folder, run_id = p.folder, p.folder.manifest.run_id
        for node in folder.manifest.nodes:
            if node.name in folder.envs:
                env_text = folder.env_texts.get(node.name)
                row = rows.node_row(run_id, node, folder.envs[node.name], now, env_text)
            else:  # keep what record_environment stored while the run was live, if anything
                kept = kept_envs.get((run_id, node.node_rank), {})
                row = rows.node_row(run_id, node, kept.get("env"), kept.get("captured_at"))
            node_rows.append(row)
        rank_values.extend(rows.rank_values(run_id, rank) for rank in folder.ranks)
        epoch_rows.extend(rows.run_epoch_rows(run_id, folder.ranks))
        monitor_rows.extend(sample_rows(run_id, folder.monitors))
    insert_rows(conn, RunNode, node_rows)
    insert_values(conn, RankResult, rows.RANK_COLUMNS, rank_values)
    insert_rows(conn, RunEpoch, epoch_rows)
    insert_rows(conn, MonitorSample, monitor_rows)
