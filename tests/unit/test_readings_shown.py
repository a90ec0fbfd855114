"""Stragglers and energy where people read them: `runs show`, `report` (J/image beside the
seed's columns, never in their place) and the run page, for a published 2x8 run whose rank 9
is 50 % off the median and whose node 1 sampled power every half second."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from orchestrator.runfolder.folder import read_run_folder
from orchestrator.store import open_store
from orchestrator.store.metrics import training_window
from orchestrator.units import sig3
from tests.unit.test_stragglers import _folder_with_paces

RUN = "readings-2x8"


@pytest.fixture
def published(sqlite_url: str, fixture_runs: Path, tmp_path: Path) -> str:
    folder = _folder_with_paces(fixture_runs, tmp_path, RUN, {9: 1.5})
    start, end = training_window(read_run_folder(folder).ranks)
    node_dir = folder / "nodes" / "me-node1"
    node_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        {"ts": start - 1 + 0.5 * i, "metric": "device_power_w", "value": 400.0, "device": d}
        for i in range(int((end - start) * 2) + 5)
        for d in range(8)
    ]
    (node_dir / "monitor.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with open_store(sqlite_url, create=True) as store:
        store.ingest([folder])
    return sqlite_url


def _expected_energy(fixture_runs: Path) -> tuple[float, float]:
    ranks = read_run_folder(fixture_runs / "20260114-101500-2x8-metax").ranks
    start, end = training_window(ranks)
    joules = 8 * 400.0 * (end - start)
    return joules, joules / sum(r.doc["samples"]["rank_images"] for r in ranks)


def test_runs_show_names_the_straggler_and_the_energy(published, run_cli, fixture_runs) -> None:
    shown = run_cli("--db", published, "runs", "show", RUN)
    assert shown.exit_code == 0, shown.err
    joules, per_image = _expected_energy(fixture_runs)
    out = shown.out
    assert "straggler: rank 9 (node me-node2, device 1) 50% slower than the median rank" in out
    assert re.search(rf"energy \(J\)\s+\S\s+{sig3(joules)}\s", out), out
    assert f"{per_image:.3g}" in out and "power coverage" in out and "100%" in out
    # rank 9's row: its pace, its ratio to the median rank, flagged
    assert re.search(r"│ 9 .*│ 1\.5 +│ 1\.50x +│ yes +│", out), out
    document = json.loads(run_cli("--db", published, "runs", "show", RUN, "--format", "json").out)
    assert document["run"]["energy_per_image_j"] == pytest.approx(per_image)
    assert [r["rank"] for r in document["ranks"] if r["straggler"]] == [9]


def test_report_puts_energy_after_the_seeds_columns(published, run_cli, fixture_runs) -> None:
    _, per_image = _expected_energy(fixture_runs)
    text = run_cli("--db", published, "report", "--run", RUN, "--no-group").out
    header = next(line for line in text.splitlines() if line.startswith("| config"))
    assert header.split(" | ")[:10] == [
        "| config", "precision", "fix_hp", "e2e_time (s)", "p_whole (img/s)",
        "p_train (img/s)", "p_core (img/s)", "mAP", "mem (GiB)", "run",
    ]  # fmt: skip
    assert header.endswith("| J/image | power coverage |")
    row = next(line for line in text.splitlines() if RUN in line)
    assert row.endswith(f"| {per_image:.3g} | 100% |")
    csv = run_cli("--db", published, "report", "--run", RUN, "--no-group", "--format", "csv").out
    assert csv.splitlines()[0].endswith(",energy_j,energy_per_image_j,power_coverage")
    # grouped (the default): a J/image column after the seed's, with its spread over repeats
    grouped = run_cli("--db", published, "report", "--run", RUN).out
    header = next(line for line in grouped.splitlines() if line.startswith("| config"))
    assert header.endswith("| mem (GiB) | n | regression | J/image |")
    row = next(line for line in grouped.splitlines() if line.startswith("| MXC500"))
    assert row.endswith(f"| {per_image:.3g} |")
    grouped_csv = run_cli("--db", published, "report", "--run", RUN, "--format", "csv").out
    head, line = grouped_csv.splitlines()[:2]
    assert head.endswith(
        ",regression,energy_per_image_j,energy_per_image_j_sd,"
        "energy_per_image_j_min,energy_per_image_j_max"
    )
    assert float(line.split(",")[-4]) == pytest.approx(per_image)


def test_the_run_page_shows_both(published, fixture_runs) -> None:
    from orchestrator.web.app import create_app

    joules, per_image = _expected_energy(fixture_runs)
    with TestClient(create_app(published), raise_server_exceptions=False) as client:
        page = client.get(f"/runs/{RUN}").text
    energy = page.split('id="energy"', 1)[1].split("</table>", 1)[0]
    assert f">{joules:,.0f}<" in energy and f">{per_image:.3g}<" in energy
    assert ">100%<" in energy and "the devices' power (8 series)" in energy
    assert (
        '<p class="warnings" id="stragglers">straggler: rank 9 (node me-node2, device 1) 50% '
        "slower than the median rank</p>"
    ) in page
    ranks = page.split('id="ranks"', 1)[1].split("</table>", 1)[0]
    assert ranks.count("1.50x straggler") == 1 and ranks.count("1.00x") == 15
