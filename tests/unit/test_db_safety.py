"""A lab's data is not dropped by mistake: `db downgrade` names the store, where its URL came
from and how many runs it holds, and asks (or needs --yes); hints repeat the --db given."""

from __future__ import annotations

import io
import sys

import pytest

from orchestrator.cli import db_cmd
from orchestrator.store import head_revision, open_store, upgrade_store


@pytest.fixture
def lab_store(sqlite_url, fixture_runs):
    upgrade_store(sqlite_url)
    store = open_store(sqlite_url)
    try:
        store.ingest(
            [
                fixture_runs / "20260112-101500-1x1-nvidia",
                fixture_runs / "20260113-101500-1x8-metax",
            ]
        )
    finally:
        store.close()
    return sqlite_url


def _runs(url: str) -> int:
    store = open_store(url)
    try:
        with store.reading() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM runs").scalar_one())
    finally:
        store.close()


def test_downgrade_to_base_without_a_terminal_refuses_naming_store_origin_and_runs(
    run_cli, lab_store
):
    result = run_cli("--db", lab_store, "db", "downgrade", "base")
    assert result.exit_code == 2
    path = lab_store.removeprefix("sqlite:///")
    assert result.err == (
        f"error: db downgrade base drops every table and view of the results store at "
        f"sqlite:///{path} (from --db), which holds 2 run(s); nothing was changed "
        "(add --yes to confirm)\n"
    )
    assert _runs(lab_store) == 2


def test_a_stale_orchestrator_db_is_named_as_the_origin(run_cli, lab_store, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_DB", lab_store)
    result = run_cli("db", "downgrade", "0002")
    assert result.exit_code == 2
    assert f"drops what revision(s) {head_revision()}, " in result.err
    assert ", 0004, 0003 added of the results store" in result.err
    assert "(from $ORCHESTRATOR_DB), which holds 2 run(s)" in result.err
    assert _runs(lab_store) == 2


@pytest.mark.parametrize(("answer", "dropped"), [("n\n", False), ("y\n", True)])
def test_on_a_terminal_it_asks_and_only_yes_drops(run_cli, lab_store, monkeypatch, answer, dropped):
    monkeypatch.setattr(db_cmd, "_interactive", lambda: True)
    monkeypatch.setattr(sys, "stdin", io.StringIO(answer))
    result = run_cli("--db", lab_store, "db", "downgrade", "base")
    assert "which holds 2 run(s). Continue? [y/N]" in result.err
    if dropped:
        assert result.exit_code == 0, result.err
        assert f"downgraded from {head_revision()} to none (empty)" in result.out
    else:
        assert result.exit_code == 2
        assert "db downgrade declined; nothing was changed" in result.err
        assert _runs(lab_store) == 2


def test_yes_downgrades_without_asking(run_cli, lab_store):
    result = run_cli("--db", lab_store, "db", "downgrade", "base", "--yes")
    assert result.exit_code == 0, result.err
    assert f"downgraded from {head_revision()} to none (empty)" in result.out


def test_the_upgrade_hint_repeats_the_db_given(run_cli, lab_store):
    run_cli("--db", lab_store, "db", "downgrade", "0003", "--yes")
    result = run_cli("runs", "list", "--db", lab_store)
    assert result.exit_code == 2
    assert result.err.endswith(f"(run: orchestrator --db {lab_store} db upgrade)\n")


def test_the_hint_keeps_a_password_out_and_repeats_the_cluster_file(run_cli, tmp_path):
    from orchestrator.cli import AppContext, with_global_options

    app = AppContext(cluster_file="lab cluster.toml", db_url="postgresql://u:secret@h/db")
    text = with_global_options("x (run: orchestrator db upgrade; a newer orchestrator did)", app)
    assert text == (
        "x (run: orchestrator --cluster 'lab cluster.toml' --db 'postgresql://u:***@h/db' "
        "db upgrade; a newer orchestrator did)"
    )
