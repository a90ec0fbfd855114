"""`orchestrator db copy --to URL`: a whole store, SQLite to PostgreSQL and back, on a store
holding campaign runs (queued), a failed run, an imported FlagPerf run and monitor samples.
Afterwards every table holds the same rows, `report` prints the same, rank files keep their
bytes, and copying again adds nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import Text, cast, select

from orchestrator.store import open_store, upgrade_store
from orchestrator.store.copy import copied_tables
from orchestrator.store.models import RankResult, Run
from tests.support.store_fixtures import ALL_RUNS, FLAGPERF_LOGS, RUN_1X1

CLUSTER = """
[cluster]
name = "two"
[[nodes]]
name = "a"
address = "127.0.0.2"
[[nodes]]
name = "b"
address = "127.0.0.3"
"""
CAMPAIGN = '[campaign]\nname = "nightly"\ntopologies = ["1x1", "2x1"]\nrepeats = 2\n'


def _normal(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _rows(url: str) -> dict[str, list[tuple[str, ...]]]:
    """Every copied table's rows, values normalised (jsonb orders keys its own way)."""
    store = open_store(url)
    try:
        with store.reading() as conn:
            return {
                t.name: sorted(tuple(_normal(v) for v in row) for row in conn.execute(select(t)))
                for t in copied_tables()
            }
    finally:
        store.close()


def _raw_texts(url: str) -> list[tuple[str, str]]:
    store = open_store(url)
    try:
        with store.reading() as conn:
            docs = conn.execute(
                select(RankResult.run_id, cast(RankResult.document, Text)).order_by(
                    RankResult.run_id, RankResult.rank
                )
            )
            manifests = conn.execute(
                select(Run.run_id, cast(Run.manifest, Text)).order_by(Run.run_id)
            )
            return [tuple(r) for r in docs] + [tuple(r) for r in manifests]
    finally:
        store.close()


@pytest.fixture
def lab_history(run_cli, sqlite_url, fixture_runs, run_copy, tmp_path) -> str:
    """A SQLite store with every kind of row a lab's history holds."""
    upgrade_store(sqlite_url)
    sampled = run_copy(RUN_1X1)
    lines = [
        json.dumps(
            {"ts": 1768212900 + i, "metric": "device_mem_used_bytes", "value": 1e9 + i, "device": 0}
        )
        for i in range(5)
    ]
    (sampled / "nodes" / "nv-node1" / "monitor.jsonl").write_text("\n".join(lines) + "\n")
    others = [fixture_runs / name for name in ALL_RUNS if name != RUN_1X1]
    assert run_cli("--db", sqlite_url, "ingest", sampled, *others).exit_code == 0
    imported = run_cli(
        "--db", sqlite_url, "import", "flagperf", FLAGPERF_LOGS, "--runs-dir", tmp_path / "fp"
    )
    assert imported.exit_code == 0, imported.err
    (tmp_path / "cluster.toml").write_text(CLUSTER)
    (tmp_path / "nightly.toml").write_text(CAMPAIGN)
    queued = run_cli(
        "--db",
        sqlite_url,
        "--cluster",
        tmp_path / "cluster.toml",
        "campaign",
        "submit",
        tmp_path / "nightly.toml",
    )
    assert queued.exit_code == 0, queued.err
    return sqlite_url


def test_copy_to_postgresql_and_back_keeps_every_row_report_and_byte(
    run_cli, lab_history, pg_url, tmp_path
):
    before = _rows(lab_history)
    assert {t: len(r) for t, r in before.items() if r}.keys() >= {
        "campaigns",
        "runs",
        "rank_results",
        "run_epochs",
        "run_nodes",
        "monitor_samples",
        "run_status_history",
    }
    there = run_cli("--db", lab_history, "db", "copy", "--to", pg_url)
    assert there.exit_code == 0, there.err
    assert "warning: 4 run(s) are queued or running" in there.err
    assert _rows(pg_url) == before
    assert _raw_texts(pg_url) == _raw_texts(lab_history)
    report = [run_cli("--db", url, "report", "--format", "csv") for url in (lab_history, pg_url)]
    assert report[0].exit_code == 0 and report[0].out == report[1].out
    assert "FlagPerf" in report[0].out or "flagperf" in report[0].out

    again = run_cli("--db", lab_history, "db", "copy", "--to", pg_url)
    assert again.exit_code == 0
    assert f"copied to {there.out.splitlines()[-1].split(' copied to ')[1].split(':')[0]}" in (
        again.out
    )
    assert again.out.splitlines()[-1].endswith(": 0 row(s)")
    assert _rows(pg_url) == before

    back = f"sqlite:///{tmp_path / 'back.db'}"
    home = run_cli("--db", pg_url, "db", "copy", "--to", back)
    assert home.exit_code == 0, home.err
    assert _rows(back) == before
    assert _raw_texts(back) == _raw_texts(lab_history)


def test_a_new_run_after_the_copy_is_all_a_second_copy_adds(
    run_cli, lab_history, pg_url, fixture_runs, run_copy
):
    assert run_cli("--db", lab_history, "db", "copy", "--to", pg_url).exit_code == 0
    store = open_store(pg_url)
    try:
        with store.transaction() as conn:  # the next id the target hands out is past the copy
            conn.execute(Run.__table__.delete().where(Run.run_id == "nothing"))
    finally:
        store.close()
    extra = run_copy(RUN_1X1, "20260301-000000-1x1-nvidia")
    manifest = json.loads((extra / "manifest.json").read_text())
    manifest["run_id"] = extra.name
    (extra / "manifest.json").write_text(json.dumps(manifest))
    for rank in (extra / "ranks").glob("*.json"):
        doc = json.loads(rank.read_text())
        doc["run_id"] = extra.name
        rank.write_text(json.dumps(doc))
    assert run_cli("--db", lab_history, "ingest", extra).exit_code == 0
    second = run_cli("--db", lab_history, "db", "copy", "--to", pg_url)
    assert second.exit_code == 0, second.err
    counts = {line.split()[0]: int(line.split()[1]) for line in second.out.splitlines()[:-1]}
    assert counts["runs"] == 1 and counts["rank_results"] == 1
    assert counts["campaigns"] == 0 and counts["monitor_samples"] == 0
    assert _rows(pg_url) == _rows(lab_history)


def test_copying_a_store_onto_itself_is_refused(run_cli, lab_history):
    result = run_cli("--db", lab_history, "db", "copy", "--to", lab_history)
    assert result.exit_code == 2
    assert "source and target are the same store" in result.err
