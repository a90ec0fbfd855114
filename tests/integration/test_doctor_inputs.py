"""A mistyped --data-dir, end to end on this machine (the embedded default cluster, no SSH):
submit refuses it at the preflight and names the `orchestrator doctor` command that checks the
same inputs; that command works (doctor takes --data-dir and --backbone-weights); the refused
run is stored as a failed run that never started, and `runs delete --not-started` removes it."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from orchestrator.store import open_store
from orchestrator.store.models import Run
from tests.support.store_fixtures import CliResult


def test_doctor_checks_the_data_dir_and_weights_given(
    run_cli: Callable[..., CliResult], tiny_coco: Path, tmp_path: Path
) -> None:
    typo = tmp_path / "cocoo"
    weights = tmp_path / "resnet50.pth"
    bad = run_cli(
        "doctor", "1x1", "--data-dir", str(typo), "--backbone-weights", str(weights),
        "--format", "json",
    )  # fmt: skip
    assert bad.exit_code == 3, bad.err
    checks = {c["check"]: c for c in json.loads(bad.out)["checks"]}
    assert checks["dataset"]["ok"] is False and checks["dataset"]["detail"].startswith(str(typo))
    assert checks["weights"] == {
        "node": "localhost",
        "check": "weights",
        "ok": False,
        "detail": f"{weights} does not exist",
    }
    good = run_cli("doctor", "1x1", "--data-dir", str(tiny_coco), "--format", "json")
    checks = {c["check"]: c for c in json.loads(good.out)["checks"]}
    assert (
        checks["dataset"]["ok"] is True
        and checks["dataset"]["detail"] == f"{tiny_coco} (COCO 2017 layout)"
    )


def test_a_mistyped_data_dir_names_the_doctor_command_and_is_easy_to_delete(
    run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'results.db'}"
    typo = tmp_path / "cocoo"
    submit = run_cli("--db", db, "submit", "1x1", "--data-dir", str(typo), "--set", "epochs=1")
    assert submit.exit_code != 0
    assert "dataset: " + str(typo) in submit.err
    doctor = shlex.join(
        ["orchestrator", "doctor", "1x1", "--nodes", "localhost", "--data-dir", str(typo)]
    )
    assert f"then check again: {doctor} --backbone-weights none" in submit.err
    # The remedy's command runs and finds the same problem.
    words = shlex.split(doctor)[1:] + ["--backbone-weights", "none", "--format", "json"]
    again = run_cli(*words)
    assert again.exit_code == 3
    assert [c["check"] for c in json.loads(again.out)["checks"] if not c["ok"]] == ["dataset"]
    with open_store(db) as store, store.reading() as conn:
        stored = conn.execute(select(Run.run_id, Run.status, Run.started_at)).all()
    assert [(status, started) for _, status, started in stored] == [("failed", None)]
    deleted = run_cli("--db", db, "runs", "delete", "--status", "failed", "--not-started", "--yes")
    assert deleted.exit_code == 0, deleted.err
    assert f"  {stored[0].run_id}  failed  " in deleted.err
    with open_store(db) as store, store.reading() as conn:
        assert conn.execute(select(Run.run_id)).all() == []
