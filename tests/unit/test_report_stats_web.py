"""report_stats' helpers for the results pages: flag_history gives find_regressions' verdicts
in one pass; scaling_points puts the ideal line through the smallest topology."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from orchestrator.reports.stats import flag_history, regressions_by_run, scaling_points


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
