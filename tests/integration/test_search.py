"""The runs page's text search through its trigram index (store/search.py): the same runs as the
plain LIKE over the table, after ingests, a reason changed by a status change and deletes (the
SQLite FTS5 table follows by triggers); its plan reads the index; and a PostgreSQL store whose
owner may not create pg_trgm upgrades all the same and searches without it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, create_engine, select, text
from sqlalchemy.engine import make_url

from orchestrator.store import open_store, search, upgrade_store
from orchestrator.store.delete import delete_runs
from orchestrator.store.ingest import WritePolicy
from orchestrator.store.models import Run
from orchestrator.store.search import (
    TextMatch,
    _plain,
    found_ids,
    index_serves,
    indexed,
    searched,
    walks,
)
from tests.integration.test_query_plans import forget_statistics, plan, recorded
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
    query = (
        searched(conn, query, TextMatch(words)) if indexed_search else query.where(_plain(words))
    )
    return set(conn.scalars(query))


def _found_by_ids(conn: Connection, words: str) -> set[str] | None:
    """The runs page's way on SQLite: the ids read from the index once, then runs by them."""
    ids = found_ids(conn, words)
    if ids is None:
        return None
    return set(conn.scalars(searched(conn, select(Run.run_id), TextMatch(words, ids))))


def _found_by_walk(conn: Connection, words: str) -> set[str]:
    """A wide search's page way: each run's own text tested, no index."""
    return set(conn.scalars(searched(conn, select(Run.run_id), TextMatch(words, walk=True))))


def assert_same_runs(url: str) -> None:
    with open_store(url) as store, store.engine.connect() as conn:
        assert indexed(conn)
        for words in WORDS:
            expected = _found(conn, words, False)
            assert _found(conn, words, True) == expected, words
            by_ids = _found_by_ids(conn, words)
            assert _found_by_walk(conn, words) == expected, words
            if conn.dialect.name == "sqlite" and len(words) >= search.TRIGRAM:
                assert by_ids == expected, words
            else:  # no FTS5 table to read ids from: the statements search themselves
                assert by_ids is None, words


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
    from orchestrator.store.web_queries import RUN_SORTS, RunFilter, runs_page

    upgrade_store(url)
    with open_store(url) as store:
        store.ingest(make_run_folders(tmp_path / "runs"), ADOPT)
    forget_statistics(url)
    with open_store(url) as store, store.engine.connect() as conn:
        for sort in RUN_SORTS:  # each sort's page takes the ids, none walks its sort index
            for descending in (True, False):
                wanted = RunFilter(text="2x8-metax", sort=sort, descending=descending)
                with recorded(conn) as statements:
                    assert runs_page(conn, wanted).total == 6
                _assert_search_plans(conn, statements)
        with recorded(conn) as statements:
            nothing = runs_page(conn, RunFilter(text="no-such-text"))
        assert (nothing.rows, nothing.total, nothing.exact) == ([], 0, True)
        on_runs = [s for s, _ in statements if "FROM runs " in s or "FROM runs\n" in s]
        # SQLite: the index says none match, and no statement reads runs (`IN ()` scans them)
        assert len(on_runs) == (0 if conn.dialect.name == "sqlite" else 2), statements


def _assert_search_plans(conn: Connection, statements: list[tuple[str, Any]]) -> None:
    index_reads = [(s, p) for s, p in statements if "FROM runs_search" in s]
    searched = [(s, p) for s, p in statements if "FROM runs " in s or "FROM runs\n" in s]
    assert len(searched) >= 2  # the capped count and the page (a nullable sort's: 2 parts)
    if conn.dialect.name == "sqlite":  # the index is read once; both statements take its ids
        assert len(index_reads) == 1, statements
        lines = "\n".join(plan(conn, *index_reads[0], no_sort=False))
        assert "SCAN runs_search VIRTUAL TABLE INDEX" in lines, lines
    else:
        assert index_reads == [], statements
    for statement, params in searched:
        lines = "\n".join(plan(conn, statement, params, no_sort=False))
        if conn.dialect.name == "sqlite":  # runs by their ids (a NULL sort value's too), no walk
            assert re.search(
                r"SEARCH runs USING (COVERING )?INDEX \w+ \((\w+=\? AND )?run_id=\?\)",
                lines,
            ), lines
            assert "SCAN runs" not in lines, lines
        else:  # the page's query may walk the sort's index (LIMIT); the count reads trigrams
            if "count(" in statement:
                assert "Bitmap Index Scan on ix_runs_search_run_id" in lines, lines
                assert "Bitmap Index Scan on ix_runs_search_reason" in lines, lines
            assert "Seq Scan on runs" not in lines, lines


