"""A run the workload really trained, stored, exported as an MLPerf logging file, and passed by
the `mlperf-logging` package's compliance checker with the shipped rule file (CI runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.mlperf import records, run_checker
from tests.support.workload_fixtures import REAL_RUN_ID

pytestmark = pytest.mark.torch


def test_a_real_runs_export_passes_the_compliance_checker(
    sqlite_store: Any, sqlite_url: str, real_run_folder: Path, run_cli: Any, tmp_path: Path
) -> None:
    (summary,) = sqlite_store.ingest([real_run_folder])
    assert summary.status == "succeeded"
    out = tmp_path / "real.mllog"
    done = run_cli("--db", sqlite_url, "export", REAL_RUN_ID, "--mllog", out)
    assert done.exit_code == 0, done.err
    log = records(out.read_text().splitlines())
    values = {r["key"]: r["value"] for r in log if r["event_type"] == "POINT_IN_TIME"}
    # 4 training images, 2 evaluated, batch 2 on one rank, two epochs (--epochs 1, FlagPerf's rule)
    assert (values["train_samples"], values["eval_samples"], values["global_batch_size"]) == (
        4,
        2,
        2,
    )
    assert [r["metadata"]["epoch_num"] for r in log if r["key"] == "epoch_stop"] == [1, 2]
    assert [r["metadata"]["epoch_num"] for r in log if r["key"] == "eval_accuracy"] == [1, 2]
    checked = run_checker(out)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
