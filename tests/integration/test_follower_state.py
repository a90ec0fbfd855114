"""Whether a run's follower is still there, as read-only paths see it: the run_followers view
(migration 0006) agrees with the store's one rule (orchestrator/store/follower.py) on the same
rows, on SQLite and PostgreSQL; `orchestrator query` reads it through its read-only
connection; the runs list and the run page say "follower gone ..., awaiting adoption" or
"... awaiting settling (lost)" while the stored status is still `running`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from starlette.testclient import TestClient

from orchestrator.clock import utcnow
from orchestrator.runfolder.folder import load_manifest
from orchestrator.store import follows, leases, open_store, upgrade_store
from orchestrator.store import queue as stored_queue
from orchestrator.store.follower import follower_grace_s, follower_state, followers_now
from orchestrator.store.models import NodeLease, Run, SlurmFollow
from orchestrator.store.readonly import run_query
from tests.support.store_fixtures import RUN_2X8, pg_reader


def _request(grace: object = None) -> dict[str, Any]:
    """A stored request whose cluster file says `grace` (None: it does not say)."""
    cluster: dict[str, Any] = {"name": "lab"}
    if grace is not None:
        cluster["follower_grace_s"] = grace
    return {"topology": "2x8", "cluster_data": {"cluster": cluster}, "cluster_key": "k"}


# run id -> (stored request's grace, lease expiry relative to now in s (None: no lease), how
# the run is followed). Every expiry is far (>= 20 s) from a boundary of the rule, so the few
# milliseconds between the view's now and the test's cannot change a state.
CASES: dict[str, tuple[object, float | None, str]] = {
    "alive": (None, 60, "nodes"),
    "gone-default-grace": (None, -60, "nodes"),
    "lost-default-grace": (None, -400, "nodes"),
    "gone-own-grace": (90, -60, "nodes"),
    "lost-own-grace": (15, -60, "nodes"),
    "lost-fractional-grace": (20.5, -120, "nodes"),
    "gone-text-grace": ("15", -60, "nodes"),  # not a number: the default grace (180 s)
    "no-leases": (None, None, "nodes"),  # every lease released: nothing to wait for
    "job-followed": (15, 60, "job"),
    "job-gone-long-ago": (15, -4000, "job"),  # a scheduler's job: never settled by the grace
    "job-unfollowed": (15, None, "job"),
}


def _manifest(fixture_runs: Path, run_id: str, **changes: Any) -> Any:
    manifest = load_manifest(fixture_runs / RUN_2X8 / "manifest.json")
    return replace(manifest, run_id=run_id, status="running", **changes)


def _fill(url: str, fixture_runs: Path) -> None:
    """The CASES, a queued run and a running one without a stored request."""
    with open_store(url) as store:
        for run_id, (grace, expires_in, kind) in CASES.items():
            if kind == "nodes":
                leases.create_followed_run(
                    store, _manifest(fixture_runs, run_id), _request(grace),
                    (f"{run_id}-n0", f"{run_id}-n1"),
                    f"submit alice@lab1 pid {len(run_id)}", 60,
                )  # fmt: skip
                if expires_in is None:
                    leases.release(store, run_id)
                    continue
                table: Any = NodeLease
            else:
                with store.transaction() as conn:
                    manifest = _manifest(fixture_runs, run_id, backend="slurm")
                    follows.insert_submitted(conn, manifest, _request(grace), f"{len(run_id)}")
                if expires_in is None:
                    continue
                assert follows.adopt(store, run_id, f"{len(run_id)}", "lab1:42", 60)
                table = SlurmFollow
            with store.transaction() as conn:
                expires = utcnow() + timedelta(seconds=expires_in)
                conn.execute(update(table).where(table.run_id == run_id).values(expires_at=expires))
        with store.transaction() as conn:
            stored_queue.enqueue(conn, _manifest(fixture_runs, "queued"), _request())
        store.create_run(_manifest(fixture_runs, "no-request"), status="running")


def _expected(url: str) -> dict[str, str | None]:
    """The Python rule over the stored rows, as the settling code applies it."""
    with open_store(url) as store, store.reading() as conn:
        runs = conn.execute(select(Run.run_id, Run.status, Run.request, Run.slurm_job_id)).all()
        expiry: dict[str, datetime] = {}
        for table in (NodeLease, SlurmFollow):
            for run_id, at in conn.execute(select(table.run_id, table.expires_at)):
                expiry[run_id] = max(at, expiry.get(run_id, at))
    now = utcnow()
    expected: dict[str, str | None] = {}
    for run_id, status, request, job_id in runs:
        if status != "running" or request is None:
            expected[run_id] = None
            continue
        grace = None if job_id is not None else follower_grace_s(request)
        expected[run_id] = follower_state(expiry.get(run_id), grace, now)
    return expected


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def filled(request: Any, tmp_path: Path, fixture_runs: Path) -> Iterator[tuple[str, str]]:
    """(writer's URL, a read-only URL for `orchestrator query`) of a filled store."""
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'results.db'}"
            reader = url
        else:
            url = request.getfixturevalue("pg_url")
            reader = stack.enter_context(pg_reader(url))
        upgrade_store(url)
        _fill(url, fixture_runs)
        yield url, reader


