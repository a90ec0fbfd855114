"""Repeats summarised (mean, sd, min-max, n), the regression flag, and the grouped report as
golden text (markdown, CSV, JSON) over the recorded run folders plus repeats made from them."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from orchestrator.regressions import config_key, find_regressions, regressions_by_run
from orchestrator.reports.stats import devices, group_rows, spread
from tests.support.golden import check_golden
from tests.support.store_fixtures import ALL_RUNS, RUN_2X8

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
T0 = datetime(2026, 2, 1, tzinfo=timezone.utc)


def _run(run_id: str, day: int, p_core: float, p_train: float = 400.0, **extra: Any) -> dict:
    row = {
        "run_id": run_id,
        "vendor": "metax",
        "config": "MXC500 2x8",
        "topology": "2x8",
        "precision": "fp32",
        "fix_hp": "bs=16, lr=0.08, epochs=2",
        "status": "succeeded",
        "finished_at": T0 + timedelta(days=day),
        "p_core": p_core,
        "p_train": p_train,
    }
    row.update(extra)
    return row


def test_spread_is_mean_sample_sd_min_max_and_n() -> None:
    s = spread([10.0, 12.0, None, 14.0])
    assert s is not None
    assert (s.n, s.mean, s.min, s.max) == (3, 12.0, 10.0, 14.0)
    assert s.sd == pytest.approx(2.0)
    single = spread([5])
    assert single is not None and single.sd is None and single.mean == 5.0
    assert spread([None]) is None


def test_group_rows_aggregates_repeats_of_one_configuration_only() -> None:
    rows = [
        _run("a", 1, 500.0, mem="30.0/64.0"),
        _run("b", 2, 520.0, mem="37.1/64.0"),
        _run("c", 3, 100.0, precision="amp"),
        _run("d", 4, 510.0, mem="9.5/64.0"),
    ]
    groups = group_rows(rows)
    assert [g.run_ids for g in groups] == [["a", "b", "d"], ["c"]]
    p_core = groups[0].stats("p_core")
    assert p_core is not None and p_core.mean == pytest.approx(510.0) and p_core.n == 3
    assert groups[0].mem == "37.1/64.0"  # the peak, not the last or the text-largest
    assert config_key(rows[2])[2] == "amp"


def test_devices_of_a_topology() -> None:
    assert [devices(t) for t in ("1x1", "1x8", "2x8", "nope")] == [1, 8, 16, None]


def test_a_run_clearly_below_its_recent_history_is_flagged() -> None:
    history = [_run(f"h{i}", i, 500.0 + (i % 3), p_train=400.0 + (i % 2)) for i in range(12)]
    slow = _run("slow", 20, 440.0)  # 12 % below, far outside 3 sd
    found = find_regressions(slow, history)
    assert [(r.metric, r.history_n) for r in found] == [("p_core", 10)]  # only the last 10 count
    assert found[0].drop == pytest.approx(1 - 440.0 / found[0].history_mean)
    assert found[0].describe() == (
        "p_core 440 img/s is 12% below the mean 501 ± 0.876 of the previous 10 runs"
    )


def test_noise_small_drops_other_configurations_and_short_history_are_not_flagged() -> None:
    noisy = [_run(f"n{i}", i, v) for i, v in enumerate([400.0, 600.0, 450.0, 550.0, 500.0])]
    assert find_regressions(_run("x", 10, 420.0), noisy) == []  # within 3 sd of a noisy history
    tight = [_run(f"t{i}", i, 500.0 + i * 0.01) for i in range(5)]
    assert find_regressions(_run("y", 10, 480.0), tight) == []  # < 5 % below: not clearly slower
    other = [_run(f"o{i}", i, 500.0, precision="amp") for i in range(5)]
    assert find_regressions(_run("z", 10, 300.0), other) == []  # not the same configuration
    assert find_regressions(_run("w", 10, 300.0), tight[:2]) == []  # too little history
    later = [_run(f"l{i}", 20 + i, 500.0 + i * 0.01) for i in range(5)]
    assert find_regressions(_run("v", 10, 300.0), later) == []  # only earlier runs count
    failed = _run("f", 10, 300.0, status="failed")
    assert find_regressions(failed, tight) == []


def test_regressions_by_run_names_the_flagged_runs() -> None:
    history = [_run(f"h{i}", i, 500.0 + (i % 2)) for i in range(6)]
    rows = [*history, _run("slow", 9, 300.0)]
    assert list(regressions_by_run(rows, rows)) == ["slow"]


# --- the grouped report, end to end through the CLI, as golden text --------------------------


def _repeat(run_copy: Any, new_id: str, day: int, core_factor: float) -> Path:
    """A repeat of the 2x8 fixture run, `day` days later, with core time scaled."""
    folder = run_copy(RUN_2X8, new_id)
    for path in [folder / "manifest.json", *sorted((folder / "ranks").glob("*.json"))]:
        doc = json.loads(path.read_text())
        doc["run_id"] = new_id
        if "timings" in doc:
            times = doc["timings"]
            times["core_s"] *= core_factor
            # each time contains the one before (ingest refuses a part longer than its whole)
            for inner, outer in (("core_s", "train_no_eval_s"), ("train_no_eval_s", "train_s")):
                times[outer] = max(times[outer], times[inner])
            times["e2e_s"] = max(times["e2e_s"], times["train_s"])
        else:
            for key in ("submitted_at", "started_at", "finished_at"):
                doc[key] = doc[key].replace("2026-01-14", f"2026-01-{14 + day:02d}")
        path.write_text(json.dumps(doc))
    return folder


@pytest.fixture
def repeats_history(sqlite_store: Any, sqlite_url: str, fixture_runs: Path, run_copy: Any) -> str:
    """The recorded runs, four more repeats of the 2x8 run, and a fifth clearly slower one."""
    folders = [fixture_runs / name for name in ALL_RUNS]
    for day, factor in ((2, 1.01), (3, 0.99), (4, 1.02), (5, 1.0)):
        folders.append(_repeat(run_copy, f"2026011{4 + day}-101500-2x8-metax", day, factor))
    folders.append(_repeat(run_copy, "20260120-101500-2x8-metax-slow", 6, 1.3))
    sqlite_store.ingest(folders)
    return sqlite_url


def _check_golden(name: str, text: str) -> None:
    check_golden(GOLDEN / name, text)


@pytest.mark.parametrize("output,suffix", [("markdown", "md"), ("csv", "csv"), ("json", "json")])
def test_grouped_report_matches_golden_text(
    run_cli: Any, repeats_history: str, output: str, suffix: str
) -> None:
    result = run_cli(
        "--db", repeats_history, "report", "--vendor", "metax", "--format", output, "--plots", "p"
    )
    assert result.exit_code == 0, result.err
    _check_golden(f"report-grouped.{suffix}", result.out)


def test_grouped_report_shows_spread_and_flags_the_slow_run(
    run_cli: Any, repeats_history: str
) -> None:
    out = run_cli("--db", repeats_history, "report", "--topology", "2x8").out
    row = next(line for line in out.splitlines() if line.startswith("| MXC500 2x8"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[-2] == "6"  # n: the fixture run and its five repeats
    assert cells[6] == "498 ± 50.8 (CV 9.7%)"  # p_core: mean ± t(0.975, 5) * 48.4 / sqrt(6)
    assert cells[-1] == "20260120-101500-2x8-metax-slow: p_core -23%"
    assert "- 20260120-101500-2x8-metax-slow: p_core " in out  # the Regressions section

    ungrouped = run_cli("--db", repeats_history, "report", "--topology", "2x8", "--no-group").out
    assert ungrouped.count("| MXC500 2x8 |") == 6
    assert "#### Regressions" in ungrouped


def test_report_for_a_campaign(run_cli: Any, repeats_history: str, sqlite_store: Any) -> None:
    from sqlalchemy import update

    from orchestrator.store.models import Campaign, Run

    with sqlite_store.transaction() as conn:
        conn.execute(
            Campaign.__table__.insert().values(
                campaign_id="c1", name="January", spec={}, status="finished", created_at=T0
            )
        )
        conn.execute(update(Run).where(Run.run_id == RUN_2X8).values(campaign_id="c1"))
    out = run_cli("--db", repeats_history, "report", "--campaign", "c1", "--format", "json").out
    doc = json.loads(out)
    assert [r["run_id"] for r in doc["runs"]] == [RUN_2X8]
    assert doc["groups"][0]["n"] == 1
    missing = run_cli("--db", repeats_history, "report", "--campaign", "nope")
    assert missing.exit_code == 2 and "no campaign 'nope'" in missing.err
