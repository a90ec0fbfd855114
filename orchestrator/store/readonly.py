"""`orchestrator query`: an admin's SQL, run so that the database itself refuses any write.

SQLite: a connection opened with `mode=ro`, `PRAGMA query_only`, and an authorizer that allows
only reading (no ATTACH, no VACUUM INTO, no PRAGMA that sets a value). PostgreSQL: a role that can
only read (refused up front otherwise: a superuser, a member of the server-file/program roles,
a role that may write a table; see docs/security.md), and within it a READ ONLY transaction, the
statement sent as one prepared statement (so `COMMIT; DELETE ...` cannot run), rolled back
afterwards. No SQL text is inspected here: the refusal comes from the database.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from orchestrator.errors import QueryError, StoreError
from orchestrator.store.engine import (
    SQLITE_BUSY_TIMEOUT_MS,
    parse_url,
    redact_url,
    require_sqlite_file,
)

READ_ONLY_MESSAGE = "the query tries to write; `orchestrator query` is read-only"
READ_ONLY_REMEDY = (
    "use SELECT (or WITH ... SELECT); delete runs with orchestrator runs delete RUN... "
    "(or a selection such as --status failed --before DATE)"
)
MAX_ROWS_DEFAULT = 10_000


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool  # more rows existed than max_rows


def run_query(url: str, sql: str, max_rows: int = MAX_ROWS_DEFAULT) -> QueryResult:
    parsed = parse_url(url)
    if not sql.strip():
        raise QueryError(
            "the query is empty", 'pass SQL, e.g. orchestrator query "SELECT * FROM seed_table"'
        )
    if parsed.get_backend_name() == "sqlite":
        return _sqlite(parsed, sql, max_rows)
    return _postgres(parsed, sql, max_rows)


# -- SQLite --------------------------------------------------------------------------------------

_SQLITE_ALLOWED = {
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_FUNCTION,
    sqlite3.SQLITE_RECURSIVE,
}


def _authorize(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None
) -> int:
    if action in _SQLITE_ALLOWED:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and arg2 is None:  # reading a pragma, e.g. table_info
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def _connect_search(connection: sqlite3.Connection) -> None:
    """Open the text search's FTS5 table (migration 0009) before the authorizer is set: FTS5
    declares its schema when a connection first uses it, which the reading authorizer would
    refuse; once declared, reading it is plain reads of its tables."""
    found = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs_search'"
    ).fetchone()
    if found:
        connection.execute("SELECT 1 FROM runs_search WHERE rowid = 0").fetchall()


def _sqlite(url: URL, sql: str, max_rows: int) -> QueryResult:
    path = require_sqlite_file(url)
    uri = f"file:{quote(str(path.resolve()))}?mode=ro"
    connection = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        connection.execute("PRAGMA query_only = 1")
        _connect_search(connection)
        connection.set_authorizer(_authorize)
        try:
            cursor = connection.execute(sql)
            columns = [d[0] for d in cursor.description or ()]
            rows = cursor.fetchmany(max_rows + 1)
        except sqlite3.Error as exc:
            raise _sqlite_error(exc) from None
    finally:
        connection.close()
    return QueryResult(columns, [tuple(r) for r in rows[:max_rows]], len(rows) > max_rows)


def _sqlite_error(exc: sqlite3.Error) -> QueryError:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = text.lower()
    if any(
        word in lowered
        for word in ("readonly", "read-only", "not authorized", "authorization denied")
    ):
        return QueryError(READ_ONLY_MESSAGE, READ_ONLY_REMEDY)
    if "one statement at a time" in lowered:
        return QueryError("the query holds more than one statement", "run one statement per call")
    return QueryError(
        f"SQL error: {text}", "check the SQL; docs/schema.md lists the tables and columns"
    )


# -- PostgreSQL ----------------------------------------------------------------------------------

_PG_READ_ONLY_SQLSTATE = "25006"  # read_only_sql_transaction
_PG_DENIED_SQLSTATE = "42501"  # insufficient_privilege
# Built-in roles whose members reach past SQL: run programs or read/write files as the server's
# account, or signal other sessions (a READ ONLY transaction stops none of these).
SERVER_ROLES = (
    "pg_execute_server_program",
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_signal_backend",
)
# What the connected role may do beyond reading: one row, checked before any SQL of the user's.
ROLE_CHECK_SQL = """
SELECT current_user::text, r.rolsuper, r.rolcreaterole,
  ARRAY(SELECT b FROM unnest(%(roles)s::text[]) AS b WHERE pg_has_role(current_user, b, 'MEMBER')),
  ARRAY(SELECT n.nspname || '.' || c.relname FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%%' AND (
          (c.relkind IN ('r', 'p')
           AND (has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')
                OR has_any_column_privilege(c.oid, 'INSERT, UPDATE')))
          OR (c.relkind = 'S' AND has_sequence_privilege(c.oid, 'USAGE, UPDATE')))
        ORDER BY 1),
  ARRAY(SELECT nspname::text FROM pg_namespace
        WHERE nspname <> 'information_schema' AND nspname NOT LIKE 'pg\\_%%'
          AND has_schema_privilege(oid, 'CREATE') ORDER BY 1)
