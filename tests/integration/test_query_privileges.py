"""`orchestrator query` and `serve` on a real PostgreSQL server are read-only by the database's
own rules: a role that can do more than read is refused up front; a SELECT-only role (made with
the SQL of docs/security.md) cannot run a program, read a server file or signal a session.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from orchestrator.errors import QueryError, StoreError
from orchestrator.store.readonly import read_only_engine, run_query
from tests.support.store_fixtures import RUN_1X8, table_snapshot

pytestmark = pytest.mark.postgres


def _admin(url: str, *sql: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in sql:
                conn.execute(text(statement))
    finally:
        engine.dispose()


@pytest.fixture
def member_url(pg_url: str) -> Iterator[tuple[str, str]]:
    """A role that may only SELECT but is a member of pg_read_server_files: refused anyway."""
    name = f"orch_member_{uuid.uuid4().hex[:8]}"
    _admin(
        pg_url,
        f"CREATE ROLE {name} LOGIN PASSWORD 'm-{name}'",
        f"GRANT pg_read_server_files TO {name}",
    )
    try:
        yield (
            make_url(pg_url)
            .set(username=name, password=f"m-{name}")
            .render_as_string(hide_password=False),
            name,
        )
    finally:
        _admin(pg_url, f"DROP OWNED BY {name}", f"DROP ROLE {name}")


def test_a_superuser_is_refused_up_front_by_query_serve_and_the_cli(
    pg_store: Any, pg_url: str, run_cli: Any
) -> None:
    role = make_url(pg_url).username
    for call in (lambda: run_query(pg_url, "SELECT 1"), lambda: read_only_engine(pg_url)):
        with pytest.raises(StoreError) as caught:
            call()
        line = caught.value.one_line()
        assert f"role {role!r} is a superuser" in line
        assert "--read-db" in line and "docs/security.md" in line
        assert f":{make_url(pg_url).password}@" not in line and ":***@" in line
    for args in (("query", "SELECT 1"), ("serve", "--port", "0")):
        result = run_cli("--db", pg_url, *args)
        assert result.exit_code != 0 and "Traceback" not in result.err
        assert f"role {role!r} is a superuser" in result.err
        assert len(result.err.strip().splitlines()) == 1, result.err


def test_a_member_of_a_server_file_role_is_refused(
    pg_store: Any, member_url: tuple[str, str]
) -> None:
    url, name = member_url
    with pytest.raises(StoreError, match=f"role '{name}' is a member of pg_read_server_files"):
        run_query(url, "SELECT 1")


def test_a_role_that_may_write_a_table_is_refused(
    pg_store: Any, pg_url: str, pg_reader_url: str
) -> None:
    reader = make_url(pg_reader_url).username
    _admin(pg_url, f"GRANT INSERT ON runs TO {reader}")
    with pytest.raises(StoreError, match=f"role '{reader}' may write table public.runs"):
        run_query(pg_reader_url, "SELECT 1")
    _admin(pg_url, f"REVOKE INSERT ON runs FROM {reader}")
    assert run_query(pg_reader_url, "SELECT count(*) FROM runs").rows == [(0,)]


@pytest.mark.parametrize(
    ("sql", "refusal"),
    [
        (
            "COPY (SELECT 1) TO PROGRAM 'id > /tmp/orch-pwned'",
            "must be superuser or have privileges of the pg_execute_server_program role",
        ),
        ("SELECT pg_read_file('/etc/passwd')", "permission denied for function pg_read_file"),
        ("SELECT lo_import('/etc/passwd')", "permission denied for function lo_import"),
        ("SELECT pg_terminate_backend({writer_pid})", "must be a superuser to terminate"),
    ],
)
def test_a_select_only_role_is_refused_by_postgres(
    pg_store: Any, pg_reader_url: str, fixture_runs: Path, sql: str, refusal: str
) -> None:
    pg_store.ingest([fixture_runs / RUN_1X8])
    before = table_snapshot(pg_store)
    with pg_store.engine.connect() as writer:  # a superuser's session the reader tries to kill
        pid = writer.execute(text("SELECT pg_backend_pid()")).scalar()
        with pytest.raises(QueryError) as caught:
            run_query(pg_reader_url, sql.format(writer_pid=pid))
        assert writer.execute(text("SELECT 1")).scalar() == 1  # still alive
    assert caught.value.one_line().startswith(f"refused by the database: {refusal}")
    assert table_snapshot(pg_store) == before
    assert not Path("/tmp/orch-pwned").exists()


def test_a_select_only_role_reads_through_query_and_serve(
    pg_store: Any, pg_reader_url: str, fixture_runs: Path
) -> None:
    pg_store.ingest([fixture_runs / RUN_1X8])
    assert run_query(pg_reader_url, "SELECT run_id FROM runs").rows == [(RUN_1X8,)]
    engine = read_only_engine(pg_reader_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM seed_table")).scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("remote_sql", "refusal"),
    [
        ("CREATE TABLE pwned (x integer)", "permission denied for schema public"),
        ("DELETE FROM runs", "permission denied for table runs"),
    ],
)
def test_a_select_only_role_cannot_write_through_dblink(
    pg_store: Any,
    pg_url: str,
    pg_reader_url: str,
    fixture_runs: Path,
    remote_sql: str,
    refusal: str,
) -> None:
    # A second connection is outside the READ ONLY transaction: only the role's rights hold.
    _admin(pg_url, "CREATE EXTENSION IF NOT EXISTS dblink")
    pg_store.ingest([fixture_runs / RUN_1X8])
    before = table_snapshot(pg_store)
    reader = make_url(pg_reader_url)
    dsn = (
        f"host={reader.host} port={reader.port or 5432} dbname={reader.database} "
        f"user={reader.username} password={reader.password}"
    )
    with pytest.raises(QueryError) as caught:
        run_query(pg_reader_url, f"SELECT dblink_exec('{dsn}', '{remote_sql}')")
    assert refusal in caught.value.one_line()
    assert reader.password not in caught.value.one_line()
    assert table_snapshot(pg_store) == before
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('public.pwned')")).scalar() is None
    engine.dispose()
