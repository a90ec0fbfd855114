"""`orchestrator import flagperf PATH`: FlagPerf's faster_rcnn result logs (tests/fixtures/flagperf/,
laid out and printed as FlagPerf's code does) into the store as runs with source flagperf, shown
by report beside native runs; bad or partial logs are one-line errors that write nothing."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from orchestrator.interchange.flagperf import FlagPerfLogError, read_logs
from orchestrator.store.models import RankResult, Run
from tests.support.store_fixtures import FLAGPERF_2X8, FLAGPERF_LOGS, RUN_1X8

LOGS = FLAGPERF_LOGS
CASE_1X8 = "faster_rcnn:pytorch_2.0:C500:1:8:1"
CASE_2X8 = "faster_rcnn:pytorch_2.0:C500:2:8:1"
ID_1X8 = "flagperf-20240611103000-C500-1x8-r1"
ID_2X8 = FLAGPERF_2X8
SAMPLES_1X8 = 117266 * 26  # FlagPerf's count: len(train set) per epoch trained
SAMPLES_2X8 = 117266 * 25


def test_the_logs_are_read_per_case_and_round_with_each_nodes_finished_line() -> None:
    one, two = read_logs(LOGS)
    assert (one.run_id, two.run_id) == (ID_1X8, ID_2X8)
    assert (one.case.key, one.case.hardware, one.case.topology) == (CASE_1X8, "C500", "1x8")
    assert (one.vendor, one.config_name) == ("metax-c500", "metax-c500:1x8")
    assert one.result.hparams is not None and two.result.hparams is not None
    assert (one.result.hparams["batch_size"], one.result.hparams["lr"]) == (2, 0.02)
    assert (two.result.hparams["batch_size"], two.result.hparams["lr"]) == (16, 0.08)
    (node,) = one.result.nodes
    assert (node.host, node.node_rank, node.log) == (
        "10.1.2.3",
        0,
        f"{CASE_1X8}/round1/10.1.2.3_noderank0/rank0.out.log",
    )
    assert (node.e2e_s, node.train_s, node.train_no_eval_s, node.core_s) == (
        13512.7,
        13120.4,
        12633.2,
        9532.1,
    )
    assert node.p_train == pytest.approx(SAMPLES_1X8 / 12633.2)
    assert node.trained_images == SAMPLES_1X8
    assert (node.map, node.converged) == (0.3612, True)
    assert one.started_at == datetime.fromtimestamp(1718073065.123, timezone.utc)  # INIT_START
    assert one.finished_at == datetime.fromtimestamp(1718073065.123 + 13512.7, timezone.utc)
    # the two-node case: node 1's line is read from rank8.out.log (its local rank 0)
    assert [(n.host, n.node_rank, n.core_s) for n in two.result.nodes] == [
        ("10.1.2.3", 0, 2655.3),
        ("10.1.2.4", 1, 2700.4),
    ]
    # any folder inside the logs names its round
    (again,) = read_logs(LOGS / CASE_2X8 / "round1" / "10.1.2.4_noderank1")
    assert again.run_id == ID_2X8


def _import(run_cli: Any, url: str, path: Path, runs: Path, *extra: str) -> Any:
    return run_cli("--db", url, "import", "flagperf", path, "--runs-dir", runs, *extra)


def test_an_imported_log_shows_in_report_beside_a_native_run(
    sqlite_store: Any, sqlite_url: str, fixture_runs: Path, run_cli: Any, tmp_path: Path
) -> None:
    sqlite_store.ingest([fixture_runs / RUN_1X8])  # a native MetaX C500 1x8 run
    done = _import(run_cli, sqlite_url, LOGS, tmp_path / "runs")
    assert done.exit_code == 0, done.err
    assert done.out.splitlines() == [
        f"{ID_1X8}: FlagPerf {CASE_1X8} round 1, p_train 241.3 img/s, mAP 0.361: stored",
        f"{ID_2X8}: FlagPerf {CASE_2X8} round 1, p_train 769.3 img/s, mAP 0.360: stored",
    ]
    with sqlite_store.reading() as conn:
        table = Run.__table__
        rows = {
            r["run_id"]: SimpleNamespace(**r)
            for r in conn.execute(select(table).where(table.c.source == "flagperf")).mappings()
        }
        ranks = conn.scalar(select(func.count()).select_from(RankResult))
    assert set(rows) == {ID_1X8, ID_2X8}
    one, two = rows[ID_1X8], rows[ID_2X8]
    assert (one.vendor, one.config_label, one.fix_hp, one.status) == (
        "metax-c500",
        "FlagPerf C500 1x8",
        "flagperf_epochs=true",  # FlagPerf's loop: max_epoch + 1 epochs
        "succeeded",
    )
    assert (one.e2e_time_s, one.map, one.global_images) == (13512.7, 0.3612, SAMPLES_1X8)
    assert one.p_core == pytest.approx(SAMPLES_1X8 / 9532.1)
    assert (one.mem_label, one.mem_source, one.epochs_completed) == (None, None, None)
    # two nodes, each timed by itself: the run is its slowest node, as for native ranks
    assert two.p_core == pytest.approx(SAMPLES_2X8 / 2700.4)
    assert two.p_train == pytest.approx(SAMPLES_2X8 / 3810.9)
    assert two.e2e_time_s == 4399.1
    assert two.manifest["imported"]["nodes"][1]["log"].endswith("rank8.out.log")
    assert ranks == 8  # the native run's only: an imported run has no rank files
    assert (tmp_path / "runs" / ID_1X8 / "logs" / "10.1.2.3.log").is_file()

    report = run_cli("--db", sqlite_url, "report")
    assert report.exit_code == 0, report.err
    lines = [line for line in report.out.splitlines() if line.startswith("| ")]
    native = next(line for line in lines if line.startswith("| MXC500 1x8 |"))
    flagperf = next(line for line in lines if line.startswith("| FlagPerf C500 1x8 |"))
    assert flagperf == (
        "| FlagPerf C500 1x8 | fp32 | flagperf_epochs=true | 13512.7 | 232 | 241 | 320 "
        "| 0.361 |  | 1 |  |"
    )
    assert "| 37.1/64.0 (allocator) |" in native
    shown = run_cli("--db", sqlite_url, "runs", "show", ID_2X8)
    assert shown.exit_code == 0 and "flagperf" in shown.out

    again = _import(run_cli, sqlite_url, LOGS, tmp_path / "runs")
    assert again.exit_code == 0 and again.out.count("unchanged (already in the store)") == 2
    refused = run_cli("--db", sqlite_url, "export", ID_1X8, "--mllog", tmp_path / "x.mllog")
    assert refused.exit_code == 2 and "imported from flagperf" in refused.err


def _copy_logs(tmp_path: Path) -> Path:
    target = tmp_path / "logs" / LOGS.name
    shutil.copytree(LOGS, target)
    return target


def _rank0(root: Path, case: str = CASE_1X8, node: str = "10.1.2.3_noderank0") -> Path:
    return root / case / "round1" / node / "rank0.out.log"


def _drop_finished(root: Path) -> None:
    log = _rank0(root)
    log.write_text("".join(ln for ln in log.read_text().splitlines(True) if "FINISHED" not in ln))


def _cut_finished(root: Path) -> None:
    log = _rank0(root)
    log.write_text(log.read_text()[:-60])


def _drop_a_number(root: Path) -> None:
    log = _rank0(root)
    log.write_text(log.read_text().replace('"throuhgput(ips)_no_eval": ', '"renamed": '))


def _drop_node(root: Path) -> None:
    shutil.rmtree(root / CASE_2X8 / "round1" / "10.1.2.4_noderank1")


def _drop_rank0_of_node1(root: Path) -> None:
    (root / CASE_2X8 / "round1" / "10.1.2.4_noderank1" / "rank8.out.log").unlink()


def _other_model(root: Path) -> None:
    (root / CASE_1X8).rename(root / "bert:pytorch_1.8:C500:1:8:1")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop_finished, "rank0.out.log: no FINISHED line: the run did not finish"),
        (_cut_finished, "rank0.out.log: line 17: the FINISHED line is cut short or not JSON"),
        (_drop_a_number, "the FINISHED line has no number 'throuhgput(ips)_no_eval'"),
        (_drop_node, "has the logs of node rank(s) [0], the case runs on 2 node(s) (missing: [1])"),
        (_drop_rank0_of_node1, "rank8.out.log is missing: FlagPerf's local rank 0 writes"),
        (_other_model, "is FlagPerf's bert, not faster_rcnn"),
    ],
)
def test_bad_or_partial_logs_are_one_line_errors_and_write_nothing(
    sqlite_store: Any, sqlite_url: str, run_cli: Any, tmp_path: Path, damage: Any, message: str
) -> None:
    root = _copy_logs(tmp_path)
    damage(root)  # one round damaged, the other intact: still nothing is imported
    runs = tmp_path / "runs"
    done = _import(run_cli, sqlite_url, root, runs)
    assert done.exit_code == 2
    assert done.out == ""
    assert done.err.startswith("error: ") and message in done.err, done.err
    assert done.err.count("\n") == 1 and "Traceback" not in done.err
    with sqlite_store.reading() as conn:
        assert conn.scalar(select(func.count()).select_from(Run)) == 0
    assert not runs.exists() or list(runs.iterdir()) == []


def test_a_folder_without_flagperf_logs_says_what_it_expected(
    sqlite_url: str, sqlite_store: Any, run_cli: Any, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _import(run_cli, sqlite_url, empty, tmp_path / "runs")
    assert done.exit_code == 2 and "no FlagPerf round folder" in done.err
    missing = _import(run_cli, sqlite_url, tmp_path / "nowhere", tmp_path / "runs")
    assert missing.exit_code == 2 and "is not a folder" in missing.err
    with pytest.raises(FlagPerfLogError, match="cannot tell the vendor of hardware 'X9'"):
        root = _copy_logs(tmp_path)
        (root / "flagperf_run.log").unlink()
        (root / CASE_1X8).rename(root / "faster_rcnn:pytorch_2.0:X9:1:8:1")
        read_logs(root / "faster_rcnn:pytorch_2.0:X9:1:8:1")


def test_the_imported_manifest_is_a_valid_run_folder_manifest(tmp_path: Path) -> None:
    from orchestrator.interchange.flagperf_folder import write_folder
    from orchestrator.runfolder.folder import read_run_folder

    one, _ = read_logs(LOGS)
    folder = read_run_folder(write_folder(one, "amp", tmp_path / one.run_id))
    manifest = folder.manifest
    assert (manifest.source, manifest.precision, manifest.topology) == ("flagperf", "amp", "1x8")
    assert manifest.imported == one.result and folder.ranks == ()
    doc = json.loads((tmp_path / one.run_id / "manifest.json").read_text())
    assert doc["imported"]["case"] == CASE_1X8 and doc["source"] == "flagperf"
