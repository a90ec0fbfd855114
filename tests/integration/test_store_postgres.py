"""The results store on a real PostgreSQL server: migrations, ingest, lifecycle, history, read-only SQL.

Needs $ORCHESTRATOR_TEST_PG_URL (scripts/start-services.sh); each test gets a fresh database.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, inspect, select
from sqlalchemy.engine import make_url

from orchestrator.errors import IngestError, QueryError, SchemaOutOfDate, StoreError
from orchestrator.runfolder.folder import load_manifest
from orchestrator.store import downgrade_store, head_revision, open_store, upgrade_store
from orchestrator.store.engine import make_engine
from orchestrator.store.models import Base, RankResult, Run, RunNode, RunStatusChange
from orchestrator.store.readonly import READ_ONLY_MESSAGE, run_query
from tests.support.store_fixtures import (
    ALL_RUNS,
    FLAGPERF_2X8,
    FLAGPERF_LOGS,
    RUN_1X1,
    RUN_1X8,
    RUN_2X8,
    RUN_2X8_FAILED,
    TABLES,
    VIEWS,
    not_search_object,
    table_snapshot,
)

pytestmark = pytest.mark.postgres


def _schema(url: str) -> tuple[set[str], set[str]]:
    engine = make_engine(url)
    try:
        inspector = inspect(engine)
        return set(inspector.get_table_names()), set(inspector.get_view_names())
    finally:
        engine.dispose()


def test_migrations_up_down_up(pg_url: str) -> None:
    with pytest.raises(SchemaOutOfDate, match=r"revision none \(empty\)"):
        open_store(pg_url)
    assert upgrade_store(pg_url).after == head_revision()
    assert _schema(pg_url) == (TABLES, VIEWS)
    assert downgrade_store(pg_url, "base").after is None
    assert _schema(pg_url) == ({"alembic_version"}, set())
    upgrade_store(pg_url)
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": not_search_object}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
    open_store(pg_url).close()


def test_wrong_password_never_shows_the_password(pg_url: str) -> None:
    url = make_url(pg_url).set(password="Wr0ngPassw0rd")
    text = url.render_as_string(hide_password=False)
    for call in (
        lambda: open_store(text),
        lambda: upgrade_store(text),
        lambda: run_query(text, "SELECT 1"),
    ):
        with pytest.raises(StoreError) as caught:
            call()
        line = caught.value.one_line()
        assert "Wr0ngPassw0rd" not in line
        assert ":***@" in line


def test_ingest_metrics_idempotency_and_documents(pg_store: Any, fixture_runs: Path) -> None:
    folders = [fixture_runs / name for name in ALL_RUNS]
    summaries = pg_store.ingest(folders)
    assert [s.changed for s in summaries] == [True] * 4
    with pg_store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(RankResult)) == 1 + 8 + 16 + 9
        run = conn.execute(select(Run).where(Run.run_id == RUN_2X8)).mappings().one()
        core = conn.exec_driver_sql(
            "SELECT (document->'timings'->>'core_s')::float FROM rank_results "
            "WHERE run_id = %(run)s AND rank = 5",
            {"run": RUN_2X8},
        ).scalar()
    docs = [
        json.loads(p.read_text()) for p in sorted((fixture_runs / RUN_2X8 / "ranks").glob("*.json"))
    ]
    images = sum(d["samples"]["rank_images"] for d in docs)
    assert run["p_core"] == pytest.approx(images / max(d["timings"]["core_s"] for d in docs))
    assert run["mem_label"] == "37.1/64.0"
    assert run["submitted_at"].tzinfo is not None
    assert core == docs[5]["timings"]["core_s"]
    with pg_store.engine.connect() as conn:
        stored = conn.exec_driver_sql(
            "SELECT document::text FROM rank_results WHERE run_id = %(run)s AND rank = 5",
            {"run": RUN_2X8},
        ).scalar()
    assert stored == (fixture_runs / RUN_2X8 / "ranks" / "rank-00005.json").read_text()

    before = table_snapshot(pg_store)
    assert [s.changed for s in pg_store.ingest(folders)] == [False] * 4
    assert table_snapshot(pg_store) == before


def test_bad_folder_and_database_failure_write_nothing(
    pg_store: Any, fixture_runs: Path, run_copy: Any
) -> None:
    bad = run_copy(RUN_2X8)
    doc = json.loads((bad / "ranks" / "rank-00003.json").read_text())
    doc["samples"]["global_images"] += 16
    (bad / "ranks" / "rank-00003.json").write_text(json.dumps(doc))
    with pytest.raises(IngestError, match=r"rank-00003.json: field samples.global_images"):
        pg_store.ingest([fixture_runs / RUN_1X8, bad])
    assert table_snapshot(pg_store)["runs"] == []

    with pg_store.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$ LANGUAGE plpgsql"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER boom BEFORE INSERT ON run_epochs FOR EACH ROW EXECUTE FUNCTION boom()"
        )
    with pytest.raises(StoreError, match="boom"):
        pg_store.ingest([fixture_runs / RUN_1X8, fixture_runs / RUN_2X8])
    written = {name: rows for name, rows in table_snapshot(pg_store).items() if rows}
    assert list(written) == ["derived_versions"]  # the schema's own record, from the upgrade


def test_lifecycle_from_provisional_row_to_published_run(pg_store: Any, run_copy: Any) -> None:
    folder = run_copy(RUN_2X8)
    manifest = load_manifest(folder / "manifest.json")
    pg_store.create_run(replace(manifest, status="running", finished_at=None))
    env = {"os": "Ubuntu 20.04.6 LTS", "driver": "2.2.0", "ib": []}
    pg_store.record_environment(RUN_2X8, "me-node2", 1, env)
    (folder / "nodes" / "me-node2" / "env.json").unlink()
    assert pg_store.publish(folder).metrics.p_core > 0
    pg_store.set_status(RUN_2X8, "succeeded")  # e.g. a repeated final report: history grows
    with pg_store.engine.connect() as conn:
        history = (
            conn.execute(
                select(RunStatusChange.status)
                .where(RunStatusChange.run_id == RUN_2X8)
                .order_by(RunStatusChange.id)
            )
            .scalars()
            .all()
        )
        node_env = conn.scalar(
            select(RunNode.env).where(RunNode.run_id == RUN_2X8, RunNode.node_rank == 1)
        )
    assert history == ["running", "succeeded", "succeeded"]
    assert node_env == env
    pg_store.record_image(
        {
            "tag": "t",
            "image_id": "sha256:" + "c" * 64,
            "wheels": [{"filename": "torch-2.0.whl", "sha256": "d" * 64}],
        }
    )
    pg_store.record_image({"tag": "t2", "image_id": "sha256:" + "c" * 64, "wheels": []})
    assert table_snapshot(pg_store)["images"][0][:2] == ("sha256:" + "c" * 64, "t2")
    assert table_snapshot(pg_store)["image_wheels"] == []


def test_cli_upgrade_ingest_list_report_query(
    run_cli: Any, pg_url: str, pg_reader_url: str, fixture_runs: Path
) -> None:
    assert run_cli("--db", pg_url, "db", "upgrade").exit_code == 0
    shown = run_cli("--db", pg_url, "db", "current").out
    assert "up to date" in shown
    assert f":{make_url(pg_url).password}@" not in shown and ":***@" in shown
    ingest = run_cli("--db", pg_url, "ingest", *[str(fixture_runs / n) for n in ALL_RUNS])
    assert ingest.exit_code == 0, ingest.err
    listed = run_cli("--db", pg_url, "runs", "list", "--topology", "2x8").out
    assert RUN_2X8 in listed and RUN_2X8_FAILED in listed and RUN_1X8 not in listed
    report = run_cli("--db", pg_url, "report", "--vendor", "metax").out
    assert "- network: InfiniBand, 2 x 200 Gb/sec (4X HDR)" in report
    assert "| MXC500 2x8 | fp32 | bs=16, lr=0.08, epochs=2 |" in report
    sql = "SELECT config, count(*) AS runs FROM seed_table WHERE config LIKE 'MX%' GROUP BY config ORDER BY config"
    out = run_cli("--db", pg_url, "--read-db", pg_reader_url, "query", sql, "--format", "csv").out
    assert list(csv.reader(io.StringIO(out))) == [
        ["config", "runs"],
        ["MXC500 1x8", "1"],
        ["MXC500 2x8", "2"],
    ]
    show = run_cli("--db", pg_url, "runs", "show", RUN_1X1)
    assert show.exit_code == 0 and "A100" in show.out


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM runs",
        "DROP TABLE rank_results CASCADE",
        "UPDATE runs SET p_core = 1e9",
        "CREATE TABLE t (x integer)",
        "SELECT nextval('run_status_history_id_seq')",
        "WITH gone AS (DELETE FROM runs RETURNING run_id) SELECT count(*) FROM gone",
        "DO $$ BEGIN DELETE FROM rank_results; END $$",
    ],
)
def test_query_writes_are_refused_by_postgres(
    pg_store: Any, pg_reader_url: str, fixture_runs: Path, sql: str
) -> None:
    pg_store.ingest([fixture_runs / RUN_1X8])
    before = table_snapshot(pg_store)
    with pytest.raises(QueryError) as caught:
        run_query(pg_reader_url, sql)
    # The READ ONLY transaction refuses first, or the SELECT-only role's missing right (nextval).
    denied = "refused by the database: permission denied for sequence run_status_history_id_seq"
    assert caught.value.message == (denied if "nextval" in sql else READ_ONLY_MESSAGE)
    assert table_snapshot(pg_store) == before


def test_query_cannot_escape_the_read_only_transaction(
    pg_store: Any, pg_reader_url: str, fixture_runs: Path
) -> None:
    pg_store.ingest([fixture_runs / RUN_1X8])
    before = table_snapshot(pg_store)
    for sql in (
        "COMMIT; DELETE FROM runs",
        "SET TRANSACTION READ WRITE; DELETE FROM runs",
        "ROLLBACK; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; DELETE FROM runs",
    ):
        with pytest.raises(QueryError, match="more than one statement"):
            run_query(pg_reader_url, sql)
    # One statement that changes the session: harmless, the connection is thrown away.
    run_query(pg_reader_url, "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
    with pytest.raises(QueryError, match="read-only"):
        run_query(pg_reader_url, "DELETE FROM runs")
    assert table_snapshot(pg_store) == before


def test_query_syntax_errors_and_percent_signs(
    pg_store: Any, pg_reader_url: str, fixture_runs: Path
) -> None:
    pg_store.ingest([fixture_runs / RUN_1X8])
    with pytest.raises(QueryError) as caught:
        run_query(pg_reader_url, "SELEC 1")
    assert caught.value.one_line().startswith('SQL error: syntax error at or near "SELEC"')
    assert "\n" not in caught.value.one_line()
    result = run_query(pg_reader_url, "SELECT run_id FROM runs WHERE run_id LIKE '2026%'")
    assert result.rows == [(RUN_1X8,)]


def test_flagperf_import_and_mllog_export_on_postgres(
    run_cli: Any, pg_url: str, pg_reader_url: str, fixture_runs: Path, tmp_path: Path
) -> None:
    assert run_cli("--db", pg_url, "db", "upgrade").exit_code == 0
    assert run_cli("--db", pg_url, "ingest", str(fixture_runs / RUN_2X8)).exit_code == 0
    imported = run_cli(
        "--db", pg_url, "import", "flagperf", FLAGPERF_LOGS, "--runs-dir", tmp_path / "runs"
    )
    assert imported.exit_code == 0, imported.err
    report = run_cli("--db", pg_url, "report", "--topology", "2x8").out
    assert "| MXC500 2x8 | fp32 | bs=16, lr=0.08, epochs=2 |" in report
    assert "| FlagPerf C500 2x8 | fp32 | bs=16, lr=0.08, flagperf_epochs=true | 4399.1 |" in report
    sql = "SELECT source, mem_source, count(*) FROM seed_table GROUP BY source, mem_source ORDER BY source"
    out = run_cli("--db", pg_url, "--read-db", pg_reader_url, "query", sql, "--format", "csv").out
    assert list(csv.reader(io.StringIO(out)))[1:] == [
        ["flagperf", "", "2"],
        ["orchestrator", "allocator", "1"],
    ]
    shown = run_cli("--db", pg_url, "runs", "show", FLAGPERF_2X8)
    assert shown.exit_code == 0 and "flagperf" in shown.out
    exported = run_cli("--db", pg_url, "export", RUN_2X8, "--mllog", tmp_path / "x.mllog")
    assert exported.exit_code == 0, exported.err
    assert (tmp_path / "x.mllog").read_text().count(":::MLLOG ") == 36


def test_fabric_and_warnings_of_a_socket_fallback_run_on_postgres(
    pg_store: Any, pg_url: str, run_copy: Any, run_cli: Any
) -> None:
    nccl = Path(__file__).resolve().parents[1] / "fixtures" / "nccl" / "socket-2x8"
    folder = run_copy(RUN_2X8)
    manifest = json.loads((folder / "manifest.json").read_text())
    for node in manifest["nodes"]:
        node["ib_hcas"] = ["mlx5_0", "mlx5_1"]
        (folder / "nodes" / node["name"] / "nccl.log").write_text(
            (nccl / f"{node['name']}.log").read_text()
        )
    (folder / "manifest.json").write_text(json.dumps(manifest))
    pg_store.ingest([folder])
    with pg_store.engine.connect() as conn:
        # JSONB: the admins' operators work on the per-node record
        devices = conn.exec_driver_sql(
            "SELECT n->>'node', n->'devices'->>0 FROM runs, jsonb_array_elements(fabric->'nodes') n "
            "WHERE fabric_transport = 'socket' ORDER BY 1"
        ).all()
        warnings = conn.scalar(select(Run.warnings).where(Run.run_id == RUN_2X8))
    assert devices == [("me-node1", "eth0:192.168.0.11<0>"), ("me-node2", "eth0:192.168.0.12<0>")]
    assert [w.split(":")[0] for w in warnings] == ["node me-node1", "node me-node2"]
    report = run_cli("--db", pg_url, "report", "--run", RUN_2X8)
    assert report.exit_code == 0, report.err
    assert "- ranks talked (NCCL): socket (eth0); intra-node SHM\n" in report.out
    assert f"- {RUN_2X8}: {warnings[0]}\n" in report.out


def test_migration_0005_keeps_runs_and_goes_down_to_0004(pg_url: str, fixture_runs: Path) -> None:
    upgrade_store(pg_url, "0004")
    upgrade_store(pg_url)
    with open_store(pg_url) as store:
        store.ingest([fixture_runs / RUN_1X8])
    assert downgrade_store(pg_url, "0004").after == "0004"
    engine = make_engine(pg_url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("runs")}
        with engine.connect() as conn:
            kept = conn.exec_driver_sql("SELECT run_id FROM runs").scalars().all()
    finally:
        engine.dispose()
    assert "fabric" not in columns and "warnings" not in columns and "mem_source" in columns
    assert kept == [RUN_1X8]
    assert upgrade_store(pg_url).after == head_revision()
