"""The execution layer's calls on SQLite: a run from its provisional row to its published results."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from orchestrator.errors import StoreError
from orchestrator.runfolder.folder import load_manifest, write_manifest
from orchestrator.store.models import Image, ImageWheel, Run, RunNode, RunStatusChange
from tests.support.store_fixtures import RUN_2X8, table_snapshot


def _history(store: Any, run_id: str) -> list[tuple[str, str | None]]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(RunStatusChange.status, RunStatusChange.reason)
            .where(RunStatusChange.run_id == run_id)
            .order_by(RunStatusChange.id)
        ).all()
    return [(r.status, r.reason) for r in rows]


def test_provisional_run_then_publish(sqlite_store: Any, run_copy: Any) -> None:
    folder = run_copy(RUN_2X8)
    manifest = load_manifest(folder / "manifest.json")
    sqlite_store.create_run(replace(manifest, status="running", finished_at=None), status="queued")
    sqlite_store.set_status(RUN_2X8, "running")
    env = {"os": "Ubuntu 20.04.6 LTS", "kernel": "5.4.0-26-generic", "driver": "2.2.0", "ib": []}
    sqlite_store.record_environment(RUN_2X8, "me-node2", 1, env)
    with sqlite_store.engine.connect() as conn:
        provisional = conn.execute(
            select(Run.status, Run.created_at, Run.p_core).where(Run.run_id == RUN_2X8)
        ).one()
    assert provisional.status == "running" and provisional.p_core is None

    # The folder lacks env.json for node 2: the environment recorded live is kept.
    (folder / "nodes" / "me-node2" / "env.json").unlink()
    summary = sqlite_store.publish(folder)
    assert summary.changed and summary.status == "succeeded"
    with sqlite_store.engine.connect() as conn:
        run = conn.execute(select(Run).where(Run.run_id == RUN_2X8)).mappings().one()
        nodes = conn.execute(
            select(RunNode.node_name, RunNode.driver, RunNode.env)
            .where(RunNode.run_id == RUN_2X8)
            .order_by(RunNode.node_rank)
        ).all()
    assert run["status"] == "succeeded" and run["p_core"] is not None
    assert run["created_at"] == provisional.created_at  # the row kept its creation time
    assert [n.node_name for n in nodes] == ["me-node1", "me-node2"]
    assert nodes[1].env == env and nodes[1].driver == "2.2.0"
    assert [s for s, _ in _history(sqlite_store, RUN_2X8)] == ["queued", "running", "succeeded"]

    before = table_snapshot(sqlite_store)
    assert not sqlite_store.publish(folder).changed
    assert table_snapshot(sqlite_store) == before


def test_failure_is_recorded_with_its_reason(sqlite_store: Any, run_copy: Any) -> None:
    manifest = load_manifest(run_copy(RUN_2X8) / "manifest.json")
    sqlite_store.create_run(manifest)
    failure = {
        "node": "me-node2",
        "rank": 9,
        "exit_code": -9,
        "reason": "rank 9 was killed (SIGKILL)",
        "log_tail": "...",
    }
    sqlite_store.set_status(RUN_2X8, "failed", failure=failure)
    with sqlite_store.engine.connect() as conn:
        run = conn.execute(
            select(Run.status, Run.reason, Run.failure, Run.finished_at).where(
                Run.run_id == RUN_2X8
            )
        ).one()
    assert run.status == "failed" and run.reason == "rank 9 was killed (SIGKILL)"
    assert run.failure == failure
    assert run.finished_at is not None and run.finished_at.tzinfo is not None
    assert _history(sqlite_store, RUN_2X8)[-1] == ("failed", "rank 9 was killed (SIGKILL)")


def test_lifecycle_errors_are_typed(sqlite_store: Any, run_copy: Any) -> None:
    manifest = load_manifest(run_copy(RUN_2X8) / "manifest.json")
    sqlite_store.create_run(manifest)
    with pytest.raises(StoreError, match="already in results store"):
        sqlite_store.create_run(manifest)
    with pytest.raises(StoreError, match="unknown run status 'done'"):
        sqlite_store.set_status(RUN_2X8, "done")
    with pytest.raises(StoreError, match="no run nope"):
        sqlite_store.set_status("nope", "failed")
    with pytest.raises(StoreError, match="no run nope"):
        sqlite_store.record_environment("nope", "n1", 0, {})


def test_record_image_is_idempotent_by_image_id(sqlite_store: Any) -> None:
    image = {
        "tag": "orchestrator/faster-rcnn:metax-5f0c9e21",
        "image_id": "sha256:" + "ab" * 32,
        "size_bytes": 9_100_000_000,
        "base": "vendor/metax-base:2.19",
        "wheels": [
            {"filename": "torch-2.0.0+mc2.19.0.6-cp38-cp38-linux_x86_64.whl", "sha256": "1" * 64},
            {
                "filename": "torchvision-0.15.1+mc2.19.0.6-cp38-cp38-linux_x86_64.whl",
                "sha256": "2" * 64,
            },
        ],
        "build_seconds": 211.5,
        "build_log_path": "/var/log/orchestrator/build.log",
        "created_at": datetime(2026, 1, 10, 8, 0, tzinfo=timezone.utc),
    }
    sqlite_store.record_image(image)
    sqlite_store.record_image(image)
    sqlite_store.record_image(dict(image, tag="orchestrator/faster-rcnn:latest"))
    with sqlite_store.engine.connect() as conn:
        images = conn.execute(select(Image.tag, Image.created_at)).all()
        wheels = conn.execute(select(ImageWheel.filename)).scalars().all()
    assert len(images) == 1 and images[0].tag == "orchestrator/faster-rcnn:latest"
    assert images[0].created_at == image["created_at"]
    assert sorted(wheels) == sorted(w["filename"] for w in image["wheels"])


def test_manifest_round_trip(tmp_path: Path, fixture_runs: Path) -> None:
    manifest = load_manifest(fixture_runs / RUN_2X8 / "manifest.json")
    write_manifest(tmp_path / "m" / "manifest.json", manifest)
    assert load_manifest(tmp_path / "m" / "manifest.json") == manifest
    assert manifest.world_size == 16 and manifest.nodes[1].name == "me-node2"
    assert not list((tmp_path / "m").glob("*.tmp*"))
