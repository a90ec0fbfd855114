"""Every example query of docs/queries.md runs on SQLite through `orchestrator query`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.store.readonly import run_query
from tests.support.store_fixtures import ALL_RUNS, docs_queries

QUERIES = docs_queries("sqlite")


def test_the_docs_have_five_questions_for_sqlite() -> None:
    assert len({heading for heading, _ in QUERIES}) == 5


@pytest.mark.parametrize(("heading", "sql"), QUERIES, ids=[h.split(".")[0] for h, _ in QUERIES])
def test_docs_query_runs_on_sqlite(
    sqlite_store: Any, sqlite_url: str, fixture_runs: Path, heading: str, sql: str
) -> None:
    sqlite_store.ingest([fixture_runs / name for name in ALL_RUNS])
    result = run_query(sqlite_url, sql)
    assert result.columns
    if heading.startswith("3."):
        assert [row[:1] for row in result.rows] == [("me-node2",)]
    if heading.startswith("5."):
        assert {row[0] for row in result.rows} == {"metax", "nvidia"}
