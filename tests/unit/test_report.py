"""Reading the history on SQLite: runs list/show, the seed's report, read-only SQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import ConfigError, QueryError
from orchestrator.reports.report import parse_since, render_report
from orchestrator.store.readonly import READ_ONLY_MESSAGE, run_query
from tests.support.store_fixtures import (
    ALL_RUNS,
    RUN_1X1,
    RUN_1X8,
    RUN_2X8,
    RUN_2X8_FAILED,
    table_snapshot,
)


@pytest.fixture
def history(sqlite_store: Any, sqlite_url: str, fixture_runs: Path) -> str:
    sqlite_store.ingest([fixture_runs / name for name in ALL_RUNS])
    return sqlite_url


def test_render_markdown_has_the_environment_block_then_the_seed_columns() -> None:
    env = [
        ("OS", ["Ubuntu 20.04.6 LTS"]),
        ("network", ["InfiniBand, 2 x 200 Gb/sec (4X HDR)"]),
        ("Docker", []),
    ]
    row = {
        "config": "MXC500 2x8",
        "precision": "fp32",
        "fix_hp": "bs=16, lr=0.08, epochs=2",
        "e2e_time": 856.49,
        "p_whole": 292.2137,
        "p_train": 380.98,
        "p_core": 513.47,
        "map": 0.18761,
        "mem": "37.1/64.0",
        "run_id": "r1",
    }
    text = render_report(env, [row], "markdown")
    assert text.splitlines()[:6] == [
        "#### Environment",
        "",
        "- OS: Ubuntu 20.04.6 LTS",
        "- network: InfiniBand, 2 x 200 Gb/sec (4X HDR)",
        "- Docker: not recorded",
        "",
    ]
    assert (
        "| config | precision | fix_hp | e2e_time (s) | p_whole (img/s) | p_train (img/s) "
        "| p_core (img/s) | mAP | mem (GiB) | run |" in text
    )
    # times to 0.1 s, throughputs to 3 significant digits, mAP to 3 decimals
    assert (
        "| MXC500 2x8 | fp32 | bs=16, lr=0.08, epochs=2 | 856.5 | 292 | 381 | 513 | 0.188 | 37.1/64.0 | r1 |"
        in text
    )


def test_the_mem_cell_says_whose_figure_it_is() -> None:
    device = {"config": "A100 1x8", "mem": "39.0/40.0", "mem_source": "device", "run_id": "d"}
    allocator = {"config": "A100 1x8", "mem": "33.7/40.0", "mem_source": "allocator"}
    text = render_report([], [device, {**allocator, "run_id": "a"}], "markdown")
    assert "| 39.0/40.0 (device) | d |" in text
    assert "| 33.7/40.0 (allocator) | a |" in text
    rows = list(csv.DictReader(io.StringIO(render_report([], [device], "csv"))))
    assert (rows[0]["mem"], rows[0]["mem_source"]) == ("39.0/40.0", "device")
    runs = json.loads(render_report([], [allocator], "json"))["runs"]
    assert (runs[0]["mem"], runs[0]["mem_source"], runs[0]["source"]) == (
        "33.7/40.0",
        "allocator",
        None,
    )


def test_a_run_without_device_memory_statistics_shows_n_a_cpu() -> None:
    row = {"config": "cpu 1x1", "p_core": 2.3456789, "e2e_time": 41.26, "mem": None, "run_id": "c"}
    text = render_report([], [row], "markdown")
    assert "| cpu 1x1 |  |  | 41.3 |  |  | 2.35 |  | n/a (cpu) | c |" in text
    unmeasured = render_report([], [{**row, "p_core": None}], "markdown")
    assert "n/a (cpu)" not in unmeasured  # a run without metrics has nothing to say about mem
    assert json.loads(render_report([], [row], "json"))["runs"][0]["mem"] is None


def test_render_csv_and_json_keep_full_precision() -> None:
    row = {"config": "A100 1x1", "p_core": 44.0531414, "map": None, "run_id": "r"}
    parsed = list(csv.DictReader(io.StringIO(render_report([], [row], "csv"))))
    assert parsed[0]["p_core"] == "44.0531414" and parsed[0]["map"] == ""
    doc = json.loads(render_report([("OS", ["x"])], [row], "json"))
    assert doc["environment"] == {"OS": ["x"]}
    assert doc["runs"][0]["p_core"] == 44.0531414


def test_parse_since() -> None:
    now = datetime(2026, 4, 1, tzinfo=timezone.utc)
    assert parse_since("2026-01-01") == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_since("90d", now) == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_since("2026-01-01T08:00:00+01:00") == datetime(2026, 1, 1, 7, tzinfo=timezone.utc)
    assert parse_since(None) is None
    with pytest.raises(ConfigError, match="--since 'last week' is not a date"):
        parse_since("last week")


def test_cli_runs_list_filters(run_cli: Any, history: str) -> None:
    everything = run_cli("--db", history, "runs", "list")
    assert everything.exit_code == 0, everything.err
    lines = everything.out.splitlines()
    positions = [
        next(i for i, line in enumerate(lines) if run in line) for run in reversed(ALL_RUNS)
    ]
    assert positions == sorted(positions)  # newest first

    failed = run_cli("--db", history, "runs", "list", "--status", "failed").out
    assert RUN_2X8_FAILED in failed and RUN_2X8 + " " not in failed
    metax_2x8 = run_cli(
        "--db", history, "runs", "list", "--vendor", "metax", "--topology", "2x8"
    ).out
    assert RUN_2X8 in metax_2x8 and RUN_1X8 not in metax_2x8
    recent = run_cli("--db", history, "runs", "list", "--since", "2026-01-14").out
    assert RUN_2X8 in recent and RUN_1X1 not in recent
    assert "no runs match" in run_cli("--db", history, "runs", "list", "--vendor", "ascend").out
    bad = run_cli("--db", history, "runs", "list", "--since", "yesterday")
    assert bad.exit_code == 2 and bad.err.startswith("error: --since 'yesterday' is not a date")


def test_cli_runs_show(run_cli: Any, history: str) -> None:
    shown = run_cli("--db", history, "runs", "show", "20260115")
    assert shown.exit_code == 0, shown.err
    out = shown.out
    for expected in (
        "status history",
        "nodes",
        "ranks",
        RUN_2X8_FAILED,
        "failure.rank",
        "DistBackendError",
        "Ubuntu 20.04.6 LTS",
        "InfiniBand, 2 x 200 Gb/sec (4X HDR)",
    ):
        assert expected in out
    ambiguous = run_cli("--db", history, "runs", "show", "2026011")
    assert ambiguous.exit_code == 2 and "is ambiguous" in ambiguous.err
    missing = run_cli("--db", history, "runs", "show", "nope")
    assert missing.exit_code == 2 and "no run 'nope'" in missing.err


def test_cli_report_shows_succeeded_runs_with_their_environment(run_cli: Any, history: str) -> None:
    result = run_cli("--db", history, "report", "--vendor", "metax")
    assert result.exit_code == 0, result.err
    out = result.out
    assert "- machine, accelerator: 8 x MetaX C500 64G" in out
    assert "- network: InfiniBand, 2 x 200 Gb/sec (4X HDR)" in out
    assert "- kernel: 5.4.0-26-generic" in out
    assert "| MXC500 1x8 | fp32 | bs=8, lr=0.0001, epochs=2 |" in out
    assert "| MXC500 2x8 | fp32 | bs=16, lr=0.08, epochs=2 |" in out
    assert RUN_2X8_FAILED not in out  # only succeeded runs without --run
    assert "A100" not in out

    chosen = run_cli("--db", history, "report", "--run", RUN_2X8_FAILED, "--format", "json")
    doc = json.loads(chosen.out)
    assert [r["run_id"] for r in doc["runs"]] == [RUN_2X8_FAILED]
    assert doc["runs"][0]["p_core"] is None

    rows = list(
        csv.DictReader(
            io.StringIO(
                run_cli("--db", history, "report", "--format", "csv", "--precision", "amp").out
            )
        )
    )
    assert [r["run_id"] for r in rows] == [RUN_1X1]


def test_report_framework_line_uses_the_image_wheel_when_recorded(
    run_cli: Any, history: str, sqlite_store: Any
) -> None:
    sqlite_store.record_image(
        {
            "tag": "orchestrator/faster-rcnn:metax-5f0c9e21a7d4",
            "image_id": "sha256:5f0c9e21a7d4" + "0" * 52,
            "wheels": [
                {
                    "filename": "torch-2.0.0+mc2.19.0.6-cp38-cp38-linux_x86_64.whl",
                    "sha256": "a" * 64,
                }
            ],
        }
    )
    out = run_cli("--db", history, "report", "--run", RUN_2X8).out
    assert "- framework: torch-2.0.0+mc2.19.0.6-cp38-cp38-linux_x86_64.whl" in out


def test_cli_query_formats(run_cli: Any, history: str) -> None:
    sql = "SELECT config, count(*) AS runs FROM seed_table WHERE status = 'succeeded' GROUP BY config ORDER BY config"
    table = run_cli("--db", history, "query", sql)
    assert table.exit_code == 0, table.err
    assert "MXC500 2x8" in table.out and "3 row(s)" in table.out
    as_csv = run_cli("--db", history, "query", sql, "--format", "csv").out
    assert as_csv.splitlines() == ["config,runs", "A100 1x1,1", "MXC500 1x8,1", "MXC500 2x8,1"]
    as_json = json.loads(run_cli("--db", history, "query", sql, "--format", "json").out)
    assert as_json[0] == {"config": "A100 1x1", "runs": 1}
    limited = run_cli(
        "--db",
        history,
        "query",
        "SELECT rank FROM rank_results",
        "--max-rows",
        "2",
        "--format",
        "csv",
    )
    assert limited.out.count("\n") == 3 and "output stopped at 2 rows" in limited.err


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM runs",
        "DROP TABLE rank_results",
        "DROP VIEW seed_table",
        "UPDATE runs SET p_core = 1e9",
        "INSERT INTO campaigns (campaign_id, name, spec, status, created_at) VALUES ('c', 'c', '{}', 'queued', '2026-01-01')",
        "CREATE TABLE t (x INTEGER)",
        "CREATE TEMP TABLE t (x INTEGER)",
        "PRAGMA query_only = 0",
        "ATTACH DATABASE '/tmp/orchestrator-attack.db' AS attack",
        "VACUUM INTO '/tmp/orchestrator-copy.db'",
        "WITH gone AS (SELECT 1) DELETE FROM runs",
    ],
)
def test_query_refuses_writes(history: str, sql: str, sqlite_store: Any) -> None:
    before = table_snapshot(sqlite_store)
    with pytest.raises(QueryError) as caught:
        run_query(history, sql)
    assert caught.value.message == READ_ONLY_MESSAGE
    assert table_snapshot(sqlite_store) == before
    assert not Path("/tmp/orchestrator-copy.db").exists()


def test_query_errors_are_one_line(run_cli: Any, history: str) -> None:
    syntax = run_cli("--db", history, "query", "SELEC * FROM runs")
    assert syntax.exit_code == 2 and syntax.err.count("\n") == 1
    assert 'SQL error: near "SELEC": syntax error' in syntax.err
    unknown = run_cli("--db", history, "query", "SELECT nope FROM runs")
    assert "SQL error: no such column: nope" in unknown.err
    several = run_cli("--db", history, "query", "SELECT 1; DELETE FROM runs")
    assert several.exit_code == 2 and "more than one statement" in several.err
    write = run_cli("--db", history, "query", "DELETE FROM runs")
    assert write.exit_code == 2
    assert write.err == (
        f"error: {READ_ONLY_MESSAGE} (use SELECT (or WITH ... SELECT); delete runs with "
        f"orchestrator --db {history} runs delete RUN... (or a selection such as --status failed "
        "--before DATE))\n"
    )


def test_config_history_view_orders_runs_and_tracks_change(
    history: str, sqlite_store: Any, run_copy: Any
) -> None:
    # A second 2x8 run of the same configuration, a day later and 10% slower in core time.
    folder = run_copy(RUN_2X8, "20260116-101500-2x8-metax")
    for path in [folder / "manifest.json", *sorted((folder / "ranks").glob("*.json"))]:
        doc = json.loads(path.read_text())
        doc["run_id"] = "20260116-101500-2x8-metax"
        if "timings" in doc:
            doc["timings"]["core_s"] *= 1.1
        else:
            for key in ("submitted_at", "started_at", "finished_at"):
                doc[key] = doc[key].replace("2026-01-14", "2026-01-16")
        path.write_text(json.dumps(doc))
    sqlite_store.ingest([folder])
    result = run_query(
        history,
        "SELECT run_id, run_number, p_core_change FROM config_history WHERE config = 'MXC500 2x8' ORDER BY run_number",
    )
    assert [r[:2] for r in result.rows] == [(RUN_2X8, 1), ("20260116-101500-2x8-metax", 2)]
    assert result.rows[0][2] is None
    assert result.rows[1][2] == pytest.approx(1 / 1.1 - 1, abs=1e-3)
