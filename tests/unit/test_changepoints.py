"""Change points (orchestrator/reports/changepoints.py, edivisive.py): planted steps found and
explained by the manifest field that changed, none in flat noise, and the same answer as Apache
Otava's own compute_change_points."""

from __future__ import annotations

import random
from typing import Any

import pytest
from otava.analysis import compute_change_points as otava_change_points

from orchestrator.reports.changepoints import (
    ChangePoint,
    Shift,
    detect,
    explain,
    field_changes,
    find_change_points,
    since_last,
)
from orchestrator.reports.edivisive import compute_change_points, pooled_t_p
from tests.support.history_store import PLANTED, levels

NEAR = 5  # "within a few runs"


def _rows(p_cores: list[float]) -> list[dict[str, Any]]:
    return [
        {"run_id": f"r{i:03d}", "finished_at": i, "p_core": v, "p_train": v * 0.8, "map": 0.37}
        for i, v in enumerate(p_cores)
    ]


def _facts(count: int) -> dict[str, dict[str, str]]:
    """The manifests of the planted history: driver 2.3.1 from run 80, new wheels from 140."""
    facts = {}
    for i in range(count):
        facts[f"r{i:03d}"] = {
            "driver": "2.3.1" if i >= 80 else "2.2.0",
            "wheels": "torch-2.0.0+mc2.20.whl" if i >= 140 else "torch-2.0.0+mc2.19.whl",
            "kernel": "5.4.0-26-generic",
            "nodes": "me-node1, me-node2",
        }
    return facts


@pytest.mark.parametrize("seed", range(8))
def test_our_split_and_merge_equal_otavas(seed: int) -> None:
    """Same indexes and p-values as otava.analysis (which imports scipy for its t-test)."""
    cv = (0.01, 0.02, 0.03)[seed % 3]
    steps = PLANTED if seed % 2 else ()
    series = levels(200, steps, cv, seed)
    ours = compute_change_points(series, 100, 1e-4)
    theirs, _ = otava_change_points(series, 100, 1e-4)
    assert [int(c.index) for c in ours] == [int(c.index) for c in theirs]
    for a, b in zip(ours, theirs):
        assert a.stats.pvalue == pytest.approx(float(b.stats.pvalue), rel=1e-8)
        assert a.stats.mean_1 == pytest.approx(float(b.stats.mean_1))


def test_pooled_t_test_equals_scipy() -> None:
    from scipy.stats import ttest_ind_from_stats

    for args in ((500.0, 10.0, 80, 470.0, 9.0, 60), (1.0, 0.5, 3, 1.2, 0.1, 2)):
        assert pooled_t_p(*args) == pytest.approx(ttest_ind_from_stats(*args).pvalue, rel=1e-9)
    assert pooled_t_p(5.0, 0.0, 3, 5.0, 0.0, 3) == 1.0
    assert pooled_t_p(5.0, 0.0, 3, 4.0, 0.0, 3) == 0.0


@pytest.mark.parametrize("cv", [0.01, 0.02])
@pytest.mark.parametrize("seed", range(10))
def test_planted_steps_are_found_and_explained(cv: float, seed: int) -> None:
    rows = _rows(levels(200, PLANTED, cv, seed))
    points = explain(find_change_points(rows), rows, _facts(200))
    assert len(points) == 2, [p.describe() for p in points]
    driver, wheels = points
    assert abs(driver.index - 80) <= NEAR and abs(wheels.index - 140) <= NEAR
    assert [c.field for c in driver.changes] == ["driver"]
    assert (driver.changes[0].before, driver.changes[0].after) == ("2.2.0", "2.3.1")
    assert driver.changes[0].first_run == "r080"  # where the driver changed, exactly
    assert [c.field for c in wheels.changes] == ["wheels"]
    assert wheels.changes[0].first_run == "r140"
    p_core = next(s for s in driver.shifts if s.metric == "p_core")
    assert p_core.relative == pytest.approx(-0.06, abs=0.015)
    assert {s.metric for s in driver.shifts} == {"p_core", "p_train"}  # map did not move
    assert next(s for s in wheels.shifts if s.metric == "p_core").relative == pytest.approx(
        0.03, abs=0.015
    )


