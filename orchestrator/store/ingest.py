"""Publishing run folders into the store: validated first, then written in one transaction.

Idempotent by content: a run whose folder digest is already stored is skipped, so ingesting the
same folder twice changes nothing. The provisional row `submit` made (no digest yet) is replaced
by its folder. A run already published with another digest is replaced only when the caller says
so (`replace_published`; `ingest` refuses by default, naming what differs), and the replacement is
a row of its status history. Its rank, epoch and node rows are rewritten.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, select, update

from orchestrator.clock import utcnow
from orchestrator.errors import IngestError
from orchestrator.monitor import sample_rows
from orchestrator.runfolder.folder import RunFolder
from orchestrator.store import monitor_series, rows, summaries
from orchestrator.store import status as run_status
from orchestrator.store.bulk import chunks, insert_rows, insert_values
from orchestrator.store.metrics import RunMetrics, aggregate
from orchestrator.store.models import (
    Campaign,
    MonitorSample,
    RankResult,
    Run,
    RunEpoch,
    RunMonitorSeries,
    RunNode,
)
from orchestrator.store.readings import write_stragglers


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


# What `ingest` compares when a stored run and a folder disagree, in the order it says them.
COMPARED = ("status", "global_images", "e2e_time_s", "p_whole", "p_train", "p_core", "map")


def _existing(conn: Connection, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    table = Run.__table__
    columns = [table.c.run_id, table.c.source_digest, *(table.c[c] for c in COMPARED)]
    for chunk in chunks(run_ids):
        for row in conn.execute(select(*columns).where(Run.run_id.in_(chunk))).mappings():
            found[row["run_id"]] = dict(row)
    return found


def differences(stored: dict[str, Any], p: PreparedRun) -> list[str]:
    """`p_core 3.01 -> 64` for each compared field that a folder would change."""
    new = dataclasses.asdict(p.metrics) if p.metrics else {}
    new["status"] = p.folder.manifest.status
    changed = []
    for name in COMPARED:
        before, after = stored.get(name), new.get(name)
        if isinstance(before, float) and isinstance(after, float):
            same = abs(before - after) <= 1e-9 * max(abs(before), abs(after), 1.0)
        else:
            same = before == after
        if not same:
            changed.append(f"{name} {_shown(before)} -> {_shown(after)}")
    return changed


def _shown(value: Any) -> str:
    return "none" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _refuse_replacing(p: PreparedRun, stored: dict[str, Any]) -> IngestError:
    changed = differences(stored, p) or ["only files that no stored column shows"]
    return IngestError(
        f"run {p.folder.manifest.run_id} is already stored with other content ({p.folder.path}: "
        f"digest {str(stored['source_digest'])[:12]} -> {p.folder.digest[:12]}; "
        f"{', '.join(changed)})",
        "nothing was written; ingest --replace replaces it and records that in its status "
        "history, or ingest another folder",
    )


def _check_campaigns(
    conn: Connection, prepared: Sequence[PreparedRun], adopt: bool, now: datetime
) -> None:
    wanted = {p.folder.manifest.campaign_id for p in prepared} - {None}
    if not wanted:
        return
    known = set(conn.scalars(select(Campaign.campaign_id).where(Campaign.campaign_id.in_(wanted))))
    missing = sorted(str(c) for c in wanted - known)
    if missing and adopt:  # a history moved folder by folder: its campaigns come along
        insert_rows(conn, Campaign, [_campaign_row(c, now) for c in missing])
        return
    for p in prepared:
        if p.folder.manifest.campaign_id not in known | {None}:
            raise IngestError(
                f"{p.folder.path}/manifest.json: field campaign_id: campaign "
                f"{p.folder.manifest.campaign_id!r} is not in this store",
                "ingest into the store that holds the campaign, or set campaign_id to null",
            )


def _campaign_row(campaign_id: str, now: datetime) -> dict[str, Any]:
    """A campaign known only from its runs' folders: its file stayed in the other store."""
    return {
        "campaign_id": campaign_id,
        "name": campaign_id,
        "spec": {"recreated_by": "ingest", "note": "known from its runs' folders only"},
        "status": "finished",
        "created_by": None,
        "created_at": now,
        "finished_at": None,
    }