def test_the_view_and_the_settling_rule_agree_on_the_same_rows(filled: tuple[str, str]) -> None:
    url, reader = filled
    shown = run_query(reader, "SELECT run_id, follower FROM run_followers ORDER BY run_id")
    view = dict(shown.rows)
    assert view == _expected(url)
    assert view == {
        "alive": "alive",
        "gone-default-grace": "gone",
        "lost-default-grace": "lost-pending",
        "gone-own-grace": "gone",
        "lost-own-grace": "lost-pending",
        "lost-fractional-grace": "lost-pending",
        "gone-text-grace": "gone",
        "no-leases": "lost-pending",
        "job-followed": "alive",
        "job-gone-long-ago": "gone",
        "job-unfollowed": "gone",
        "queued": None,
        "no-request": None,
    }
    graces = dict(run_query(reader, "SELECT run_id, grace_s FROM run_followers").rows)
    assert graces["lost-fractional-grace"] == 20.5 and graces["gone-text-grace"] == 180
    assert graces["job-followed"] is None
    # Nothing was settled: the query and the rule only read.
    statuses = dict(run_query(reader, "SELECT run_id, status FROM runs").rows)
    assert statuses["lost-default-grace"] == statuses["no-leases"] == "running"


def test_the_pages_say_the_follower_is_gone_without_settling_the_run(
    filled: tuple[str, str],
) -> None:
    from orchestrator.web.app import create_app

    url, reader = filled
    with open_store(url) as store, store.reading() as conn:
        now = followers_now(conn, list(CASES))
    assert {k: v.state for k, v in now.items()} == {
        k: v for k, v in _expected(url).items() if k in CASES
    }
    gone_at = now["gone-own-grace"].lease_expires_at
    assert gone_at is not None
    since = gone_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    with TestClient(create_app(reader), raise_server_exceptions=False) as client:
        page = client.get("/runs/gone-own-grace")
        assert page.status_code == 200
        assert f"running — follower gone since {since}, awaiting adoption" in page.text
        lost = client.get("/runs/lost-own-grace").text
        assert "awaiting settling (lost)" in lost and "awaiting adoption" not in lost
        alive = client.get("/runs/alive").text
        assert 'id="follower"' not in alive and "follower gone" not in alive
        listed = client.get("/runs?status=running&per_page=100").text
    assert listed.count("awaiting settling (lost)") == 4  # lost-*, no-leases
    assert listed.count("awaiting adoption") == 5  # gone-*, job-gone-long-ago, job-unfollowed
    with open_store(url) as store, store.reading() as conn:
        status = conn.scalar(select(Run.status).where(Run.run_id == "lost-own-grace"))
    assert status == "running"