@pytest.mark.parametrize("seed", range(10))
def test_the_driver_step_is_found_at_three_percent_noise(seed: int) -> None:
    """At CV 3 % the +3 % wheel step is one sd and found in about 2 of 3 histories
    (bench/bench_changepoints.py prints the rate); the −6 % driver step always."""
    rows = _rows(levels(200, PLANTED, 0.03, seed))
    points = explain(find_change_points(rows), rows, _facts(200))
    driver = [p for p in points if abs(p.index - 80) <= NEAR]
    assert len(driver) == 1 and [c.field for c in driver[0].changes] == ["driver"]


@pytest.mark.parametrize("cv", [0.01, 0.02, 0.03])
@pytest.mark.parametrize("seed", range(10))
def test_no_change_point_in_a_flat_noisy_history(cv: float, seed: int) -> None:
    assert find_change_points(_rows(levels(200, (), cv, seed))) == []


def test_a_failed_run_or_a_missing_value_is_skipped_not_a_zero() -> None:
    values: list[float | None] = list(levels(120, (), 0.01, 3))
    values[30] = None  # a run without p_core (failed mid-way, or an imported log)
    values[31] = float("nan")
    rows = [{"run_id": f"r{i:03d}", "finished_at": i, "p_core": v} for i, v in enumerate(values)]
    assert find_change_points(rows, ("p_core",)) == []


def test_metrics_moving_together_are_one_change_point() -> None:
    rng = random.Random(4)
    rows = [
        {
            "run_id": f"r{i:03d}",
            "finished_at": i,
            "p_core": 500 * (0.9 if i >= 50 else 1.0) * (1 + 0.01 * rng.gauss(0, 1)),
            # mAP moves two runs later than throughput (still one change)
            "map": 0.37 * (0.95 if i >= 52 else 1.0) * (1 + 0.005 * rng.gauss(0, 1)),
        }
        for i in range(100)
    ]
    points = find_change_points(rows, ("p_core", "map"))
    assert len(points) == 1
    assert [s.metric for s in points[0].shifts] == ["p_core", "map"]
    assert points[0].index == 50  # where the clearest move is (p_core, the smaller p)


def test_field_changes_use_the_usual_value_each_side() -> None:
    before = [{"driver": "2.2.0", "nodes": "a, b"}] * 4 + [{"driver": "2.3.1", "nodes": "a, b"}]
    after = [{"driver": "2.3.1", "nodes": "a, b"}] * 5
    around = [(f"r{i}", f) for i, f in enumerate([*before, *after])]
    found = field_changes(before, after, around)
    assert [(c.field, c.before, c.after, c.first_run) for c in found] == [
        ("driver", "2.2.0", "2.3.1", "r4")  # the first run with the new driver
    ]
    gone = field_changes([{"health.nccl_busbw": "180"}], [{}])
    assert gone[0].describe() == "health.nccl_busbw: 180 → (none)"


def test_a_step_placed_late_is_still_explained() -> None:
    """The detector put the change point 4 runs after the driver changed."""
    rows = _rows([500.0] * 200)
    late = ChangePoint(84, "r084", 84, (Shift("p_core", 500.0, 470.0, 1e-9),))
    early = ChangePoint(136, "r136", 136, (Shift("p_core", 470.0, 484.0, 1e-6),))
    driver, wheels = explain([late, early], rows, _facts(200))
    assert [(c.field, c.first_run) for c in driver.changes] == [("driver", "r080")]
    assert [(c.field, c.first_run) for c in wheels.changes] == [("wheels", "r140")]


def test_short_histories_and_since_last() -> None:
    assert detect([1.0, 2.0, 3.0]) == []
    rows = _rows([500.0] * 10)
    point = ChangePoint(6, "r006", 6, (Shift("p_core", 500.0, 480.0, 1e-5),))
    assert [r["run_id"] for r in since_last(rows, [point])] == [f"r{i:03d}" for i in range(6, 10)]
    assert since_last(rows, []) == rows
    assert point.describe() == "r006: p_core -4.0% (p = 1e-05); no manifest field changed"
