"""Connecting to the results store: URL handling, engine settings, the password never shown."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from orchestrator.errors import StoreError
from orchestrator.redact import redact_text

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_PAGE_SIZE = 16_384
# Execution option on a connection that only reads: `conn.execution_options(**{READ_ONLY_OPTION: True})`.
READ_ONLY_OPTION = "orchestrator_reader"


class RawJson(str):
    """JSON text that is already serialised (a rank file as read): stored as is, not re-encoded.

    Keeps the document byte for byte and saves a json.dumps per rank row on the ingest path.
    """


def _json_serializer(value: Any) -> str:
    if isinstance(value, RawJson):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)


def redact_url(url: str | URL) -> str:
    """The URL with its password replaced by ***, for every message and log line: in the
    userinfo and in query parameters (?password=...); see orchestrator/redact.py."""
    try:
        parsed = url if isinstance(url, URL) else make_url(str(url))
    except (ArgumentError, ValueError):
        return redact_text(str(url))  # not a URL SQLAlchemy reads: hide what looks secret
    return redact_text(parsed.render_as_string(hide_password=True))


SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def parse_url(url: str) -> URL:
    """Accept what an admin types: a SQLAlchemy URL, postgres[ql]://..., or the path of a
    SQLite file (ending in .db, .sqlite or .sqlite3). Anything else is refused as not a URL,
    so a typo never becomes a database file."""
    text = str(url).strip()
    if not text:
        raise StoreError("the results store URL is empty", "pass --db sqlite:///results.db")
    if "://" not in text:
        if not text.lower().endswith(SQLITE_SUFFIXES):
            raise StoreError(
                f"results store URL {redact_text(text)!r} is not a database URL",
                "use sqlite:///path/results.db or postgresql://user@host/dbname; a plain path "
                "must name a SQLite file ending in .db, .sqlite or .sqlite3",
            )
        text = "sqlite:///" + text
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError):
        raise StoreError(
            f"results store URL {redact_url(text)!r} is not a database URL",
            "use sqlite:///path/results.db or postgresql://user@host/dbname",
        ) from None
    # psycopg 3 is the driver we ship; plain postgresql:// would ask for psycopg2.
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(
            f"results store URL {redact_url(parsed)} uses {backend!r}",
            "use SQLite (sqlite:///file.db) or PostgreSQL (postgresql://user@host/db)",
        )
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise StoreError(
            "an in-memory SQLite store would lose every result",
            "name a file: sqlite:///results.db",
        )
    return parsed


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (see _begin_sqlite),
    # so that DDL in migrations is transactional too.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        # Only takes effect when the file is new: 16 KiB pages hold several rank documents each
        # (with 4 KiB pages each ~2 KiB document took a page of its own), which halves the file
        # and doubles bulk-ingest speed.
        cursor.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable against corruption in WAL mode; a power cut may lose the last commit.
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _begin_sqlite(connection: Any) -> None:
    # IMMEDIATE takes the write lock up front: two orchestrators writing at once wait for each
    # other (busy_timeout) instead of failing when a deferred read lock cannot be upgraded.
    # Readers ask for a deferred transaction, which never blocks in WAL mode.
    deferred = connection.get_execution_options().get(READ_ONLY_OPTION, False)
    connection.exec_driver_sql("BEGIN DEFERRED" if deferred else "BEGIN IMMEDIATE")


def _optimize_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # SQLite's advice for every connection that closes: ANALYZE the tables its queries would
    # have planned better with statistics (cheap when nothing changed). Without them the
    # planner reads "status = 'succeeded'" as selective and scans every run.
    try:
        dbapi_connection.execute("PRAGMA optimize")
    except Exception:  # a locked or read-only file: statistics can wait for the next close
        pass


def require_sqlite_file(url: URL) -> Path:
    """The file of a SQLite store that must already exist, checked before anything connects:
    sqlite3 would create a missing file (an empty store) on the first connect."""
    path = Path(url.database or "")
    if not path.exists():
        raise StoreError(
            f"results store file {path.absolute()} does not exist",
            f"check the path, or create the store with: orchestrator --db "
            f"{shlex.quote(redact_url(url))} db upgrade",
        )
    if not path.is_file():
        raise StoreError(
            f"results store {path.absolute()} is not a file",
            "check the path: name a SQLite file, e.g. sqlite:///results.db",
        )
    return path


def make_engine(url: str | URL, *, create: bool = False) -> Engine:
    """An engine with the settings the store relies on (see docs/schema.md, "Backends").

    A SQLite file must exist unless `create` (only `db upgrade` and a first `submit` create a
    store); then its folder is made as needed and the first connect creates the file."""
    parsed = url if isinstance(url, URL) else parse_url(url)
    kwargs: dict[str, Any] = {"json_serializer": _json_serializer}
    if parsed.get_backend_name() == "sqlite":
        if create:
            path = Path(parsed.database or "")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the folder of results store {redact_url(parsed)}: "
                    f"{exc.strerror}",
                    "check the path and permissions",
                ) from None
        else:
            require_sqlite_file(parsed)
        # Pooled (QueuePool): an idle connection holds no lock in WAL mode, and closing the
        # last connection checkpoints the WAL, which would cost ~50 ms per transaction.
        engine = create_engine(parsed, **kwargs)
        event.listen(engine, "connect", _tune_sqlite)
        event.listen(engine, "begin", _begin_sqlite)
        event.listen(engine, "close", _optimize_sqlite)
        return engine
    kwargs["pool_pre_ping"] = True
    kwargs["connect_args"] = {"connect_timeout": 10, "application_name": "orchestrator"}
    return create_engine(parsed, **kwargs)
