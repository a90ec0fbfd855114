"""Every example query of docs/queries.md runs on SQLite through `orchestrator query`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchestrator.store.readonly import run_query
from tests.support.store_fixtures import ALL_RUNS, DOCS, docs_queries

QUERIES = docs_queries("sqlite")
COLUMNS = {
    "1": ["vendor", "topology", "precision", "best_p_core", "runs"],
    "2": [
        "config",
        "precision",
        "fix_hp",
        "run_id",
        "finished_at",
        "previous_p_core",
        "p_core",
        "p_core_change",
        "driver",
        "torch_version",
    ],
    "3": ["node", "reason", "failures", "last_seen"],
    "4": ["run_id", "rank", "host", "core_s", "slower_than_average"],
    "5": [
        "vendor",
        "topology",
        "precision",
        "driver",
        "framework",
        "runs",
        "mean_p_core",
        "best_map",
    ],
    "6": [
        "vendor",
        "config_label",
        "precision",
        "fix_hp",
        "n",
        "mean_p_core",
        "sd_p_core",
        "best_p_core",
        "last_finished_at",
    ],
}


def test_the_docs_have_six_questions_for_sqlite() -> None:
    assert len({heading for heading, _ in QUERIES}) == 6


@pytest.mark.parametrize(("heading", "sql"), QUERIES, ids=[h.split(".")[0] for h, _ in QUERIES])
def test_docs_query_runs_on_sqlite(
    sqlite_store: Any, sqlite_url: str, fixture_runs: Path, heading: str, sql: str
) -> None:
    sqlite_store.ingest([fixture_runs / name for name in ALL_RUNS])
    result = run_query(sqlite_url, sql)
    assert list(result.columns) == COLUMNS[heading.split(".")[0]]
    # Rows and values of every query: tests/unit/test_docs_queries_rows.py (recent-dated runs).
    if heading.startswith("3."):
        assert [row[:1] for row in result.rows] == [("me-node2",)]
    if heading.startswith("5."):
        assert {row[0] for row in result.rows} == {"metax", "nvidia"}


def _json_blocks(name: str) -> list[Any]:
    import json
    import re

    text = (DOCS / name).read_text(encoding="utf-8")
    return [
        json.loads(block)
        for block in re.findall(r"^```json\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    ]


def _documented(name: str) -> set[str]:
    import re

    text = (DOCS / name).read_text(encoding="utf-8")
    return {
        m
        for row in re.findall(r"^\| (.+?) \|", text, re.MULTILINE)
        for m in re.findall(r"`([\w.]+)`", row)
    }


def test_rank_result_doc_describes_every_field_and_its_example_validates() -> None:
    from workload.faster_rcnn import result_format

    sections, fields = result_format.empty_sections()
    expected = set(sections) | {name for kinds in fields.values() for name in kinds}
    expected |= set(result_format._EVAL_FIELDS) | set(result_format._EPOCH_FIELDS)
    expected |= set(result_format._ERROR_FIELDS)
    expected |= {
        "schema",
        "schema_version",
        "run_id",
        "status",
        "eval",
        "epochs",
        "converged",
        "error",
    }
    assert expected - _documented("rank-result.md") == set()
    (example,) = _json_blocks("rank-result.md")
    assert result_format.validate(example)["identity"]["world_size"] == 16


def test_run_folder_doc_describes_every_manifest_field_and_its_examples_load() -> None:
    from orchestrator.runfolder.folder import ENV_FIELDS, manifest_from_dict

    manifest_doc, env_doc = _json_blocks("run-folder.md")
    manifest = manifest_from_dict(manifest_doc, "docs/run-folder.md")
    assert set(manifest.to_dict()) - _documented("run-folder.md") == set()
    assert set(ENV_FIELDS) - _documented("run-folder.md") == set()
    assert manifest.status == "failed" and manifest.reason
    assert isinstance(env_doc["ib"], list)


def test_schema_doc_shows_the_current_head_revision_and_cites_no_missing_file() -> None:
    import re

    from orchestrator.store import head_revision

    text = (DOCS / "schema.md").read_text(encoding="utf-8")
    shown = set(re.findall(r"(?:upgraded from none \(empty\) to|needs) (\d{4})", text))
    assert shown == {head_revision()}
    for page in DOCS.glob("*.md"):  # the facts file lives outside the repository
        assert "REFERENCE.md" not in page.read_text(encoding="utf-8"), page.name
