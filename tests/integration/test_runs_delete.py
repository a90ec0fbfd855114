"""Mistakes do not stay in the history forever: `orchestrator runs delete` removes named or
selected runs with every row that belongs to them, in one transaction, on SQLite and PostgreSQL;
it shows what will go and asks (or needs --yes), and refuses runs that are still queued or
running. A run refused by the preflight (a mistyped --data-dir) is selected by --not-started."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from orchestrator.cli import runs_delete
from orchestrator.store import open_store, upgrade_store
from orchestrator.store.delete import CHILD_TABLES, delete_runs, rows_of
from orchestrator.store.models import Base, Run
from tests.support.store_fixtures import (
    ALL_RUNS,
    FIXTURE_RUNS,
    RUN_1X1,
    RUN_2X8,
    RUN_2X8_FAILED,
    CliResult,
)
from tests.support.web_fixtures import _folder

MONITORED = "20260120-101500-2x8-metax-c500"
TYPO = "20260121-090000-1x8-metax-c500-typo"
RUNNING = "20260121-100000-1x8-metax-c500-running"
TYPO_REASON = (
    "preflight failed on 1 of 1 node(s), nothing was started: me-node1: dataset: "
    "/data/cocoo missing annotations/instances_train2017.json, train2017"
)


def _lab(url: str, tmp_path: Path) -> str:
    """The recorded runs, a monitored run, a preflight refusal and a running run."""
    from tests.fixtures.make_runs import _manifest

    upgrade_store(url)
    start = datetime(2026, 1, 20, 10, 15, tzinfo=timezone.utc)
    monitored = _folder(
        tmp_path / "made",
        MONITORED,
        "metax-c500",
        "MXC500",
        (2, 8),
        "fp32",
        start,
        33.0,
        monitor_every_s=30.0,
    )
    with open_store(url) as store:
        store.ingest([*(FIXTURE_RUNS / r for r in ALL_RUNS), monitored])
        for run_id, when in ((TYPO, start + timedelta(hours=23)), (RUNNING, start + timedelta(1))):
            made = _manifest(run_id, "metax-c500", "MXC500", (1, 8), "running", when, 0, {})
            store.create_run(replace(made, started_at=None, finished_at=None), "running")
        store.set_status(TYPO, "failed", failure={"reason": TYPO_REASON, "node": "me-node1"})
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def lab(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return _lab(request.getfixturevalue(name), tmp_path)


def _counts(url: str, run_ids: list[str]) -> dict[str, int]:
    with open_store(url) as store, store.reading() as conn:
        return rows_of(conn, run_ids)


def _stored(url: str) -> set[str]:
    with open_store(url) as store, store.reading() as conn:
        return set(conn.scalars(select(Run.run_id)))


def test_every_table_with_a_run_id_is_deleted_from() -> None:
    with_run_id = {t.name for t in Base.metadata.sorted_tables if "run_id" in t.c} - {"runs"}
    assert {t.name for t in CHILD_TABLES} == with_run_id


def test_delete_removes_a_run_and_every_row_of_it_and_nothing_else(
    run_cli: Callable[..., CliResult], lab: str
) -> None:
    before = _counts(lab, [MONITORED])
    for table in ("monitor_samples", "rank_results", "run_epochs", "run_nodes"):
        assert before[table] > 0, table
    others = sorted(_stored(lab) - {MONITORED})
    kept = _counts(lab, others)
    result = run_cli("--db", lab, "runs", "delete", MONITORED, "--yes")
    assert result.exit_code == 0, result.err
    removed = sum(before.values()) - 1
    assert result.out == f"deleted 1 run(s) and {removed} row(s) that belonged to them\n"
    assert set(_counts(lab, [MONITORED]).values()) == {0}
    assert _counts(lab, others) == kept


def test_a_delete_is_one_transaction(lab: str) -> None:
    before = _counts(lab, [MONITORED, RUN_2X8])
    with open_store(lab) as store, pytest.raises(RuntimeError):
        with store.transaction() as conn:
            assert delete_runs(conn, [MONITORED, RUN_2X8])["runs"] == 2
            raise RuntimeError("stopped half-way")
    assert _counts(lab, [MONITORED, RUN_2X8]) == before


def test_a_selection_deletes_only_the_preflight_refusals(
    run_cli: Callable[..., CliResult], lab: str
) -> None:
    everything = _stored(lab)
    # The running run has not started either, but it has not ended: not selected.
    ended = run_cli("--db", lab, "runs", "delete", "--not-started", "--dry-run")
    assert ended.exit_code == 0 and ended.err.startswith(f"  {TYPO}  failed  ")
    assert RUNNING not in ended.err and "would delete 1 run(s) (1 failed;" in ended.err
    result = run_cli("--db", lab, "runs", "delete", "--status", "failed", "--not-started", "--yes")
    assert result.exit_code == 0, result.err
    assert f"  {TYPO}  failed  2026-01-21 09:12:00  {TYPO_REASON}" in result.err
    assert _stored(lab) == everything - {TYPO}
    # Failed runs before a date: the recorded one of 2026-01-15, not the later ones.
    result = run_cli("--db", lab, "runs", "delete", "--status", "failed", "--before", "2026-01-16")
    assert result.exit_code == 2
    assert f"  {RUN_2X8_FAILED}  failed" in result.err
    assert "would delete 1 run(s) (1 failed; submitted 2026-01-15 13:12:00)" in result.err


def test_without_a_terminal_it_names_what_would_go_and_needs_yes(
    run_cli: Callable[..., CliResult], lab: str
) -> None:
    everything = _stored(lab)
    result = run_cli("--db", lab, "runs", "delete", "--before", "2026-01-16")
    assert result.exit_code == 2
    url = open_store(lab).url
    assert result.err.splitlines()[-1] == (
        "error: runs delete would delete 4 run(s) (1 failed, 3 succeeded; submitted "
        f"2026-01-12 10:12:00 to 2026-01-15 13:12:00) from the results store at {url} "
        "(from --db); nothing was deleted (add --yes to confirm)"
    )
    assert _stored(lab) == everything
    dry = run_cli("--db", lab, "runs", "delete", RUN_1X1, "--dry-run", "--yes")
    assert dry.exit_code == 0 and "dry run: would delete 1 run(s) (1 succeeded;" in dry.err
    assert _stored(lab) == everything


@pytest.mark.parametrize(("answer", "deleted"), [("n\n", False), ("y\n", True)])
def test_on_a_terminal_it_asks_and_only_yes_deletes(
    run_cli: Callable[..., CliResult],
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    deleted: bool,
) -> None:
    lab = _lab(sqlite_url, tmp_path)
    monkeypatch.setattr(runs_delete, "_interactive", lambda: True)
    monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
    result = run_cli("--db", lab, "runs", "delete", RUN_1X1)
    assert "Delete 1 run(s) (1 succeeded; submitted 2026-01-12 10:12:00) from" in result.err
    assert (RUN_1X1 in _stored(lab)) is not deleted
    assert result.exit_code == (0 if deleted else 2)
    if not deleted:
        assert "runs delete declined; nothing was deleted" in result.err


def test_queued_and_running_runs_are_refused_with_how_to_cancel(
    run_cli: Callable[..., CliResult], lab: str
) -> None:
    everything = _stored(lab)
    result = run_cli("--db", lab, "runs", "delete", "--vendor", "metax-c500", "--yes")
    assert result.exit_code == 2
    assert result.err.startswith(
        f"error: 1 selected run(s) are still queued or running: {RUNNING} (running); nothing "
        "was deleted (cancel them first (orchestrator --db "  # the hint repeats the store
    )
    assert result.err.endswith(" cancel RUN_ID), or narrow the selection (e.g. --status failed))\n")
    assert _stored(lab) == everything


def test_nothing_selected_is_refused_and_no_match_says_so(
    run_cli: Callable[..., CliResult], lab: str
) -> None:
    bare = run_cli("--db", lab, "runs", "delete", "--yes")
    assert bare.exit_code == 2 and "runs delete needs run ids or a selection" in bare.err
    none = run_cli("--db", lab, "runs", "delete", "--status", "lost", "--yes")
    assert none.exit_code == 0 and none.err == "no runs match; nothing was deleted\n"
