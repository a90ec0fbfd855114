"""The one writer of run statuses. A run's status lives in `runs.status`; every change of it,
and every note about a running run (who leased it, who adopted it, a cancel request), is also a
row of `run_status_history`; a change into or out of `succeeded`, and a new run, also
recomputes its configuration's summary (store/summaries.py). Every module that records a run's status does it through these
functions, inside the caller's transaction, so the two tables never disagree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from orchestrator.clock import utcnow
from orchestrator.states import FINAL_STATUSES, RunStatus
from orchestrator.store import summaries
from orchestrator.store.bulk import insert_rows
from orchestrator.store.models import Run, RunStatusChange


def history_row(run_id: str, status: RunStatus, reason: str | None, at: datetime) -> dict[str, Any]:
    return {"run_id": run_id, "status": status, "reason": reason, "at": at}


def note(
    conn: Connection,
    run_id: str,
    status: RunStatus,
    reason: str | None,
    at: datetime | None = None,
) -> None:
    """A history entry without a change of `runs.status`: the run's current status, with why
    (a lease taken, an adoption, a cancel request), or the entry of a change the caller just
    made in the same transaction."""
    conn.execute(insert(RunStatusChange), [history_row(run_id, status, reason, at or utcnow())])


def notes(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """History entries in bulk (ingest replays run folders' histories), in one driver call."""
    insert_rows(conn, RunStatusChange, rows)


def insert_run(
    conn: Connection, row: Mapping[str, Any], reason: str | None, at: datetime | None = None
) -> None:
    """A new runs row and its first history entry (the row's own status)."""
    conn.execute(insert(Run), [dict(row)])
    note(conn, str(row["run_id"]), row["status"], reason, at)
    summaries.refresh(conn, summaries.scopes_of(conn, [str(row["run_id"])]))


def move(
    conn: Connection,
    run_id: str,
    status: RunStatus,
    *,
    reason: str | None = None,
    failure: Mapping[str, Any] | None = None,
    expect: Sequence[RunStatus] | None = None,
    at: datetime | None = None,
    values: Mapping[str, Any] | None = None,
    history_reason: str | None = None,
) -> bool:
    """Change a run's status (only from one of `expect`, when given) and record it, with
    `history_reason` when the history says more than the row's reason. Moving to `running`
    stamps started_at, to a final status finished_at. Returns whether the row moved."""
    at = at or utcnow()
    changes: dict[str, Any] = {"status": status, "reason": reason, **(values or {})}
    if failure is not None:
        changes["failure"] = dict(failure)
    if status == "running":
        changes.setdefault("started_at", at)
    elif status in FINAL_STATUSES:
        changes.setdefault("finished_at", at)
    before = conn.scalar(select(Run.status).where(Run.run_id == run_id))
    # a succeeded run's verdicts and its successors' move from where it finished (a final
    # status stamps finished_at again)
    was = summaries.scopes_of(conn, [run_id]) if before == "succeeded" else None
    query = update(Run).where(Run.run_id == run_id)
    if expect is not None:
        query = query.where(Run.status.in_(tuple(expect)))
    moved = conn.execute(query.values(changes)).rowcount
    if moved:
        note(conn, run_id, status, history_reason or reason, at)
        if "succeeded" in (before, status):  # what the configuration's summary counts
            now = summaries.scopes_of(conn, [run_id])
            # into `succeeded`: the run joins its summary; out of it, the summary is recounted
            summaries.refresh(conn, now | was if was is not None else now, added_only=was is None)
    return bool(moved)


def status_of(conn: Connection, run_id: str) -> RunStatus | None:
    """The run's status now (None: no such run)."""
    status: RunStatus | None = conn.scalar(select(Run.status).where(Run.run_id == run_id))
    return status
