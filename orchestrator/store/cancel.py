"""Cancel requests: a queued run is cancelled at once; a running one gets
runs.cancel_requested_at and a history line, and whoever follows it stops it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from sqlalchemy import select, update

from orchestrator.clock import utcnow
from orchestrator.states import RunStatus
from orchestrator.store import status as run_status
from orchestrator.store.leases import QueueError
from orchestrator.store.models import Run, RunStatusChange
from orchestrator.store.orphans import end_run

if TYPE_CHECKING:
    from orchestrator.store import Store

# 'cancelled': a queued run, ended at once; 'requested': a running one, its follower stops it.
CancelOutcome = Literal["cancelled", "requested"]
CANCEL_NOTE = "cancel requested by "  # the history line `orchestrator cancel` leaves


def request_cancel(store: Store, run_id: str, by: str) -> CancelOutcome:
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
            .values(cancel_requested_at=utcnow())
        )
        run_status.note(conn, run_id, status, reason)
