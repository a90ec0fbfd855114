"""The example queries of docs/queries.md return the rows they are meant to find, on SQLite.

The recorded run folders are dated January 2026; the queries look at "the last 90 days". So the
fixture here copies them with every timestamp moved to the last few days (relative to now), adds
a slower repeat of the 2x8 run with one straggler rank, and an old, faster 1x1 run that falls
outside the 90 days. Each query's rows and values are then asserted, not only its columns.
"""

from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from orchestrator.store.readonly import run_query
from tests.support.store_fixtures import (
    ALL_RUNS,
    FIXTURE_RUNS,
    RUN_1X1,
    RUN_2X8,
    docs_queries,
)

QUERIES = {heading.split(".")[0]: sql for heading, sql in docs_queries("sqlite")}
_STAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
NEWEST = datetime(2026, 1, 15, 13, 27)  # the failed run's finish, the latest fixture time
SLOW = "20260116-101500-2x8-metax-slow"
OLD = "20250101-101500-1x1-nvidia-old"


def _copy(tmp: Path, name: str, shift: timedelta, new_id: str | None = None) -> Path:
    """A copy of a recorded run with every timestamp moved by `shift` (and a new run id)."""
    target = tmp / (new_id or name)
    shutil.copytree(FIXTURE_RUNS / name, target)
    for path in target.rglob("*.json"):
        text = _STAMP.sub(
            lambda m: (datetime.fromisoformat(m.group(0)) + shift).isoformat(), path.read_text()
        )
        if new_id:
            text = text.replace(f'"{name}"', f'"{new_id}"')
        path.write_text(text)
    return target


def _scale_core(folder: Path, factor: float, ranks: set[int] | None = None) -> None:
    for path in sorted((folder / "ranks").glob("*.json")):
        doc = json.loads(path.read_text())
        if ranks is None or doc["identity"]["rank"] in ranks:
            doc["timings"]["core_s"] = round(doc["timings"]["core_s"] * factor, 6)
        path.write_text(json.dumps(doc))


@pytest.fixture
def recent_history(sqlite_store: Any, sqlite_url: str, tmp_path: Path) -> str:
    # Whole days, so that every time of day stays as recorded.
    days = (datetime.now(timezone.utc).replace(tzinfo=None) - NEWEST).days - 2
    shift = timedelta(days=days)
    folders = [_copy(tmp_path, name, shift) for name in ALL_RUNS]
    slow = _copy(tmp_path, RUN_2X8, shift + timedelta(days=1), SLOW)  # after the failed run
    _scale_core(slow, 1.2, {5})  # rank 5 is 20 % slower: the run's p_core drops with it
    old = _copy(tmp_path, RUN_1X1, shift - timedelta(days=120), OLD)
    _scale_core(old, 0.5)  # twice as fast, but too old for "the last 90 days"
    sqlite_store.ingest([*folders, slow, old])
    return sqlite_url


def _rows(url: str, number: str) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in run_query(url, QUERIES[number]).rows]


def test_docs_query_1_best_p_core_per_vendor_and_topology_in_the_last_90_days(
    recent_history: str,
) -> None:
    rows = _rows(recent_history, "1")
    assert [row[:3] + (row[4],) for row in rows] == [
        ("metax", "1x8", "fp32", 1),
        ("metax", "2x8", "fp32", 2),  # the run and its slower repeat
        ("nvidia", "1x1", "amp", 1),  # not the old, faster one
    ]
    assert [round(row[3], 1) for row in rows] == [244.9, 519.2, 44.6]


def test_docs_query_1_finds_nothing_when_every_run_is_older_than_90_days(
    sqlite_store: Any, sqlite_url: str, tmp_path: Path
) -> None:
    sqlite_store.ingest([_copy(tmp_path, name, timedelta(days=-365)) for name in ALL_RUNS])
    assert _rows(sqlite_url, "1") == []


def test_docs_query_2_finds_the_runs_more_than_5_percent_below_the_run_before(
    recent_history: str,
) -> None:
    slow, nvidia = _rows(recent_history, "2")  # newest first
    config, precision, fix_hp, run_id, _finished, previous, p_core, change, driver, torch = slow
    assert (config, precision, fix_hp, run_id, driver, torch) == (
        "MXC500 2x8",
        "fp32",
        "bs=16, lr=0.08, epochs=2",
        SLOW,
        "2.2.0",
        "2.0.0+mc2.19.0.6",
    )
    assert round(previous, 1) == 519.2 and round(p_core, 1) == 436.4
    assert change == pytest.approx(p_core / previous - 1) and round(change, 3) == -0.159
    # The recent 1x1 run after the old one that was twice as fast (any age counts here).
    assert nvidia[:4] == ("A100 1x1", "amp", "bs=16, lr=0.16, epochs=1", RUN_1X1)
    assert round(nvidia[5], 1) == 89.2 and round(nvidia[6], 1) == 44.6
    assert nvidia[7] == pytest.approx(-0.5)


def test_docs_query_3_names_the_failing_node_and_its_reason(recent_history: str) -> None:
    (row,) = _rows(recent_history, "3")
    node, reason, failures, last_seen = row
    assert (node, failures) == ("me-node2", 1)
    assert reason == (
        "rank 11 on me-node2 exited with code 1: DistBackendError: NCCL communicator was aborted"
    )
    assert str(last_seen).endswith("13:27:00.000000")  # the failed run's finish, moved by days


def test_docs_query_4_finds_the_straggler_rank_only(recent_history: str) -> None:
    (row,) = _rows(recent_history, "4")
    assert row[:3] == (SLOW, 5, "me-node1")
    assert row[3] == pytest.approx(447.754 * 1.2)
    assert float(row[4]) == pytest.approx(0.192)


def test_docs_query_5_compares_configurations_by_driver_and_torch(recent_history: str) -> None:
    rows = _rows(recent_history, "5")
    assert [row[:6] for row in rows] == [
        ("metax", "1x8", "fp32", "2.2.0", "torch 2.0.0+mc2.19.0.6", 1),
        ("metax", "2x8", "fp32", "2.2.0", "torch 2.0.0+mc2.19.0.6", 2),
        ("nvidia", "1x1", "amp", "535.161.08", "torch 2.1.2+cu121", 2),
    ]
    assert [round(row[6], 1) for row in rows] == [244.9, 477.8, 66.9]
    assert [row[7] for row in rows] == [0.188, 0.188, 0.118]


def test_docs_query_6_gives_each_configuration_s_mean_and_sd_from_the_summaries(
    recent_history: str,
) -> None:
    import statistics

    rows = _rows(recent_history, "6")
    assert [row[:5] for row in rows] == [
        ("metax", "MXC500 1x8", "fp32", "bs=8, lr=0.0001, epochs=2", 1),
        ("metax", "MXC500 2x8", "fp32", "bs=16, lr=0.08, epochs=2", 2),  # with the slow repeat
        ("nvidia", "A100 1x1", "amp", "bs=16, lr=0.16, epochs=1", 2),  # with the old one
    ]
    # The same numbers as the runs give, computed the slow way.
    for vendor, config, _, _, n, mean, sd, best, _ in rows:
        sql = (
            f"SELECT p_core FROM runs WHERE status = 'succeeded' AND vendor = '{vendor}' "
            f"AND config_label = '{config}'"
        )
        values = [r[0] for r in run_query(recent_history, sql).rows]
        assert len(values) == n
        assert mean == pytest.approx(statistics.fmean(values))
        assert best == pytest.approx(max(values))
        assert sd == (pytest.approx(statistics.stdev(values)) if n > 1 else None)
