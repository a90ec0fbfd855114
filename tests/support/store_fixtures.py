"""Fixtures for the results store: SQLite files, fresh PostgreSQL databases, recorded run folders,
and the CLI run in-process.

PostgreSQL tests need $ORCHESTRATOR_TEST_PG_URL (a role that may create databases), which
scripts/start-services.sh prints and CI exports. Without it they fail, they do not skip.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

FIXTURE_RUNS = Path(__file__).resolve().parents[1] / "fixtures" / "runs"
RUN_1X1 = "20260112-101500-1x1-nvidia"
RUN_1X8 = "20260113-101500-1x8-metax"
RUN_2X8 = "20260114-101500-2x8-metax"
RUN_2X8_FAILED = "20260115-131500-2x8-metax-failed"
ALL_RUNS = (RUN_1X1, RUN_1X8, RUN_2X8, RUN_2X8_FAILED)
# FlagPerf's result logs of two faster_rcnn cases (tests/fixtures/flagperf/make_logs.py)
FLAGPERF_LOGS = FIXTURE_RUNS.parent / "flagperf" / "run20240611103000"
FLAGPERF_2X8 = "flagperf-20240611103000-C500-2x8-r1"
# What migrations create at head (checked on SQLite and PostgreSQL).
TABLES = {
    "alembic_version",
    "campaigns",
    "images",
    "image_wheels",
    "runs",
    "run_status_history",
    "run_nodes",
    "rank_results",
    "run_epochs",
    "monitor_samples",
    "node_leases",
    "config_summaries",
    "run_verdicts",
    "derived_versions",
    "run_monitor_series",
    "slurm_follows",
    "health_checks",
    "health_figures",
    "node_quarantine",
}
VIEWS = {"seed_table", "config_history", "run_followers"}


def not_search_object(obj: object, name: str | None, type_: str, *_: object) -> bool:
    """Alembic's include_object for model comparisons: the text search's FTS5 tables (SQLite)
    and trigram indexes (PostgreSQL) are made by migration 0009 only, outside the models."""
    from orchestrator.store.search import PG_SEARCH_INDEXES, SQLITE_SEARCH_TABLES

    if type_ == "table":
        return name not in SQLITE_SEARCH_TABLES
    return not (type_ == "index" and name in PG_SEARCH_INDEXES)


@pytest.fixture
def fixture_runs() -> Path:
    """The committed run folders (read-only: copy them with `run_copy` before changing them)."""
    return FIXTURE_RUNS


@pytest.fixture
def run_copy(tmp_path: Path) -> Callable[[str], Path]:
    """Copy a recorded run folder into tmp_path, so a test can break it."""

    def copy(name: str, new_name: str | None = None) -> Path:
        target = tmp_path / "runs" / (new_name or name)
        shutil.copytree(FIXTURE_RUNS / name, target)
        return target

    return copy


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'results.db'}"


@pytest.fixture
def sqlite_store(sqlite_url: str) -> Iterator[object]:
    from orchestrator.store import open_store, upgrade_store

    upgrade_store(sqlite_url)
    store = open_store(sqlite_url)
    yield store
    store.close()


def _admin_url() -> str:
    url = os.environ.get("ORCHESTRATOR_TEST_PG_URL")
    if not url:
        pytest.fail(
            "ORCHESTRATOR_TEST_PG_URL is not set: start PostgreSQL with "
            'eval "$(scripts/start-services.sh)" (CI does this) and run the tests again',
            pytrace=False,
        )
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = make_url(_admin_url())
    if admin.drivername in ("postgresql", "postgres"):
        admin = admin.set(drivername="postgresql+psycopg")
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # a clear failure, not a skip
        engine.dispose()
        pytest.fail(
            f"cannot create a test database with ORCHESTRATOR_TEST_PG_URL: {exc}", pytrace=False
        )
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[object]:
    from orchestrator.store import open_store, upgrade_store

    upgrade_store(pg_url)
    store = open_store(pg_url)
    yield store
    store.close()


def reader_sql() -> list[str]:
    """The statements docs/security.md gives to create a SELECT-only role."""
    import re

    text = (DOCS / "security.md").read_text(encoding="utf-8")
    (block,) = [
        b for b in re.findall(r"^```sql\n(.*?)^```", text, re.M | re.S) if "CREATE ROLE" in b
    ]
    return [line.strip().rstrip(";") for line in block.splitlines() if line.strip()]


@contextmanager
def pg_reader(db_url: str, admin_url: str | None = None) -> Iterator[str]:
    """A SELECT-only role on the database of `db_url` (whose role is the writer), made by the
    server's admin role (default: the test server's) with the SQL of docs/security.md; yields
    its URL (password included) and drops it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    admin = make_url(admin_url or _admin_url())
    admin = admin.set(drivername="postgresql+psycopg", database=url.database)
    name, password = f"orch_reader_{uuid.uuid4().hex[:10]}", f"Rd-{uuid.uuid4().hex}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for sql in reader_sql():
                sql = sql.replace("orchestrator_reader", name)
                sql = sql.replace("'choose-a-password'", f"'{password}'")
                sql = sql.replace("DATABASE results", f'DATABASE "{url.database}"')
                sql = sql.replace("FOR ROLE orchestrator ", f'FOR ROLE "{url.username}" ')
                conn.execute(text(sql))
        yield url.set(username=name, password=password).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            if conn.execute(text(f"SELECT 1 FROM pg_roles WHERE rolname = '{name}'")).first():
                conn.execute(text(f"DROP OWNED BY {name}"))
                conn.execute(text(f"DROP ROLE {name}"))
        engine.dispose()


@pytest.fixture
def pg_reader_url(pg_url: str) -> Iterator[str]:
    """A SELECT-only role's URL on pg_url's database (created before the schema: the default
    privileges of docs/security.md make the tables readable)."""
    with pg_reader(pg_url) as url:
        yield url


@dataclass
class CliResult:
    exit_code: int
    out: str
    err: str


@pytest.fixture
def run_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., CliResult]:
    """Run `orchestrator ARGS...` in-process, from an empty folder, with no ORCHESTRATOR_* env."""
    from orchestrator.cli import main

    for name in ("ORCHESTRATOR_DB", "ORCHESTRATOR_CLUSTER"):
        monkeypatch.delenv(name, raising=False)
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)
    monkeypatch.chdir(workdir)

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def table_snapshot(store: object) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table, sorted: to prove that an operation changed nothing."""
    from sqlalchemy import select

    from orchestrator.store.models import Base

    engine = store.engine  # type: ignore[attr-defined]
    snapshot = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            rows = [tuple(str(v) for v in row) for row in conn.execute(select(table))]
            snapshot[table.name] = sorted(rows)
    return snapshot


DOCS = Path(__file__).resolve().parents[2] / "docs"


def docs_queries(backend: str) -> list[tuple[str, str]]:
    """(heading, SQL) for every ```sql block of docs/queries.md that runs on `backend`.

    A block tagged `sql` is portable; `sql sqlite` / `sql postgresql` runs on that backend only.
    """
    import re

    text = (DOCS / "queries.md").read_text(encoding="utf-8")
    found = []
    heading = ""
    for block in re.finditer(
        r"^## ([^\n]+)$|^```sql( \w+)?\n(.*?)^```", text, re.MULTILINE | re.DOTALL
    ):
        if block.group(1):
            heading = block.group(1).strip()
            continue
        only = (block.group(2) or "").strip()
        if only in ("", backend):
            found.append((heading, block.group(3).strip()))
    return found
