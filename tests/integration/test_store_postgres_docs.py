"""Every example query of docs/queries.md runs on PostgreSQL through `orchestrator query`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.store.readonly import run_query
from tests.support.store_fixtures import ALL_RUNS, docs_queries

pytestmark = pytest.mark.postgres
QUERIES = docs_queries("postgresql")


def test_the_docs_have_six_questions_for_postgres() -> None:
    assert len({heading for heading, _ in QUERIES}) == 6


def test_docs_queries_run_on_postgres(
    pg_store: Any, pg_reader_url: str, fixture_runs: Path
) -> None:
    pg_store.ingest([fixture_runs / name for name in ALL_RUNS])
    for heading, sql in QUERIES:
        result = run_query(pg_reader_url, sql)
        assert result.columns, heading
        if heading.startswith("3."):
            assert [row[:1] for row in result.rows] == [("me-node2",)]
        if heading.startswith("5."):
            assert {row[0] for row in result.rows} == {"metax", "nvidia"}
