"""`orchestrator query` and `serve` on a real PostgreSQL server are read-only by the database's
own rules: a role that can do more than read is refused up front; a SELECT-only role (made with
the SQL of docs/security.md) cannot run a program, read a server file or signal a session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from orchestrator.errors import QueryError, StoreError
from orchestrator.store.readonly import SERVER_ROLES, read_only_engine, run_query
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


@pytest.mark.parametrize(
    ("grant", "problem"),
    [(f"GRANT {built_in} TO {{role}}", f"is a member of {built_in}") for built_in in SERVER_ROLES]
    + [("ALTER ROLE {role} CREATEROLE", "has CREATEROLE")],
)
def test_a_role_with_server_powers_is_refused(
    pg_store: Any, pg_url: str, pg_reader_url: str, grant: str, problem: str
) -> None:
    reader = make_url(pg_reader_url).username
    assert run_query(pg_reader_url, "SELECT count(*) FROM runs").rows == [(0,)]
    _admin(pg_url, grant.format(role=reader))
    with pytest.raises(StoreError, match=f"role '{reader}' {problem}"):
        run_query(pg_reader_url, "SELECT 1")
    with pytest.raises(StoreError, match=f"role '{reader}' {problem}"):
        read_only_engine(pg_reader_url)


def test_a_role_that_may_write_or_create_is_refused(
    pg_store: Any, pg_url: str, pg_reader_url: str
) -> None:
    reader = make_url(pg_reader_url).username
    for grant, shown in (
        ("INSERT ON runs", "public.runs"),
        ("UPDATE (status) ON runs", "public.runs"),  # a column's right is a write too
        ("USAGE ON SEQUENCE run_status_history_id_seq", "public.run_status_history_id_seq"),
        ("CREATE ON SCHEMA public", None),
    ):
        _admin(pg_url, f"GRANT {grant} TO {reader}")
        problem = f"may write {shown}" if shown else "may create tables in schema public"
        with pytest.raises(StoreError, match=f"role '{reader}' {problem}"):
            run_query(pg_reader_url, "SELECT 1")
        _admin(pg_url, f"REVOKE {grant} FROM {reader}")
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
