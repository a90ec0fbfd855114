"""store/status.py, the one writer of a run's status (SQLite): every change of runs.status has
its history row with the same status and time; a guarded move that does not apply writes
nothing; notes add history without touching the row."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select

from orchestrator.runfolder.folder import load_manifest
from orchestrator.store import rows
from orchestrator.store import status as run_status
from orchestrator.store.models import Run, RunStatusChange
from tests.support.store_fixtures import FIXTURE_RUNS, RUN_2X8

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _row(run_id: str, status: str) -> dict[str, Any]:
    """A runs row as the lifecycle builds it, from a recorded run's manifest."""
    manifest = load_manifest(FIXTURE_RUNS / RUN_2X8 / "manifest.json")
    row = rows.run_row(replace(manifest, run_id=run_id), T0)
    row.update(status=status, finished_at=None, started_at=None, reason=None, failure=None)
    return row


def _state(store: Any, run_id: str) -> tuple[Any, list[tuple[str, str | None, datetime]]]:
    with store.engine.connect() as conn:
        run = conn.execute(
            select(Run.status, Run.reason, Run.started_at, Run.finished_at, Run.failure).where(
                Run.run_id == run_id
            )
        ).one()
        history = conn.execute(
            select(RunStatusChange.status, RunStatusChange.reason, RunStatusChange.at)
            .where(RunStatusChange.run_id == run_id)
            .order_by(RunStatusChange.id)
        ).all()
    return run, [tuple(h) for h in history]


def test_insert_then_moves_keep_row_and_history_in_step(sqlite_store: Any) -> None:
    t1, t2 = T0 + timedelta(seconds=5), T0 + timedelta(seconds=60)
    with sqlite_store.transaction() as conn:
        run_status.insert_run(conn, _row("r1", "queued"), None, T0)
    with sqlite_store.transaction() as conn:
        moved = run_status.move(
            conn, "r1", "running", reason="worker w", expect=["queued"], at=t1,
            history_reason="worker w leased n1",
        )  # fmt: skip
    assert moved
    with sqlite_store.transaction() as conn:
        assert run_status.move(
            conn, "r1", "failed", reason="boom", failure={"reason": "boom"}, at=t2
        )
    run, history = _state(sqlite_store, "r1")
    assert (run.status, run.reason, run.failure) == ("failed", "boom", {"reason": "boom"})
    assert run.started_at == t1 and run.finished_at == t2
    assert history == [
        ("queued", None, T0),
        ("running", "worker w leased n1", t1),
        ("failed", "boom", t2),
    ]


def test_a_guarded_move_that_does_not_apply_writes_nothing(sqlite_store: Any) -> None:
    with sqlite_store.transaction() as conn:
        run_status.insert_run(conn, _row("r2", "succeeded"), "published", T0)
        assert not run_status.move(conn, "r2", "cancelled", reason="late", expect=["queued"])
        assert not run_status.move(conn, "nope", "running")
    run, history = _state(sqlite_store, "r2")
    assert run.status == "succeeded" and run.finished_at is None
    assert history == [("succeeded", "published", T0)]


def test_a_note_adds_history_and_leaves_the_row(sqlite_store: Any) -> None:
    with sqlite_store.transaction() as conn:
        run_status.insert_run(conn, _row("r3", "running"), "submit me leased n1", T0)
        run_status.note(conn, "r3", "running", "follow by heir: doomed stopped", T0)
    run, history = _state(sqlite_store, "r3")
    assert (run.status, run.reason) == ("running", None)
    assert [h[1] for h in history] == ["submit me leased n1", "follow by heir: doomed stopped"]


def test_store_set_status_goes_through_the_writer(sqlite_store: Any) -> None:
    with sqlite_store.transaction() as conn:
        run_status.insert_run(conn, _row("r4", "running"), None, T0)
    sqlite_store.set_status("r4", "lost", failure={"reason": "nobody followed"})
    run, history = _state(sqlite_store, "r4")
    assert (run.status, run.reason) == ("lost", "nobody followed")
    assert run.finished_at is not None and history[-1][:2] == ("lost", "nobody followed")