@pytest.mark.parametrize("walk", [False, True], ids=["join", "walk"])
def test_a_search_matching_more_runs_than_the_id_list_joins_or_walks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, walk: bool
) -> None:
    """Above FOUND_IDS_CAP matches, the page either joins the FTS5 table in each statement or,
    when the matches are many for the history (`walks`), walks the sort's index testing each
    run's text: the same page and total as the id list gives, either way."""
    from orchestrator.store import web_queries
    from orchestrator.store.web_queries import RunFilter, runs_page

    url = f"sqlite:///{tmp_path / 'results.db'}"
    upgrade_store(url)
    with open_store(url) as store:
        store.ingest(make_run_folders(tmp_path / "runs"), ADOPT)
    forget_statistics(url)
    with open_store(url) as store, store.engine.connect() as conn:
        wanted = RunFilter(text="2x8-metax", per_page=4)
        listed = runs_page(conn, wanted)
        every = runs_page(conn, RunFilter(text="2x8-metax")).rows
        status = every[0]["status"]
        with_status = sum(r["status"] == status for r in every)
        assert found_ids(conn, "2x8-metax") is not None
        monkeypatch.setattr(search, "FOUND_IDS_CAP", 6)  # the 6 matches: still a list
        assert len(found_ids(conn, "2x8-metax") or []) == 6
        monkeypatch.setattr(search, "FOUND_IDS_CAP", 5)
        assert found_ids(conn, "2x8-metax") is None
        monkeypatch.setattr(web_queries, "walks", lambda *_: walk)
        with recorded(conn) as statements:
            wide = runs_page(conn, wanted)
        assert (wide.total, wide.exact) == (listed.total, listed.exact) == (6, True)
        assert [r["run_id"] for r in wide.rows] == [r["run_id"] for r in listed.rows]
        assert len(wide.rows) == 4
        # a text alone is counted in the FTS5 table; with another filter the count joins runs
        counted = [s for s, _ in statements if "count(" in s]
        assert len(counted) == 1 and "JOIN" not in counted[0], counted
        assert "FROM runs_search" in counted[0], counted
        joined = [s for s, _ in statements if "JOIN runs_search" in s]
        assert len(joined) == (0 if walk else 1), statements
        if walk:
            (page,) = [(s, p) for s, p in statements if "ORDER BY" in s]
            lines = "\n".join(plan(conn, *page, no_sort=False))
            assert lines == "SCAN runs USING INDEX ix_runs_sort_submitted_at", lines
        narrowed = RunFilter(text="2x8-metax", status=status, per_page=4)
        with recorded(conn) as statements:
            assert runs_page(conn, narrowed).total == with_status
        counted = [s for s, _ in statements if "count(" in s]
        assert len(counted) == 1 and "JOIN runs_search" in counted[0], counted


def test_a_wide_search_walks_when_its_matches_squared_pass_the_page_times_the_history(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    upgrade_store(url)
    with open_store(url) as store, store.engine.connect() as conn:
        # 100,000 runs, a page of 50: the walk reads about 50 x 100,000 / matches runs
        assert walks(2237, 50, 100_000)  # 5,004,169 > 5,000,000
        assert not walks(2236, 50, 100_000)  # 4,999,696
        assert walks(10_000, 999, 100_000)  # deep pages read more: 10^8 > 99.9M
        assert not walks(10_000, 1000, 100_000)  # 10^8, not more
        # the choice is made only where the FTS5 table serves: not for text too short for it
        assert index_serves(conn, "NCCL") and not index_serves(conn, "NC")


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
