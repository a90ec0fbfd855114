"""The runs page's text search through its trigram index (store/search.py): the same runs as the
plain LIKE over the table, after ingests, a reason changed by a status change and deletes (the
SQLite FTS5 table follows by triggers); its plan reads the index; and a PostgreSQL store whose
owner may not create pg_trgm upgrades all the same and searches without it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, select, text
from sqlalchemy.engine import make_url

from orchestrator.store import open_store, upgrade_store
from orchestrator.store.delete import delete_runs
from orchestrator.store.ingest import WritePolicy
from orchestrator.store.models import Run
from orchestrator.store.search import _plain, indexed, searched
from tests.integration.test_query_plans import plan, recorded
from tests.support.web_fixtures import FIXTURE_RUNS, XSS_RUN, make_run_folders

ADOPT = WritePolicy(replace_published=False, adopt_campaigns=True)
WORDS = ("NCCL", "nccl", "DistBackend", "metax", "2x8-metax", "xss", "<script>", "100%", "zz", "-1")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'results.db'}"
        return
    yield request.getfixturevalue("pg_url")


def _found(conn: Connection, words: str, indexed_search: bool) -> set[str]:
    query = select(Run.run_id)
    query = searched(conn, query, words) if indexed_search else query.where(_plain(words))
    return set(conn.scalars(query))


def assert_same_runs(url: str) -> None:
    with open_store(url) as store, store.engine.connect() as conn:
        assert indexed(conn)
        for words in WORDS:
            assert _found(conn, words, True) == _found(conn, words, False), words


def test_indexed_search_finds_what_like_finds(url: str, tmp_path: Path) -> None:
    upgrade_store(url)
    folders = sorted(FIXTURE_RUNS.iterdir()) + make_run_folders(tmp_path / "runs")
    with open_store(url) as store:
        store.ingest(folders, ADOPT)
    assert_same_runs(url)
    with open_store(url) as store, store.engine.connect() as conn:
        assert "20260115-131500-2x8-metax-failed" in _found(conn, "DistBackend", True)
        assert _found(conn, "xss", True) == {XSS_RUN}
    with open_store(url) as store:
        store.set_status(XSS_RUN, "failed", reason="NCCL watchdog timeout on node7")
    with open_store(url) as store, store.engine.connect() as conn:
        assert XSS_RUN in _found(conn, "watchdog", True)
        assert XSS_RUN not in _found(conn, "script", True)
    assert_same_runs(url)
    with open_store(url) as store, store.transaction() as conn:
        delete_runs(conn, [XSS_RUN, "20260115-131500-2x8-metax-failed"])
    with open_store(url) as store, store.engine.connect() as conn:
        assert _found(conn, "watchdog", True) == set()
        assert _found(conn, "xss", True) == set()
    assert_same_runs(url)


def test_the_search_reads_the_trigram_index(url: str, tmp_path: Path) -> None:
    from orchestrator.store.web_queries import RunFilter, runs_page

    upgrade_store(url)
    with open_store(url) as store:
        store.ingest(make_run_folders(tmp_path / "runs"), ADOPT)
    with open_store(url) as store, store.engine.connect() as conn:
        with recorded(conn) as statements:
            page = runs_page(conn, RunFilter(text="2x8-metax"))
        assert page.total == 6
        searched = [(s, p) for s, p in statements if "FROM runs" in s]
        assert len(searched) == 2  # the capped count and the page
        for statement, params in searched:
            lines = "\n".join(plan(conn, statement, params, no_sort=False))
            if conn.dialect.name == "sqlite":
                assert "SCAN runs_search VIRTUAL TABLE INDEX" in lines, lines
                assert "SEARCH runs USING" in lines and "SCAN runs\n" not in lines + "\n", lines
            else:  # the page's query may walk the sort's index (LIMIT); the count reads trigrams
                if "count(" in statement:
                    assert "Bitmap Index Scan on ix_runs_search_run_id" in lines, lines
                    assert "Bitmap Index Scan on ix_runs_search_reason" in lines, lines
                assert "Seq Scan on runs" not in lines, lines


def test_the_search_ignores_case_and_reads_by_run_id_never_walk_its_index(
    url: str, tmp_path: Path
) -> None:
    """Both backends find `distbackend` as `DistBackend`. On PostgreSQL the trigram indexes
    hold lower(column): a read of runs by id (`run_id IN (...)`: a run's warnings, its energy)
    cannot take them instead of the primary key (on the bare column, as 0009 made them, the
    planner did: 325 ms for 76 runs of 10,000)."""
    upgrade_store(url)
    with open_store(url) as store:
        store.ingest(sorted(FIXTURE_RUNS.iterdir()) + make_run_folders(tmp_path / "runs"), ADOPT)
    with open_store(url) as store, store.engine.connect() as conn:
        assert "20260115-131500-2x8-metax-failed" in _found(conn, "distbackend", True)
        assert _found(conn, "DISTBACKEND", True) == _found(conn, "DistBackend", True)
        if conn.dialect.name != "postgresql":
            return
        ids = list(conn.scalars(select(Run.run_id)))
        by_id = select(Run.run_id, Run.warnings).where(
            Run.run_id.in_(ids), Run.warnings.is_not(None)
        )
        conn.rollback()
        with conn.begin():
            # the planner's other ways to this read off: an index that serves `=` is taken
            conn.exec_driver_sql("SET LOCAL enable_indexscan = off")
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            compiled = by_id.compile(conn, compile_kwargs={"literal_binds": True})
            lines = "\n".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {compiled}"))
        assert "ix_runs_search" not in lines and "pk_runs" in lines, lines
        # what makes it so whatever the statistics: the indexes hold an expression, not run_id
        definitions = conn.execute(
            text("SELECT indexdef FROM pg_indexes WHERE indexname LIKE 'ix_runs_search%'")
        ).scalars()
        assert sorted(d.split("USING ")[1] for d in definitions) == [
            "gin (lower((run_id)::text) gin_trgm_ops)",
            "gin (lower(reason) gin_trgm_ops)",
        ]


@pytest.mark.postgres
def test_without_rights_for_pg_trgm_the_upgrade_goes_on_and_search_reads_the_table(
    pg_url: str, tmp_path: Path
) -> None:
    admin = create_engine(make_url(pg_url), isolation_level="AUTOCOMMIT")
    role = f"orch_nocreate_{uuid.uuid4().hex[:8]}"
    database = make_url(pg_url).database
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'"))
            conn.execute(text(f'GRANT CONNECT ON DATABASE "{database}" TO {role}'))
            conn.execute(text(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}"))
        limited = make_url(pg_url).set(username=role, password="pw")
        url = limited.render_as_string(hide_password=False)
        upgrade_store(url)  # no CREATE on the database: no extension, no trigram indexes
        with open_store(url) as store:
            store.ingest(make_run_folders(tmp_path / "runs"), ADOPT)
            with store.engine.connect() as conn:
                assert not indexed(conn)
                assert len(_found(conn, "2x8-metax", True)) == 6
                assert (
                    conn.scalar(
                        text(
                            "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'ix_runs_search%'"
                        )
                    )
                    == 0
                )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
        with admin.connect() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        admin.dispose()
