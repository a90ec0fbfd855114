"""Stragglers (with a device's history) and energy published into PostgreSQL: the JSON columns
come back as documents, the history query runs, and the sparse-power warning is stored."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from orchestrator.runfolder.folder import read_run_folder
from orchestrator.store.metrics import training_window
from tests.unit.test_stragglers import _folder_with_paces

pytestmark = pytest.mark.postgres


def test_scores_history_energy_and_warning_on_postgres(
    pg_store: Any, fixture_runs: Path, tmp_path: Path
) -> None:
    for i in range(3):
        pg_store.ingest([_folder_with_paces(fixture_runs, tmp_path, f"before-{i}", {})])
    folder = _folder_with_paces(fixture_runs, tmp_path, "now", {12: 1.5})
    start, end = training_window(read_run_folder(folder).ranks)
    lines = [  # device 0 of node 1 every 2 s: half of the window's seconds
        {"ts": start + 2 * i, "metric": "device_power_w", "value": 300.0, "device": 0}
        for i in range(int((end - start) / 2) + 2)
    ]
    node_dir = folder / "nodes" / "me-node1"
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / "monitor.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    pg_store.ingest([folder])
    with pg_store.reading() as conn:
        stragglers, energy_j, coverage, warnings = conn.execute(
            text(
                "SELECT stragglers, energy_j, power_coverage, warnings FROM runs WHERE run_id = 'now'"
            )
        ).one()
        history = conn.execute(
            text("SELECT history_ratio FROM rank_results WHERE run_id = 'now' AND rank = 12")
        ).scalar()
    assert [(s["rank"], s["node"], s["device"]) for s in stragglers] == [(12, "me-node2", "4")]
    assert history == pytest.approx(1.5)
    assert energy_j == pytest.approx(300.0 * (end - start))
    assert coverage == pytest.approx(0.5, abs=0.01)
    assert any(w.startswith("energy from sparse power samples: 1 series") for w in warnings)
