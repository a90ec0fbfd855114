"""MLPerf logging export of stored runs: the lines built from a recorded run folder, and the
`mlperf-logging` package's real compliance checker with the shipped rule file, which passes the
export and refuses broken ones. A run the workload really wrote: tests/integration/
test_mllog_export.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from orchestrator.interchange import mllog
from tests.support.mlperf import records, run_checker
from tests.support.store_fixtures import RUN_2X8, RUN_2X8_FAILED


@pytest.fixture
def exported(sqlite_store: Any, sqlite_url: str, fixture_runs: Path, run_cli: Any, tmp_path: Path):
    sqlite_store.ingest([fixture_runs / RUN_2X8, fixture_runs / RUN_2X8_FAILED])

    def export(run: str) -> tuple[Path, list[dict[str, Any]]]:
        out = tmp_path / f"{run}.mllog"
        done = run_cli("--db", sqlite_url, "export", run, "--mllog", out)
        assert done.exit_code == 0, done.err
        assert "mlperf_logging.compliance_checker" in done.err  # how to check it
        return out, records(out.read_text().splitlines())

    return export


def test_a_stored_run_becomes_mllog_lines_from_its_rank_files(exported: Any) -> None:
    _, log = exported(RUN_2X8)
    rank0 = json.loads(
        (
            Path(__file__).parents[1] / "fixtures" / "runs" / RUN_2X8 / "ranks" / "rank-00000.json"
        ).read_text()
    )
    t = rank0["timings"]
    keys = [r["key"] for r in log]
    assert keys[:6] == [
        "submission_benchmark",
        "submission_org",
        "submission_division",
        "submission_status",
        "submission_platform",
        "cache_clear",
    ]
    values = {r["key"]: r["value"] for r in log if r["event_type"] == "POINT_IN_TIME"}
    assert values["submission_benchmark"] == "faster_rcnn"
    assert values["submission_org"] == "metax-lab"  # the run's cluster
    assert values["submission_platform"] == "2x8 MetaX C500"
    assert values["global_batch_size"] == 16 * 16
    assert values["opt_base_learning_rate"] == 0.08
    assert values["opt_learning_rate_decay_steps"] == [16, 22]
    assert values["opt_learning_rate_warmup_steps"] == 457  # min(1000, 458 - 1)
    assert values["eval_samples"] == 5000
    time_of = {(r["key"], r["metadata"].get("epoch_num")): r["time_ms"] for r in log}
    start = round(t["start_unix"] * 1000)
    assert time_of[("init_start", None)] == start
    assert time_of[("init_stop", None)] == time_of[("run_start", None)]
    assert time_of[("run_start", None)] == round((t["start_unix"] + t["init_s"]) * 1000)
    assert time_of[("run_stop", None)] == round(
        (t["start_unix"] + t["init_s"] + t["train_s"]) * 1000
    )
    times = [r["time_ms"] for r in log]
    assert times == sorted(times)  # epochs and evaluations laid end to end inside the run
    accuracy = [
        (r["metadata"]["epoch_num"], r["value"]) for r in log if r["key"] == "eval_accuracy"
    ]
    assert accuracy == [(1, 0.118), (2, 0.188)]  # each epoch's mAP, epochs counted from 1
    (stop,) = [r for r in log if r["key"] == "run_stop"]
    assert stop["metadata"]["status"] == "aborted"  # 0.188 never reached the 0.36 target


def test_the_compliance_checker_passes_the_export(exported: Any) -> None:
    path, _ = exported(RUN_2X8)
    done = run_checker(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def _rewrite(path: Path, change: Any) -> Path:
    log = [r for r in records(path.read_text().splitlines())]
    broken = path.with_name("broken-" + path.name)
    broken.write_text("".join(mllog.PREFIX + json.dumps(r) + "\n" for r in change(log)))
    return broken


def test_the_checker_refuses_an_export_without_run_stop(exported: Any) -> None:
    path, _ = exported(RUN_2X8)
    broken = _rewrite(path, lambda log: [r for r in log if r["key"] != "run_stop"])
    done = run_checker(broken)
    assert done.returncode == 1
    assert "Required EXACTLY_ONE occurrence of 'run_stop' but found 0" in done.stdout + done.stderr


def test_the_checker_refuses_success_below_the_target_and_epochs_out_of_order(
    exported: Any,
) -> None:
    path, _ = exported(RUN_2X8)

    def claim_success(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in log:
            if r["key"] == "run_stop":
                r["metadata"]["status"] = "success"
        return log

    assert run_checker(_rewrite(path, claim_success)).returncode == 1

    def skip_first_epoch(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for r in log:
            if "epoch_num" in r["metadata"]:
                r["metadata"]["epoch_num"] += 1
        return log

    assert run_checker(_rewrite(path, skip_first_epoch)).returncode == 1


def test_the_rule_file_and_the_builder_share_the_target() -> None:
    text = mllog.RULES_FILE.read_text(encoding="utf-8")
    assert f"'target_accuracy': {mllog.TARGET_MAP}," in text
    assert "enqueue_config" not in text  # self-contained: the benchmark is not one of MLPerf's


def test_a_failed_run_exports_as_aborted(exported: Any) -> None:
    _, log = exported(RUN_2X8_FAILED)
    (stop,) = [r for r in log if r["key"] == "run_stop"]
    assert stop["metadata"]["status"] == "aborted"


def test_runs_that_cannot_be_exported_are_one_line_errors() -> None:
    run = {"run_id": "r1", "source": "orchestrator", "status": "failed", "world_size": 1}
    with pytest.raises(mllog.MllogError, match="run r1 has no rank files in the store"):
        mllog.build(run, [], "lab")
    with pytest.raises(mllog.MllogError, match="was imported from flagperf"):
        mllog.build({**run, "source": "flagperf"}, [], "lab")
