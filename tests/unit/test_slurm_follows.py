"""The store side of detached Slurm runs (orchestrator/store/follows.py) on SQLite: which runs
need a follower, one follower per run, renewal, take-over after expiry."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from orchestrator.runfolder.folder import load_manifest
from orchestrator.store import follows
from orchestrator.store.leases import renew
from tests.support.store_fixtures import RUN_2X8


def _submit(store: Any, fixture_runs: Path, run_id: str, job_id: str, **doc: Any) -> None:
    manifest = load_manifest(fixture_runs / RUN_2X8 / "manifest.json")
    manifest = replace(manifest, run_id=run_id, backend="slurm", status="running")
    with store.transaction() as conn:
        follows.insert_submitted(conn, manifest, {"topology": "2x8", **doc}, job_id)


def test_submitted_runs_need_a_follower_until_one_adopts_them(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    _submit(sqlite_store, fixture_runs, "r1", "101")
    _submit(sqlite_store, fixture_runs, "r2", "102")
    assert [u.run_id for u in follows.unfollowed(sqlite_store, "slurm")] == ["r1", "r2"]
    assert [u.job_id for u in follows.unfollowed(sqlite_store, "slurm")] == ["101", "102"]

    assert follows.adopt(sqlite_store, "r1", "101", "w1", ttl_s=60)
    assert not follows.adopt(sqlite_store, "r1", "101", "w2", ttl_s=60)  # w1 follows it
    assert [u.run_id for u in follows.unfollowed(sqlite_store, "slurm")] == ["r2"]


def test_an_expired_follow_is_taken_over_by_one_worker(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    _submit(sqlite_store, fixture_runs, "r1", "101")
    assert follows.adopt(sqlite_store, "r1", "101", "dead", ttl_s=-1)  # already expired
    assert [u.run_id for u in follows.unfollowed(sqlite_store, "slurm")] == ["r1"]
    assert follows.adopt(sqlite_store, "r1", "101", "heir", ttl_s=60)
    assert not follows.adopt(sqlite_store, "r1", "101", "late", ttl_s=60)
    # The dead worker's renewals no longer hold anything; the heir's do.
    assert renew(sqlite_store, "r1", "dead", 60, lease="job") == (0, False)
    assert renew(sqlite_store, "r1", "heir", 60, lease="job") == (1, False)
    with sqlite_store.reading() as conn:
        assert set(follows.followers(conn)) == {"r1"}
    follows.release(sqlite_store, "r1", "heir")
    assert [u.run_id for u in follows.unfollowed(sqlite_store, "slurm")] == ["r1"]


def test_ended_runs_and_ssh_runs_are_never_adopted(sqlite_store: Any, fixture_runs: Path) -> None:
    _submit(sqlite_store, fixture_runs, "r1", "101")
    sqlite_store.set_status("r1", "failed", reason="x")
    assert follows.unfollowed(sqlite_store, "slurm") == []
    assert not follows.adopt(sqlite_store, "r1", "101", "w1", ttl_s=60)
    manifest = load_manifest(fixture_runs / RUN_2X8 / "manifest.json")
    sqlite_store.create_run(replace(manifest, run_id="ssh1", status="running"))
    assert follows.unfollowed(sqlite_store, "slurm") == []


def test_renew_reports_a_cancel_request(sqlite_store: Any, fixture_runs: Path) -> None:
    from sqlalchemy import update

    from orchestrator.clock import utcnow
    from orchestrator.store.models import Run

    _submit(sqlite_store, fixture_runs, "r1", "101", campaign_id=None)
    assert follows.adopt(sqlite_store, "r1", "101", "w1", ttl_s=60)
    with sqlite_store.transaction() as conn:
        conn.execute(update(Run).where(Run.run_id == "r1").values(cancel_requested_at=utcnow()))
    assert renew(sqlite_store, "r1", "w1", 60, lease="job") == (1, True)