FROM pg_roles r WHERE r.rolname = current_user
"""
READER_REMEDY = (
    "connect `query` and `serve` as a SELECT-only role: create one as docs/security.md shows, "
    "then pass its URL with --read-db, $ORCHESTRATOR_READ_DB or [store] read_url"
)


def reader_problem(row: tuple[Any, ...] | None) -> str | None:
    """What makes the connected role more than a reader (None: it only reads)."""
    if row is None:
        return "its role is not in pg_roles"
    user, superuser, createrole, roles, writable, creatable = row
    if superuser:
        return f"role {user!r} is a superuser"
    if createrole:
        return f"role {user!r} has CREATEROLE (it can grant itself any role)"
    if roles:
        return f"role {user!r} is a member of {', '.join(roles)}"
    if writable:
        more = f" and {len(writable) - 1} more" if len(writable) > 1 else ""
        return f"role {user!r} may write {writable[0]}{more}"
    if creatable:
        return f"role {user!r} may create tables in schema {creatable[0]}"
    return None


def _refuse_privileged(row: tuple[Any, ...] | None, shown: str) -> None:
    problem = reader_problem(row)
    if problem is not None:
        raise StoreError(f"results store at {shown}: {problem}", READER_REMEDY)


def _postgres(url: URL, sql: str, max_rows: int) -> QueryResult:
    import psycopg

    shown = redact_url(url)
    params: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
        "connect_timeout": 10,
        "application_name": "orchestrator query",
        **{k: v for k, v in url.query.items() if isinstance(v, str)},
    }
    try:
        connection = psycopg.connect(**{k: v for k, v in params.items() if v is not None})
    except psycopg.Error as exc:
        raise StoreError(
            f"cannot connect to results store at {shown}: {_pg_text(exc)}",
            "check the URL, that the server runs, and the credentials",
        ) from None
    try:
        with connection.cursor() as cursor:
            cursor.execute(ROLE_CHECK_SQL, {"roles": list(SERVER_ROLES)})
            _refuse_privileged(cursor.fetchone(), shown)
        connection.rollback()
        connection.read_only = True  # every transaction starts with BEGIN READ ONLY
        with connection.cursor() as cursor:
            try:
                cursor.execute("SET LOCAL statement_timeout = '5min'")
                # prepare=True: the extended protocol, which runs exactly one statement.
                cursor.execute(sql, prepare=True)
                columns = [d.name for d in cursor.description or ()]
                rows = cursor.fetchmany(max_rows + 1) if cursor.description else []
            except psycopg.Error as exc:
                raise _pg_error(exc) from None
    finally:
        connection.rollback()
        connection.close()
    return QueryResult(columns, [tuple(r) for r in rows[:max_rows]], len(rows) > max_rows)


def _pg_text(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pg_error(exc: Any) -> QueryError:
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate == _PG_READ_ONLY_SQLSTATE:
        return QueryError(READ_ONLY_MESSAGE, READ_ONLY_REMEDY)
    if sqlstate == _PG_DENIED_SQLSTATE:  # the role's own rights: SELECT on the store only
        return QueryError(
            f"refused by the database: {_pg_text(exc)}",
            "`orchestrator query` reads the store's tables and views only; see docs/security.md",
        )
    if sqlstate == "42601" and "multiple commands" in str(exc):
        return QueryError("the query holds more than one statement", "run one statement per call")
    return QueryError(
        f"SQL error: {_pg_text(exc)}", "check the SQL; docs/schema.md lists the tables and columns"
    )


# -- a read-only engine for `orchestrator serve` -------------------------------------------------


def read_only_engine(url: str) -> Engine:
    """An SQLAlchemy engine whose every connection the database keeps from writing: SQLite
    opened `mode=ro` with `query_only` and the reading authorizer, PostgreSQL sessions of a
    role that can only read (checked here, refused otherwise) whose transactions are all READ
    ONLY (with a statement timeout, so no page holds the server)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = require_sqlite_file(parsed)
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"

        def connect() -> sqlite3.Connection:
            connection = sqlite3.connect(
                uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
            connection.execute("PRAGMA query_only = 1")
            _connect_search(connection)
            connection.set_authorizer(_authorize)
            return connection

        return create_engine("sqlite://", creator=connect)
    engine = create_engine(
        parsed,
        pool_pre_ping=True,
        execution_options={"postgresql_readonly": True},
        connect_args={
            "connect_timeout": 10,
            "application_name": "orchestrator serve",
            "options": "-c default_transaction_read_only=on -c statement_timeout=30000",
        },
    )
    try:
        with engine.connect() as conn:
            row = conn.exec_driver_sql(ROLE_CHECK_SQL, {"roles": list(SERVER_ROLES)}).first()
        _refuse_privileged(None if row is None else tuple(row), redact_url(parsed))
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(
            f"cannot connect to results store at {redact_url(parsed)}: {_pg_text(exc)}",
            "check the URL, that the server runs, and the credentials",
        ) from None
    except StoreError:
        engine.dispose()
        raise
    return engine
