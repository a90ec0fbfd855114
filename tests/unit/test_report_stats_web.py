"""report_stats' helpers for the results pages: flag_history and regressions_by_run give
find_regressions' verdicts without one scan of the history per run; scaling_points puts the
ideal line through the smallest topology."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from orchestrator.regressions import Regression, find_regressions, flag_history, regressions_by_run
from orchestrator.reports.stats import scaling_points


def _history(seed: int) -> list[dict[str, object]]:
    rnd = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = []
    for i in range(120):
        config = rnd.choice(["MXC500 2x8", "MXC500 1x8", "A100 2x8"])
        p_core = 500.0 * rnd.uniform(0.97, 1.03) * (0.8 if rnd.random() < 0.08 else 1.0)
        rows.append(
            {
                "run_id": f"r{i:03d}",
                "vendor": config.split()[0],
                "config": config,
                "precision": "fp32",
                "fix_hp": "/",
                "status": rnd.choice(["succeeded"] * 9 + ["failed"]),
                "finished_at": start + timedelta(hours=rnd.randint(0, 2000)),
                "p_core": p_core,
                "p_train": p_core * 0.8,
            }
        )
    return rows


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_flag_history_matches_find_regressions(seed: int) -> None:
    history = _history(seed)
    expected = regressions_by_run(history, history)
    assert expected  # the data has regressions to find
    assert flag_history(history) == expected


def _report_history(seed: int, runs: int) -> list[dict[str, object]]:
    """A history with what makes the window hard: ties in time (run ids break them), runs
    without a finish or a metric, failed and lost runs, three configurations and steps."""
    rnd = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = []
    for i in range(runs):
        config = rnd.choice(["MXC500 2x8", "MXC500 1x8", "A100 2x8"])
        level = 500.0 if i < runs // 2 else 430.0  # a step half-way
        p_core = level * rnd.uniform(0.99, 1.01) * (0.7 if rnd.random() < 0.06 else 1.0)
        rows.append(
            {
                "run_id": f"r{rnd.randint(0, 10 * runs):05d}-{i}",
                "vendor": config.split()[0],
                "config": config,
                "precision": rnd.choice(["fp32", "fp32", "amp"]),
                "fix_hp": "/",
                "status": rnd.choice(["succeeded"] * 8 + ["failed", "lost"]),
                "finished_at": (
                    None if rnd.random() < 0.03 else start + timedelta(hours=rnd.randint(0, runs))
                ),
                "p_core": None if rnd.random() < 0.05 else p_core,
                "p_train": p_core * rnd.uniform(0.79, 0.81),
            }
        )
    return rows


def _one_scan_per_run(
    rows: list[dict[str, object]], history: list[dict[str, object]]
) -> dict[str, list[Regression]]:
    """The rule as written: each run against a scan of the whole history (the reference)."""
    found = {str(row["run_id"]): find_regressions(row, history) for row in rows}
    return {run_id: flags for run_id, flags in found.items() if flags}


@pytest.mark.parametrize("seed", [4, 5, 6, 7])
def test_regressions_by_run_matches_one_scan_per_run(seed: int) -> None:
    history = _report_history(seed, 400)
    rnd = random.Random(seed)
    rows = rnd.sample(history, 150) + _report_history(seed + 100, 60)  # some not in history
    expected = _one_scan_per_run(rows, history)
    assert len(expected) >= 3  # the data has regressions to find
    got = regressions_by_run(rows, history)
    assert got == expected  # the same runs, metrics, values, means, sds and history sizes
    assert regressions_by_run(history, history) == _one_scan_per_run(history, history)
    assert regressions_by_run(history, history) == flag_history(history)
    assert regressions_by_run(rows, history, k=4) == {
        str(r["run_id"]): f for r in rows if (f := find_regressions(r, history, k=4))
    }


def test_scaling_points_ideal_and_efficiency() -> None:
    points = scaling_points(
        [
            ("A100 amp", "2x8", 720.0),
            ("A100 amp", "1x1", 50.0),
            ("A100 amp", "1x8", 380.0),
            ("X", "bad", 1.0),
        ]
    )
    assert [(p.topology, p.devices) for p in points] == [("1x1", 1), ("1x8", 8), ("2x8", 16)]
    assert [p.ideal for p in points] == [50.0, 400.0, 800.0]
    assert [round(p.efficiency, 3) for p in points] == [1.0, 0.95, 0.9]
    only_8 = scaling_points([("M fp32", "1x8", 240.0), ("M fp32", "2x8", 400.0)])
    assert [p.ideal for p in only_8] == [240.0, 480.0]  # the smallest topology measured


def test_scaling_points_keep_each_series_name_and_leave_out_a_topology_of_no_devices() -> None:
    points = scaling_points(
        [
            ("B fp32", "1x2", 100.0),
            ("A amp", "1x1", 30.0),
            ("A amp", "0x8", 99.0),  # no devices: no per-device value to scale
            ("B fp32", "1x4", 180.0),
            ("A amp", "1x2", 55.0),
        ]
    )
    assert [(p.series, p.topology, p.devices, p.mean, p.ideal) for p in points] == [
        ("A amp", "1x1", 1, 30.0, 30.0),
        ("A amp", "1x2", 2, 55.0, 60.0),
        ("B fp32", "1x2", 2, 100.0, 100.0),
        ("B fp32", "1x4", 4, 180.0, 200.0),
    ]