def _kept_envs(conn: Connection, run_ids: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """Environments recorded live (record_environment) that a folder without env.json keeps."""
    kept: dict[tuple[str, int], dict[str, Any]] = {}
    for chunk in chunks(run_ids):
        query = select(RunNode.run_id, RunNode.node_rank, RunNode.env, RunNode.captured_at).where(
            RunNode.run_id.in_(chunk), RunNode.env.is_not(None)
        )
        for run_id, node_rank, env, captured_at in conn.execute(query):
            kept[(run_id, node_rank)] = {"env": env, "captured_at": captured_at}
    return kept


@dataclass(frozen=True)
class WritePolicy:
    """How `write` treats what the store already holds."""

    replace_published: bool = True  # the lifecycle re-publishes; `ingest` refuses by default
    adopt_campaigns: bool = False  # create a campaign row a folder names but the store lacks
    replaced_by: str = "a new publish of its run folder"  # said in the status history


PUBLISH = WritePolicy()  # the lifecycle's: a run's own folder, published again, replaces it


def write(
    conn: Connection,
    prepared: Sequence[PreparedRun],
    now: datetime | None = None,
    policy: WritePolicy = PUBLISH,
) -> list[RunSummary]:
    """Write prepared runs; the caller owns the transaction (all runs or none)."""
    now = now or utcnow()
    _check_campaigns(conn, prepared, policy.adopt_campaigns, now)
    existing = _existing(conn, [p.folder.manifest.run_id for p in prepared])
    done: list[RunSummary] = []
    new_runs: list[PreparedRun] = []
    replaced: list[PreparedRun] = []
    notes: list[dict[str, Any]] = []
    for p in prepared:
        before = existing.get(p.folder.manifest.run_id)
        unchanged = before is not None and before["source_digest"] == p.folder.digest
        if before is not None and not unchanged and before["source_digest"] is not None:
            if not policy.replace_published:
                raise _refuse_replacing(p, before)
            notes.append(_replacement_note(p, before, policy.replaced_by, now))
        done.append(
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

    written = [p.folder.manifest.run_id for p in new_runs + replaced]
    scopes = summaries.scopes_of(conn, [p.folder.manifest.run_id for p in replaced])
    kept_envs = _delete_children(conn, [p.folder.manifest.run_id for p in replaced])
    history = _insert_runs(conn, new_runs, now)
    history += _update_runs(conn, replaced, {k: v["status"] for k, v in existing.items()}, now)
    run_status.notes(conn, history + notes)
    _insert_children(conn, new_runs + replaced, kept_envs, now)
    write_stragglers(conn, [p.folder for p in new_runs + replaced])
    # a replaced run may have moved to another configuration: both scopes are recomputed
    summaries.refresh(conn, scopes | summaries.scopes_of(conn, written), added_only=not replaced)
    return done


def _replacement_note(
    p: PreparedRun, stored: dict[str, Any], how: str, now: datetime
) -> dict[str, Any]:
    changed = differences(stored, p) or ["no stored column changed"]
    return {
        "run_id": p.folder.manifest.run_id,
        "status": p.folder.manifest.status,
        "reason": f"replaced by {how} (digest {str(stored['source_digest'])[:12]} -> "
        f"{p.folder.digest[:12]}: {', '.join(changed)})",
        "at": now,
    }


def _delete_children(conn: Connection, run_ids: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
    """Remove the rank, epoch and node rows of runs about to be replaced; return the node
    environments recorded live, which a folder without env.json keeps."""
    kept = _kept_envs(conn, run_ids)
    for chunk in chunks(run_ids):
        conn.execute(delete(RunEpoch).where(RunEpoch.run_id.in_(chunk)))
        conn.execute(delete(RankResult).where(RankResult.run_id.in_(chunk)))
        conn.execute(delete(RunNode).where(RunNode.run_id.in_(chunk)))
        conn.execute(delete(MonitorSample).where(MonitorSample.run_id.in_(chunk)))
        conn.execute(delete(RunMonitorSeries).where(RunMonitorSeries.run_id.in_(chunk)))
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
    monitored: dict[str, list[dict[str, Any]]] = {}
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
        samples = sample_rows(run_id, folder.monitors)
        if samples:
            monitored[run_id] = samples
        monitor_rows.extend(samples)
    insert_rows(conn, RunNode, node_rows)
    insert_values(conn, RankResult, rows.RANK_COLUMNS, rank_values)
    insert_rows(conn, RunEpoch, epoch_rows)
    insert_rows(conn, MonitorSample, monitor_rows)
    monitor_series.write(conn, monitored)  # downsampled once, here: the run page reads these
