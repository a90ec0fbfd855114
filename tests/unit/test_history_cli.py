"""`orchestrator history CONFIG` and `compare --since-change-point` on a real SQLite store holding
a planted 200-run history: a −6 % step where the driver changed, +3 % where the wheels did."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.support.history_store import CONFIG, plant_history


@pytest.fixture
def planted(sqlite_store: Any, sqlite_url: str) -> str:
    plant_history(sqlite_url, runs=200, cv=0.01, seed=2)
    return sqlite_url


def test_history_table_names_each_change_and_what_changed(run_cli: Any, planted: str) -> None:
    result = run_cli("--db", planted, "history", CONFIG)
    assert result.exit_code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("metax-c500 MXC500 2x8 amp (fix_hp epochs=2): 200 succeeded runs")
    assert lines[1].startswith("p_core over all runs: ")
    assert lines[2].startswith("p_core since the last change point (hist-00140): ")
    assert lines[3] == "2 change points"
    driver = next(line for line in lines if "│ hist-00080" in line)
    assert -7.0 < _percent(driver, "p_core") < -5.0 and "driver: 2.2.0 → 2.3.1" in driver
    wheels = next(line for line in lines if "│ hist-00140" in line)
    assert 2.0 < _percent(wheels, "p_core") < 4.0
    assert "image: sha256:" in wheels  # one field changed per line of the cell
    assert "wheels: torch-2.0.0+mc2.19-cp38.whl" in lines[lines.index(wheels) + 1]


def _percent(line: str, metric: str) -> float:
    match = re.search(rf"{metric} ([+-]\d+\.\d)%", line)
    assert match, line
    return float(match.group(1))


def test_history_json(run_cli: Any, planted: str) -> None:
    result = run_cli("--db", planted, "history", CONFIG, "--format", "json")
    document = json.loads(result.out)
    assert document["runs"] == 200
    points = document["change_points"]
    assert [p["run_id"] for p in points] == ["hist-00080", "hist-00140"]
    assert [c["field"] for c in points[0]["changes"]] == ["driver"]
    assert points[0]["changes"][0] == {
        "field": "driver",
        "before": "2.2.0",
        "after": "2.3.1",
        "first_run": "hist-00080",
    }
    assert [c["field"] for c in points[1]["changes"]] == ["image", "wheels"]
    p_core = next(s for s in points[0]["shifts"] if s["metric"] == "p_core")
    assert p_core["relative"] == pytest.approx(-0.06, abs=0.01) and p_core["p"] < 1e-10
    since = document["since_last_change_point"]
    assert since["from_run"] == "hist-00140" and since["runs"] == 60
    assert since["p_core"]["n"] == 60
    # 500 × 0.94 × 1.03 = 484.1 img/s, the level now
    assert since["p_core"]["ci_low"] < 484.1 < since["p_core"]["ci_high"]


def test_history_of_an_unknown_configuration_is_one_line(run_cli: Any, planted: str) -> None:
    result = run_cli("--db", planted, "history", "metax-c500:2x8:fp32")
    assert result.exit_code == 2
    assert (
        result.err.strip()
        .splitlines()[0]
        .startswith("error: no succeeded run of configuration 'metax-c500:2x8:fp32'")
    )
    assert "Traceback" not in result.err
    bad = run_cli("--db", planted, "history", "metax-c500")
    assert bad.exit_code == 2 and "is not VENDOR:TOPOLOGY:PRECISION" in bad.err


def test_compare_against_the_runs_since_the_last_change_point(run_cli: Any, planted: str) -> None:
    plain = json.loads(
        run_cli("--db", planted, "compare", CONFIG, CONFIG, "--last", "100", "--format", "json").out
    )
    since = json.loads(
        run_cli(
            "--db",
            planted,
            "compare",
            CONFIG,
            CONFIG,
            "--last",
            "100",
            "--since-change-point",
            "--format",
            "json",
        ).out
    )
    assert plain["sides"][0]["label"] == f"{CONFIG} (mean of 100 runs)"
    assert since["sides"][0]["label"] == f"{CONFIG} (mean of 60 runs since the last change point)"
    assert since["sides"][0]["run_ids"][0] == "hist-00140"
    # the last 100 runs mix two levels (the −6 % and the +3 %); since the change point only one
    assert (
        since["sides"][0]["intervals"]["p_core"]["cv"]
        < plain["sides"][0]["intervals"]["p_core"]["cv"]
    )


def test_change_points_are_remembered_until_the_history_changes(
    planted: str, sqlite_store: Any
) -> None:
    from sqlalchemy import delete

    from orchestrator.reports.history_changes import load_history
    from orchestrator.store.config_queries import ConfigKey
    from orchestrator.store.models import Run

    key = ConfigKey("metax-c500", "MXC500 2x8", "amp", "epochs=2")
    with sqlite_store.reading() as conn:
        first = load_history(conn, key)
        again = load_history(conn, key)
    assert again.points is first.points  # from memory
    with sqlite_store.transaction() as conn:  # runs 140.. deleted: the wheel step is gone
        conn.execute(delete(Run).where(Run.run_id >= "hist-00140"))
    with sqlite_store.reading() as conn:
        after = load_history(conn, key)
    assert [p.run_id for p in first.points] == ["hist-00080", "hist-00140"]
    assert [p.run_id for p in after.points] == ["hist-00080"]
