"""Deleting runs: which runs a selection names, what deleting them would remove, and the delete
itself, every child row with its run in one transaction. `orchestrator runs delete` asks first."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Table, delete, func, select
from sqlalchemy.engine import RowMapping

from orchestrator.errors import StoreError
from orchestrator.states import ACTIVE_STATUSES
from orchestrator.store import summaries
from orchestrator.store.bulk import chunks
from orchestrator.store.models import Base, Run
from orchestrator.store.queries import resolve_run

# Every table with rows that belong to a run, children first (the order matters only where
# foreign keys are not enforced). A table added to the schema with a run_id must be added here:
# tests/integration/test_runs_delete.py checks the list against the models.
CHILD_TABLES: tuple[Table, ...] = tuple(
    Base.metadata.tables[name]
    for name in (
        "monitor_samples",
        "run_monitor_series",
        "run_verdicts",
        "rank_results",
        "run_epochs",
        "run_nodes",
        "run_status_history",
        "node_leases",
        "slurm_follows",
    )
)
RUNS = Base.metadata.tables["runs"]


@dataclass(frozen=True)
class DeleteSelection:
    """Runs named by id (or prefix), or by filters; filters narrow named runs too."""

    run_refs: tuple[str, ...] = ()
    status: str | None = None
    vendor: str | None = None
    topology: str | None = None
    before: datetime | None = None  # submitted before
    since: datetime | None = None  # submitted on or after
    reason: str | None = None  # text in the failure reason
    not_started: bool = False  # ended before the workload started (preflight, staging)

    @property
    def names_something(self) -> bool:
        filters = (self.status, self.vendor, self.topology, self.before, self.since, self.reason)
        return bool(self.run_refs) or self.not_started or any(f is not None for f in filters)


def selected_runs(conn: Connection, sel: DeleteSelection) -> list[RowMapping]:
    """The runs a selection names, oldest first: run_id, status, submitted_at, reason."""
    if not sel.names_something:
        raise StoreError(
            "runs delete needs run ids or a selection",
            "name runs, or select e.g. --status failed --before 2026-02-01",
        )
    query = select(Run.run_id, Run.status, Run.submitted_at, Run.started_at, Run.reason)
    if sel.run_refs:
        query = query.where(Run.run_id.in_([resolve_run(conn, r) for r in sel.run_refs]))
    if sel.status:
        query = query.where(Run.status == sel.status)
    if sel.vendor:
        query = query.where(Run.vendor == sel.vendor)
    if sel.topology:
        query = query.where(Run.topology == sel.topology)
    if sel.before:
        query = query.where(Run.submitted_at < sel.before)
    if sel.since:
        query = query.where(Run.submitted_at >= sel.since)
    if sel.reason:
        query = query.where(Run.reason.contains(sel.reason, autoescape=True))
    if sel.not_started:  # ended without starting: a queued run has not started either
        query = query.where(Run.started_at.is_(None), Run.status.not_in(ACTIVE_STATUSES))
    return list(conn.execute(query.order_by(Run.submitted_at, Run.run_id)).mappings())


def refuse_active(rows: Sequence[RowMapping]) -> None:
    active = [f"{r['run_id']} ({r['status']})" for r in rows if r["status"] in ACTIVE_STATUSES]
    if active:
        shown = ", ".join(active[:5]) + (", ..." if len(active) > 5 else "")
        raise StoreError(
            f"{len(active)} selected run(s) are still queued or running: {shown}; "
            "nothing was deleted",
            "cancel them first (orchestrator cancel RUN_ID), or narrow the selection "
            "(e.g. --status failed)",
        )


def delete_runs(conn: Connection, run_ids: Sequence[str]) -> dict[str, int]:
    """Delete these runs and every row that belongs to them, in the caller's transaction; rows
    removed per table. A run that became queued or running meanwhile stops the whole delete."""
    ids = list(run_ids)
    if not ids:
        return {}
    active = conn.execute(
        select(Run.run_id, Run.status).where(Run.run_id.in_(ids), Run.status.in_(ACTIVE_STATUSES))
    ).mappings()
    refuse_active(list(active))
    scopes = summaries.scopes_of(conn, ids)
    removed = {table.name: 0 for table in (*CHILD_TABLES, RUNS)}
    for chunk in chunks(ids):
        for table in CHILD_TABLES:
            result = conn.execute(delete(table).where(table.c.run_id.in_(chunk)))
            removed[table.name] += result.rowcount
        removed["runs"] += conn.execute(delete(Run).where(Run.run_id.in_(chunk))).rowcount
    summaries.refresh(conn, scopes)
    return removed


def rows_of(conn: Connection, run_ids: Sequence[str]) -> dict[str, int]:
    """How many rows each table holds for these runs (tests and the summary's counts)."""
    ids = list(run_ids)
    counts = {
        table.name: int(
            conn.scalar(select(func.count()).select_from(table).where(table.c.run_id.in_(ids))) or 0
        )
        for table in CHILD_TABLES
    }
    counts["runs"] = int(
        conn.scalar(select(func.count()).select_from(Run).where(Run.run_id.in_(ids))) or 0
    )
    return counts
