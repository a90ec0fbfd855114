"""Schema lifecycle on SQLite: Alembic up and down, the revision check, engine settings, URLs."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from orchestrator.errors import SchemaOutOfDate, StoreError
from orchestrator.store import (
    current_revision,
    downgrade_store,
    head_revision,
    open_store,
    redact_url,
    upgrade_store,
)
from orchestrator.store.engine import make_engine, parse_url
from orchestrator.store.models import Base
from orchestrator.store.readonly import run_query
from orchestrator.store.search import SQLITE_SEARCH_TABLES
from tests.support.store_fixtures import TABLES, VIEWS, not_search_object


def _schema(url: str) -> tuple[set[str], set[str]]:
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        return set(inspector.get_table_names()), set(inspector.get_view_names())
    finally:
        engine.dispose()


def test_upgrade_creates_every_table_and_view_then_downgrade_removes_them(sqlite_url: str) -> None:
    done = upgrade_store(sqlite_url)
    assert (done.before, done.after) == (None, head_revision())
    tables, views = _schema(sqlite_url)
    assert tables == TABLES | SQLITE_SEARCH_TABLES
    assert views == VIEWS

    down = downgrade_store(sqlite_url, "base")
    assert (down.before, down.after) == (head_revision(), None)
    tables, views = _schema(sqlite_url)
    assert tables == {"alembic_version"}
    assert views == set()

    again = upgrade_store(sqlite_url)
    assert again.after == head_revision()
    assert _schema(sqlite_url) == (TABLES | SQLITE_SEARCH_TABLES, VIEWS)


def test_the_head_read_from_file_names_is_alembics_head_and_one_chain() -> None:
    """head_revision() reads the newest NNNN_ prefix of migrations/versions/; Alembic's own
    walk of the scripts gives the same head, and a single chain 0001 -> ... -> head."""
    from orchestrator.store.migrate import _script

    script = _script()
    assert script.get_heads() == [head_revision()]
    chain = [rev.revision for rev in script.walk_revisions()]
    assert chain == [f"{n:04d}" for n in range(int(head_revision()), 0, -1)]


def test_the_revision_is_read_without_alembic_and_a_store_without_one_has_none(
    tmp_path: Path,
) -> None:
    from sqlalchemy import create_engine, text

    from orchestrator.store.migrate import revision_of

    engine = create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    try:
        with engine.begin() as conn:
            assert revision_of(conn) is None  # no alembic_version table
            conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32))"))
            assert revision_of(conn) is None  # the table, no row
            conn.execute(text("INSERT INTO alembic_version VALUES ('0004')"))
            assert revision_of(conn) == "0004"
    finally:
        engine.dispose()


def test_upgrade_twice_is_a_no_op(sqlite_url: str) -> None:
    upgrade_store(sqlite_url)
    second = upgrade_store(sqlite_url)
    assert second.before == second.after == head_revision()


def test_models_match_the_migrations(sqlite_url: str) -> None:
    upgrade_store(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": not_search_object}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def _empty_file(url: str) -> Path:
    """An empty SQLite database: a file of 0 bytes, as `touch` makes it."""
    path = Path(parse_url(url).database or "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def _missing_file_line(url: str) -> str:
    path = Path(parse_url(url).database or "").absolute()
    return (
        f"results store file {path} does not exist "
        f"(check the path, or create the store with: orchestrator --db {url} db upgrade)"
    )


def test_open_store_on_an_empty_database_names_the_upgrade_command(sqlite_url: str) -> None:
    _empty_file(sqlite_url)
    with pytest.raises(SchemaOutOfDate) as caught:
        open_store(sqlite_url)
    assert "is at revision none (empty)" in caught.value.message
    assert f"this orchestrator needs {head_revision()}" in caught.value.message
    assert caught.value.remedy == "run: orchestrator db upgrade"


def test_open_store_on_an_older_revision_is_out_of_date(sqlite_url: str) -> None:
    upgrade_store(sqlite_url)
    engine = make_engine(sqlite_url)
    with engine.begin() as conn:  # pretend an older schema: a revision that precedes ours
        conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    engine.dispose()
    with pytest.raises(SchemaOutOfDate) as caught:
        open_store(sqlite_url)
    assert "revision ffff" in caught.value.message
    assert "does not know" in caught.value.message  # a newer orchestrator wrote it


@pytest.mark.parametrize(
    "open_it",
    [
        open_store,
        current_revision,
        lambda url: downgrade_store(url, "base"),
        lambda url: run_query(url, "SELECT 1"),
    ],
    ids=["open_store", "current_revision", "downgrade_store", "run_query"],
)
def test_a_missing_sqlite_file_is_refused_before_connecting_and_not_created(
    sqlite_url: str, open_it: Callable[[str], object]
) -> None:
    path = Path(parse_url(sqlite_url).database or "")
    with pytest.raises(StoreError) as caught:
        open_it(sqlite_url)
    assert caught.value.one_line() == _missing_file_line(sqlite_url)
    assert not path.exists() and not path.parent.exists()


def test_a_folder_where_the_sqlite_file_should_be_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}"
    with pytest.raises(StoreError) as caught:
        open_store(url)
    assert caught.value.one_line() == (
        f"results store {tmp_path} is not a file "
        "(check the path: name a SQLite file, e.g. sqlite:///results.db)"
    )


def test_open_store_create_upgrades_first(sqlite_url: str) -> None:
    store = open_store(sqlite_url, create=True)
    store.close()
    assert current_revision(sqlite_url) == head_revision()


def test_sqlite_engine_settings(sqlite_url: str) -> None:
    upgrade_store(sqlite_url)
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
            assert conn.exec_driver_sql("PRAGMA page_size").scalar() == 16_384
    finally:
        engine.dispose()


def test_sqlite_parent_folder_is_created(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'results.db'}"
    upgrade_store(url)
    assert (tmp_path / "a" / "b" / "results.db").is_file()


def test_a_failed_migration_leaves_the_schema_as_it_was(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:  # a table in the way: the migration fails half-way
        conn.execute("CREATE TABLE run_nodes (x INTEGER)")
    with pytest.raises(StoreError) as caught:
        upgrade_store(sqlite_url)
    assert "nothing was changed" in (caught.value.remedy or "")
    with sqlite3.connect(path) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert names == {"run_nodes"}  # runs, images, ... created before the failure were rolled back


def test_unknown_target_revision_is_a_one_line_error(sqlite_url: str) -> None:
    with pytest.raises(StoreError) as caught:
        upgrade_store(sqlite_url, "nope")
    assert "nope" in caught.value.one_line()
    assert "\n" not in caught.value.one_line()


def test_redact_url_hides_the_password() -> None:
    assert (
        redact_url("postgresql://bench:s3cret@db:5432/results")
        == "postgresql://bench:***@db:5432/results"
    )
    assert "s3cret" not in redact_url("postgresql+psycopg://u:s3cret@h/d?sslmode=require")
    assert redact_url("sqlite:///results.db") == "sqlite:///results.db"


def test_parse_url_accepts_what_an_admin_types() -> None:
    assert parse_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert parse_url("postgres://u@h/d").drivername == "postgresql+psycopg"
    assert parse_url("results.db").database == "results.db"
    with pytest.raises(StoreError, match="in-memory"):
        parse_url("sqlite://")
    with pytest.raises(StoreError, match="mysql"):
        parse_url("mysql://u@h/d")
    with pytest.raises(StoreError) as caught:
        parse_url("postgresql://u:s3cret@h:notaport/d")
    assert "s3cret" not in caught.value.one_line()


def test_cli_db_commands(run_cli, sqlite_url: str) -> None:
    missing = run_cli("--db", sqlite_url, "db", "current")
    assert missing.exit_code == 2
    assert missing.err == f"error: {_missing_file_line(sqlite_url)}\n"

    up = run_cli("--db", sqlite_url, "db", "upgrade")
    assert up.exit_code == 0, up.err
    assert f"upgraded from none (empty) to {head_revision()}" in up.out

    again = run_cli("--db", sqlite_url, "db", "upgrade")
    assert "already at revision" in again.out

    down = run_cli("--db", sqlite_url, "db", "downgrade", "base", "--yes")
    assert down.exit_code == 0
    assert f"downgraded from {head_revision()} to none (empty)" in down.out

    current = run_cli("--db", sqlite_url, "db", "current")
    assert current.exit_code == 0
    assert "revision none (empty)" in current.out and "out of date" in current.out


@pytest.mark.parametrize(
    "command",
    [
        ("runs", "list"),
        ("report",),
        ("query", "SELECT 1"),
        ("db", "current"),
        ("db", "downgrade", "base"),
        ("ingest", "no-such-run-folder"),
    ],
    ids=" ".join,
)
def test_cli_on_a_missing_sqlite_file_says_so_and_creates_nothing(
    run_cli, sqlite_url: str, command: tuple[str, ...]
) -> None:
    result = run_cli("--db", sqlite_url, *command)
    assert result.exit_code == 2
    assert result.err == f"error: {_missing_file_line(sqlite_url)}\n"
    assert not Path(parse_url(sqlite_url).database or "").parent.exists()


def test_cli_on_an_empty_store_prints_one_line_with_the_remedy(run_cli, sqlite_url: str) -> None:
    _empty_file(sqlite_url)
    result = run_cli("--db", sqlite_url, "runs", "list")
    assert result.exit_code == 2
    assert result.err.count("\n") == 1
    assert result.err.startswith("error: results store at ")
    assert f"(run: orchestrator --db {sqlite_url} db upgrade)" in result.err


def test_unreachable_postgres_is_one_line_without_the_password(run_cli) -> None:
    url = "postgresql://bench:Sup3rSecret@127.0.0.1:1/results"
    with pytest.raises(StoreError) as caught:
        open_store(url)
    line = caught.value.one_line()
    assert line.startswith(
        "cannot open results store at postgresql://bench:***@127.0.0.1:1/results: "
    )
    assert "Sup3rSecret" not in line
    result = run_cli("--db", url, "runs", "list")
    assert result.exit_code == 2 and result.err.count("\n") == 1
    assert "Sup3rSecret" not in result.err + result.out


def test_migration_0005_adds_the_fabric_columns_to_existing_runs_and_drops_them_again(
    sqlite_url: str, fixture_runs: Path
) -> None:
    upgrade_store(sqlite_url, "0004")
    engine = make_engine(sqlite_url)
    try:
        assert "fabric" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    finally:
        engine.dispose()
    assert upgrade_store(sqlite_url).after == head_revision()
    with open_store(sqlite_url) as store:
        store.ingest([fixture_runs / "20260113-101500-1x8-metax"])
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT fabric_transport, fabric_summary, fabric, warnings FROM runs")
            ).one()
        assert tuple(row) == (None, None, None, None)  # no NCCL lines in that folder
    finally:
        engine.dispose()
    assert downgrade_store(sqlite_url, "0004").after == "0004"
    engine = make_engine(sqlite_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("runs")}
        indexes = {i["name"] for i in inspect(engine).get_indexes("runs")}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 1
    finally:
        engine.dispose()
    assert not columns & {"fabric_transport", "fabric_summary", "fabric", "warnings"}
    assert "ix_runs_fabric_transport" not in indexes


def test_migration_0006_adds_the_run_followers_view_over_existing_runs_and_drops_it_again(
    sqlite_url: str, fixture_runs: Path
) -> None:
    upgrade_store(sqlite_url)
    with open_store(sqlite_url) as store:
        store.ingest([fixture_runs / "20260113-101500-1x8-metax"])
    assert downgrade_store(sqlite_url, "0005").after == "0005"
    assert "run_followers" not in _schema(sqlite_url)[1]
    assert upgrade_store(sqlite_url, "0006").after == "0006"
    assert "run_followers" in _schema(sqlite_url)[1]
    shown = run_query(sqlite_url, "SELECT run_id, status, follower, grace_s FROM run_followers")
    # A stored (succeeded) run has no follower to speak of; its grace is the default one.
    assert shown.rows == [("20260113-101500-1x8-metax", "succeeded", None, 180.0)]
    assert downgrade_store(sqlite_url, "0005").after == "0005"
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 1
    finally:
        engine.dispose()
    assert _schema(sqlite_url)[1] == VIEWS - {"run_followers"}


def test_migration_0007_adds_the_health_tables_keeps_the_runs_and_drops_them_again(
    sqlite_url: str, fixture_runs: Path
) -> None:
    upgrade_store(sqlite_url)
    with open_store(sqlite_url) as store:
        store.ingest([fixture_runs / "20260113-101500-1x8-metax"])
    assert downgrade_store(sqlite_url, "0006").after == "0006"
    engine = make_engine(sqlite_url)
    try:
        left = set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM runs")).scalar() == 1
    finally:
        engine.dispose()
    assert not left & {"health_checks", "health_figures", "node_quarantine"}
    assert upgrade_store(sqlite_url, "0007").after == "0007"
    engine = make_engine(sqlite_url)
    try:
        names = set(inspect(engine).get_table_names())
        figure_columns = {c["name"] for c in inspect(engine).get_columns("health_figures")}
        with engine.begin() as conn:
            conn.execute(text("PRAGMA foreign_keys = ON"))
            run_id = conn.execute(text("SELECT run_id FROM runs")).scalar()
            conn.execute(
                text(
                    "INSERT INTO health_checks (cluster, topology, nodes, gated_run_id, "
                    "started_at, ok) VALUES ('lab', '1x8', '[]', :run, '2026-12-07 09:00:00', 1)"
                ),
                {"run": run_id},
            )
            with pytest.raises(Exception, match="CHECK constraint"):
                conn.execute(
                    text(
                        "INSERT INTO health_figures (check_id, check_name, value, unit, "
                        "expected_from, fraction, verdict, exempt, measured_at) VALUES "
                        "(1, 'compute', 1.0, 'GFLOP/s', 'none', 0.7, 'maybe', 0, "
                        "'2026-12-07 09:00:00')"
                    )
                )
            conn.execute(text("DELETE FROM runs"))  # the check stays, no longer gating a run
            gated = conn.execute(text("SELECT gated_run_id FROM health_checks")).all()
    finally:
        engine.dispose()
    assert {"health_checks", "health_figures", "node_quarantine"} <= names
    assert {"check_name", "node_name", "peer_name", "device_index", "verdict"} <= figure_columns
    assert gated == [(None,)]


def test_migration_0008_adds_the_straggler_and_energy_columns_and_drops_them_again(
    sqlite_url: str, fixture_runs: Path
) -> None:
    upgrade_store(sqlite_url, "0007")
    engine = make_engine(sqlite_url)
    try:
        assert "energy_j" not in {c["name"] for c in inspect(engine).get_columns("runs")}
    finally:
        engine.dispose()
    assert upgrade_store(sqlite_url).after == head_revision()  # 0008 and what follows
    with open_store(sqlite_url) as store:
        store.ingest([fixture_runs / "20260113-101500-1x8-metax"])
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            run = conn.execute(
                text(
                    "SELECT stragglers, energy_j, energy_per_image_j, power_coverage, energy FROM runs"
                )
            ).one()
            ranks = conn.execute(
                text("SELECT DISTINCT pace_s, straggler_ratio, straggler FROM rank_results")
            ).all()
        indexes = {i["name"] for i in inspect(engine).get_indexes("rank_results")}
    finally:
        engine.dispose()
    # no power samples and rank files from before forward_s: nothing to say, nothing invented
    assert tuple(run) == (None, None, None, None, None)
    assert [tuple(r) for r in ranks] == [(None, None, None)]
    assert "ix_rank_results_node_device" in indexes
    assert downgrade_store(sqlite_url, "0007").after == "0007"
    engine = make_engine(sqlite_url)
    try:
        run_columns = {c["name"] for c in inspect(engine).get_columns("runs")}
        rank_columns = {c["name"] for c in inspect(engine).get_columns("rank_results")}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM rank_results")).scalar() == 8
    finally:
        engine.dispose()
    assert not run_columns & {"stragglers", "energy_j", "energy_per_image_j", "power_coverage"}
    assert not rank_columns & {"node_name", "device_index", "pace_s", "straggler"}
