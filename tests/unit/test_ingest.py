"""`orchestrator ingest` into SQLite: stored rows, idempotency, all-or-nothing, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from orchestrator.errors import IngestError, StoreError
from orchestrator.store.models import RankResult, Run, RunEpoch, RunNode, RunStatusChange
from tests.support.store_fixtures import (
    ALL_RUNS,
    RUN_1X1,
    RUN_1X8,
    RUN_2X8,
    RUN_2X8_FAILED,
    table_snapshot,
)


def _count(store: Any, model: Any, **where: Any) -> int:
    query = select(func.count()).select_from(model)
    for name, value in where.items():
        query = query.where(getattr(model, name) == value)
    with store.engine.connect() as conn:
        return int(conn.scalar(query))


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc, indent=2))


def test_ingest_stores_runs_ranks_epochs_nodes_and_history(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    summaries = sqlite_store.ingest([fixture_runs / name for name in ALL_RUNS])
    assert [s.run_id for s in summaries] == list(ALL_RUNS)
    assert all(s.changed for s in summaries)
    assert _count(sqlite_store, Run) == 4
    assert _count(sqlite_store, RankResult, run_id=RUN_2X8) == 16
    assert _count(sqlite_store, RankResult, run_id=RUN_2X8_FAILED) == 9  # what the failed run left
    assert _count(sqlite_store, RunNode, run_id=RUN_2X8) == 2
    assert _count(sqlite_store, RunEpoch, run_id=RUN_2X8) == 2
    assert _count(sqlite_store, RunStatusChange, run_id=RUN_2X8) == 3  # queued, running, succeeded


def test_stored_metrics_follow_the_documented_definitions(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    sqlite_store.ingest([fixture_runs / RUN_2X8])
    docs = [
        json.loads(p.read_text()) for p in sorted((fixture_runs / RUN_2X8 / "ranks").glob("*.json"))
    ]
    images = sum(d["samples"]["rank_images"] for d in docs)
    with sqlite_store.engine.connect() as conn:
        run = conn.execute(select(Run).where(Run.run_id == RUN_2X8)).mappings().one()
    assert run["global_images"] == images
    assert run["e2e_time_s"] == pytest.approx(max(d["timings"]["e2e_s"] for d in docs))
    assert run["p_whole"] == pytest.approx(images / max(d["timings"]["train_s"] for d in docs))
    assert run["p_train"] == pytest.approx(
        images / max(d["timings"]["train_no_eval_s"] for d in docs)
    )
    assert run["p_core"] == pytest.approx(images / max(d["timings"]["core_s"] for d in docs))
    assert run["map"] == docs[0]["eval"]["map"]
    assert run["mem_used_bytes"] == max(d["memory"]["peak_reserved_bytes"] for d in docs)
    assert run["mem_label"] == "37.1/64.0"
    assert run["fix_hp"] == "bs=16, lr=0.08, epochs=2"
    assert run["config_label"] == "MXC500 2x8"
    assert run["status"] == "succeeded" and run["reason"] is None


def test_rank_documents_are_kept_byte_for_byte(sqlite_store: Any, fixture_runs: Path) -> None:
    sqlite_store.ingest([fixture_runs / RUN_1X8])
    path = fixture_runs / RUN_1X8 / "ranks" / "rank-00003.json"
    with sqlite_store.engine.connect() as conn:
        stored = conn.exec_driver_sql(
            "SELECT document FROM rank_results WHERE run_id = ? AND rank = 3", (RUN_1X8,)
        ).scalar()
        core = conn.exec_driver_sql(
            "SELECT json_extract(document, '$.timings.core_s') FROM rank_results WHERE run_id = ? AND rank = 3",
            (RUN_1X8,),
        ).scalar()
    assert stored == path.read_text()
    assert core == json.loads(path.read_text())["timings"]["core_s"]


def test_failed_run_is_stored_with_its_reason_and_no_metrics(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    sqlite_store.ingest([fixture_runs / RUN_2X8_FAILED])
    with sqlite_store.engine.connect() as conn:
        run = conn.execute(select(Run).where(Run.run_id == RUN_2X8_FAILED)).mappings().one()
        ranks = conn.execute(
            select(RankResult.rank, RankResult.status, RankResult.error_type).where(
                RankResult.run_id == RUN_2X8_FAILED
            )
        ).all()
        last = conn.execute(
            select(RunStatusChange.status, RunStatusChange.reason)
            .where(RunStatusChange.run_id == RUN_2X8_FAILED)
            .order_by(RunStatusChange.id.desc())
        ).first()
    assert run["status"] == "failed"
    assert run["reason"].startswith("rank 11 on me-node2 exited with code 1")
    assert run["failure"]["rank"] == 11
    assert run["p_core"] is None and run["map"] is None
    assert sorted(r.rank for r in ranks) == [0, 1, 2, 3, 4, 5, 6, 7, 11]
    assert {r.status for r in ranks} == {"failed"}
    assert last is not None and last.status == "failed" and last.reason == run["reason"]


def test_ingesting_the_same_folders_twice_changes_nothing(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    folders = [fixture_runs / name for name in ALL_RUNS]
    sqlite_store.ingest(folders)
    before = table_snapshot(sqlite_store)
    again = sqlite_store.ingest(folders)
    assert [s.changed for s in again] == [False] * 4
    assert table_snapshot(sqlite_store) == before


def test_a_changed_folder_replaces_the_run_and_its_ranks(
    sqlite_store: Any, run_copy: Callable[..., Path]
) -> None:
    folder = run_copy(RUN_1X8)
    sqlite_store.ingest([folder])
    _edit(folder / "ranks" / "rank-00000.json", lambda d: d["eval"].update(map=0.367))
    summary = sqlite_store.publish(folder)
    assert summary.changed and summary.metrics.map == 0.367
    assert _count(sqlite_store, RankResult, run_id=RUN_1X8) == 8
    # Same status, but the replacement of published content is itself a row of the history.
    assert _count(sqlite_store, RunStatusChange, run_id=RUN_1X8) == 4
    with sqlite_store.engine.connect() as conn:
        last = conn.scalars(
            select(RunStatusChange.reason)
            .where(RunStatusChange.run_id == RUN_1X8)
            .order_by(RunStatusChange.id.desc())
        ).first()
    assert last.startswith("replaced by a new publish of its run folder (digest ")
    assert last.endswith(" -> 0.367)") and ": map " in last


def test_one_bad_folder_means_nothing_is_written(
    sqlite_store: Any, fixture_runs: Path, run_copy: Callable[..., Path]
) -> None:
    bad = run_copy(RUN_2X8)
    _edit(bad / "ranks" / "rank-00007.json", lambda d: d["timings"].pop("core_s"))
    with pytest.raises(IngestError) as caught:
        sqlite_store.ingest([fixture_runs / RUN_1X8, bad])
    assert "rank-00007.json" in caught.value.message
    assert "timings.core_s" in caught.value.message
    assert _count(sqlite_store, Run) == 0


def test_a_database_failure_mid_ingest_rolls_everything_back(
    sqlite_store: Any, fixture_runs: Path
) -> None:
    # A trigger makes the database refuse the last table the ingest writes: runs, ranks, nodes
    # and history rows written before it in the same transaction must all disappear.
    sqlite_store.ingest([fixture_runs / RUN_1X8])
    before = table_snapshot(sqlite_store)
    with sqlite_store.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER boom BEFORE INSERT ON run_epochs BEGIN SELECT RAISE(ABORT, 'boom'); END"
        )
    with pytest.raises(StoreError) as caught:
        sqlite_store.ingest([fixture_runs / RUN_2X8, fixture_runs / RUN_1X1])
    assert "boom" in caught.value.message and "nothing was written" in (caught.value.remedy or "")
    assert table_snapshot(sqlite_store) == before


RUN_2X8_RANK = f"{RUN_2X8}/ranks/rank-00005.json"


@pytest.mark.parametrize(
    ("path", "change", "expected"),
    [
        (RUN_2X8_RANK, lambda d: d["timings"].pop("core_s"), "field timings.core_s: is missing"),
        (
            RUN_2X8_RANK,
            lambda d: d["samples"].update(rank_images="many"),
            "field samples.rank_images: expected int",
        ),
        (
            RUN_2X8_RANK,
            lambda d: d["samples"].update(global_images=1),
            "field samples.global_images: says 1",
        ),
        (RUN_2X8_RANK, lambda d: d.update(run_id="another-run"), "field run_id: is 'another-run'"),
        (RUN_2X8_RANK, lambda d: d["identity"].update(rank=6), "field identity.rank: is 6"),
        (
            RUN_2X8_RANK,
            lambda d: d["config"].update(precision="amp"),
            "field config.precision: is 'amp'",
        ),
        (
            RUN_2X8_RANK,
            lambda d: d.update(schema_version=3),
            "field schema_version: unsupported version 3",
        ),
        (
            RUN_2X8_RANK,
            lambda d: d.update(status="failed", error={"type": "X", "message": "y"}),
            "field status: is 'failed'",
        ),
        (f"{RUN_2X8}/manifest.json", lambda d: d.pop("vendor"), "field vendor: is missing"),
        (
            f"{RUN_2X8}/manifest.json",
            lambda d: d.update(status="exploded"),
            "field status: 'exploded' is not one of",
        ),
        (
            f"{RUN_2X8}/manifest.json",
            lambda d: d.update(nnodes=3),
            "field topology: '2x8' disagrees with nnodes=3",
        ),
        (
            f"{RUN_2X8}/manifest.json",
            lambda d: d.update(submitted_at="2026-01-14T10:12:00"),
            "field submitted_at: '2026-01-14T10:12:00' has no time zone",
        ),
        (
            f"{RUN_2X8}/manifest.json",
            lambda d: d["hparams"].update(lr=0.1),
            "field hparams.lr: expected str",
        ),
        (
            f"{RUN_2X8}/manifest.json",
            lambda d: d.update(campaign_id="c-404"),
            "field campaign_id: campaign 'c-404' is not in this store",
        ),
        (
            f"{RUN_2X8}/nodes/me-node2/env.json",
            lambda d: d.update(accelerator_count="eight"),
            "field accelerator_count: expected int",
        ),
    ],
)
def test_a_bad_file_gives_one_line_naming_file_and_field(
    sqlite_store: Any,
    run_copy: Callable[..., Path],
    path: str,
    change: Callable[[dict[str, Any]], None],
    expected: str,
) -> None:
    folder = run_copy(RUN_2X8)
    target = folder.parent / path
    _edit(target, change)
    with pytest.raises(IngestError) as caught:
        sqlite_store.ingest([folder])
    line = caught.value.one_line()
    assert str(target) in line
    assert expected in line
    assert "\n" not in line
    assert _count(sqlite_store, Run) == 0


def _failed_without_error(doc: dict[str, Any]) -> None:
    doc["status"] = "failed"
    doc.pop("error", None)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.pop("identity"), "field identity: is missing"),
        (lambda d: d.update(identity=[0, 16]), "field identity: expected an object"),
        (lambda d: d.update(identity=None), "field identity: expected an object"),
        (lambda d: _failed_without_error(d), "field error: is missing"),
        (
            lambda d: d.update(status="failed", error="it broke"),
            "field error: expected an object",
        ),
    ],
)
def test_a_missing_object_field_is_missing_not_of_the_wrong_type(
    sqlite_store: Any,
    run_copy: Callable[..., Path],
    change: Callable[[dict[str, Any]], None],
    problem: str,
) -> None:
    folder = run_copy(RUN_2X8)
    target = folder / "ranks" / "rank-00005.json"
    _edit(target, change)
    with pytest.raises(IngestError) as caught:
        sqlite_store.ingest([folder])
    assert caught.value.one_line() == (
        f"{target}: {problem} (fix the file; docs/run-folder.md describes every field)"
    )
    assert _count(sqlite_store, Run) == 0


def test_missing_rank_file_of_a_succeeded_run(
    sqlite_store: Any, run_copy: Callable[..., Path]
) -> None:
    folder = run_copy(RUN_2X8)
    (folder / "ranks" / "rank-00012.json").unlink()
    with pytest.raises(
        IngestError, match=r"ranks/rank-00012.json missing.*needs all 16 rank files"
    ):
        sqlite_store.ingest([folder])


def test_invalid_json_and_nan_are_refused(sqlite_store: Any, run_copy: Callable[..., Path]) -> None:
    folder = run_copy(RUN_1X8)
    rank = folder / "ranks" / "rank-00002.json"
    rank.write_text(rank.read_text()[:-40])
    with pytest.raises(IngestError, match=r"rank-00002.json: not valid JSON"):
        sqlite_store.ingest([folder])
    rank.write_text(
        (run_copy(RUN_1X8, "other") / "ranks" / "rank-00002.json")
        .read_text()
        .replace('"loss": 1.', '"loss": NaN, "x": 1.', 1)
    )
    with pytest.raises(
        IngestError, match=r"rank-00002.json: not valid JSON \(NaN is not valid JSON"
    ):
        sqlite_store.ingest([folder])


def test_env_folder_for_a_node_not_in_the_manifest(
    sqlite_store: Any, run_copy: Callable[..., Path]
) -> None:
    folder = run_copy(RUN_1X8)
    (folder / "nodes" / "stranger").mkdir()
    (folder / "nodes" / "stranger" / "env.json").write_text("{}")
    with pytest.raises(
        IngestError, match=r"nodes/stranger/env.json: node 'stranger' is not in manifest.json"
    ):
        sqlite_store.ingest([folder])


def test_not_a_run_folder(sqlite_store: Any, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="manifest.json is missing"):
        sqlite_store.ingest([tmp_path])
    with pytest.raises(IngestError, match="is not a folder"):
        sqlite_store.ingest([tmp_path / "nope"])


def test_same_run_twice_in_one_call(
    sqlite_store: Any, fixture_runs: Path, run_copy: Callable[..., Path]
) -> None:
    twin = run_copy(RUN_1X8, "twin")
    with pytest.raises(IngestError, match=f"run {RUN_1X8} is given twice"):
        sqlite_store.ingest([fixture_runs / RUN_1X8, twin])


def test_cli_ingest_reports_each_run_and_is_idempotent(
    run_cli: Any, sqlite_url: str, fixture_runs: Path
) -> None:
    assert run_cli("--db", sqlite_url, "db", "upgrade").exit_code == 0
    folders = [str(fixture_runs / name) for name in ALL_RUNS]
    first = run_cli("--db", sqlite_url, "ingest", *folders)
    assert first.exit_code == 0, first.err
    assert f"{RUN_2X8}: succeeded, 16 rank file(s), p_core " in first.out
    assert f"{RUN_2X8_FAILED}: failed, 9 rank file(s): stored" in first.out
    second = run_cli("--db", sqlite_url, "ingest", *folders)
    assert second.out.count("unchanged (already in the store)") == 4


def test_cli_ingest_bad_folder_is_one_line_on_stderr(
    run_cli: Any, sqlite_url: str, run_copy: Callable[..., Path]
) -> None:
    run_cli("--db", sqlite_url, "db", "upgrade")
    folder = run_copy(RUN_1X8)
    _edit(
        folder / "ranks" / "rank-00004.json", lambda d: d["memory"].update(peak_reserved_bytes=-1.5)
    )
    result = run_cli("--db", sqlite_url, "ingest", str(folder))
    assert result.exit_code == 2
    assert result.out == ""
    assert result.err.count("\n") == 1
    assert (
        "rank-00004.json: field memory.peak_reserved_bytes: expected int, got float" in result.err
    )


def test_console_script_bad_folder_exits_2_without_traceback(
    sqlite_url: str, run_copy: Callable[..., Path]
) -> None:
    import subprocess
    import sys

    from orchestrator.store import upgrade_store

    upgrade_store(sqlite_url)
    folder = run_copy(RUN_1X8)
    (folder / "manifest.json").write_text("{not json")
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator", "--db", sqlite_url, "ingest", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(folder.parent)},
        cwd=folder.parent,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"error: {folder / 'manifest.json'}: not valid JSON")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_cli_ingest_into_a_missing_sqlite_file_creates_no_file(
    fixture_runs: Path, tmp_path: Path, where: str
) -> None:
    from tests.support.cluster_fixtures import run_cli as run_cli_process

    db = tmp_path / "stores" / "results.db"
    url = f"sqlite:///{db}" if where == "absolute" else "sqlite:///stores/results.db"
    done = run_cli_process(["--db", url, "ingest", str(fixture_runs / RUN_1X8)], tmp_path, 120)
    assert done.returncode == 2
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr == (
        f"error: results store file {db} does not exist (check the path, or create the store "
        f"with: orchestrator --db {url} db upgrade)\n"
    )
    assert not db.exists() and not db.parent.exists()
    # The remedy works as written.
    assert run_cli_process(["--db", url, "db", "upgrade"], tmp_path, 120).returncode == 0
    again = run_cli_process(["--db", url, "ingest", str(fixture_runs / RUN_1X8)], tmp_path, 120)
    assert again.returncode == 0, again.stderr
    assert f"{RUN_1X8}: succeeded" in again.stdout
