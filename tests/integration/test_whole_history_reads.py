"""The whole-history views read less and show the same, on SQLite and PostgreSQL: each read is
compared with the straightforward one it replaced (the web store of test_web_routes: ingested
runs of several configurations, precisions and hyper-parameters, a regression, epochs).

- report's history (store/history.py: configuration_history) names every field of the
  configuration in the query: the same rows as every succeeded run filtered by config_key.
- the convergence checks read each configuration's runs from the 5 before the earliest checked
  run to the latest (not its whole history) and take a reference's curve from the runs' own
  curves when it is one of them: the same verdicts as reading every reference's curve again
  from the whole history.
- the seed table of whole configurations flags its rows against themselves: the same flags as
  against flag_inputs' second read.
- the history page's level over a configuration's whole history (mean ± sd, min, max; mean ±
  95 % interval, CV) comes from config_summaries: the same numbers as from its runs, on the page
  as shown (a `since` before the first run makes the page read them from the runs).
- the history page shows a configuration's newest runs (or those from `since`) and flags them
  with the HISTORY_RUNS runs before the first of them as their history: the same flags as over
  the whole history, wherever the shown runs start.
"""

from __future__ import annotations

import math
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlalchemy import Connection, select, update
from starlette.testclient import TestClient

from orchestrator import units
from orchestrator.confidence import interval_of
from orchestrator.convergence import REFERENCE_RUNS, check
from orchestrator.regressions import HISTORY_RUNS, config_key, flag_history
from orchestrator.reports.convergence_reads import convergence_checks, curves_of
from orchestrator.reports.history_changes import history_regressions
from orchestrator.reports.stats import METRICS, spread, spread_of_moments
from orchestrator.store import open_store
from orchestrator.store.config_queries import (
    ConfigKey,
    configuration_history,
    configurations,
    flag_inputs,
    runs_before,
    whole_history_moments,
)
from orchestrator.store.history import configuration_history as report_history
from orchestrator.store.models import Run
from orchestrator.store.queries import SEED_TABLE, Selection, seed_rows
from tests.support.web_fixtures import REGRESSED_RUN

SELECTIONS = [
    Selection(),
    Selection(vendor="metax"),
    Selection(vendor="metax", topology="2x8"),
    Selection(vendor="metax", topology="2x8", precision="fp32"),
    Selection(topology="1x8"),
]


def _every_succeeded_run(conn: Connection) -> list[dict[str, Any]]:
    query = select(SEED_TABLE).where(SEED_TABLE.c.status == "succeeded")
    return [dict(r) for r in conn.execute(query).mappings()]


@pytest.mark.parametrize("selection", SELECTIONS, ids=repr)
def test_report_history_is_every_succeeded_run_of_the_rows_configurations(
    web_store_url: str, selection: Selection
) -> None:
    with open_store(web_store_url) as store, store.reading() as conn:
        rows = seed_rows(conn, selection)
        got = report_history(conn, rows, config_key)
        everything = _every_succeeded_run(conn)
    assert rows
    keys = {config_key(r) for r in rows}
    expected = sorted(
        (h for h in everything if config_key(h) in keys),
        key=lambda h: (h["finished_at"], str(h["run_id"])),
    )
    assert [dict(r) for r in got] == expected
    # the configurations of a vendor hold runs of other precisions and hyper-parameters too,
    # which the history must leave out
    assert len({config_key(h) for h in everything}) > len(keys) or selection == Selection()


def _convergence_reading_every_reference(
    conn: Connection, rows: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """convergence_checks as it was: every reference's curve read again from the store."""
    chosen = [r for r in rows if r.get("status", "succeeded") == "succeeded"]
    mine = curves_of(conn, chosen)
    earlier = {}
    for row in chosen:
        history = configuration_history(conn, ConfigKey(*config_key(row)))
        before = [
            h
            for h in history
            if (h["finished_at"], str(h["run_id"])) < (row["finished_at"], str(row["run_id"]))
        ]
        earlier[str(row["run_id"])] = before[-REFERENCE_RUNS:]
    ref_curves = curves_of(conn, [h for found in earlier.values() for h in found])
    found = {}
    for run_id, curve in mine.items():
        refs = [
            ref_curves[str(h["run_id"])] for h in earlier[run_id] if str(h["run_id"]) in ref_curves
        ]
        result = check(curve, refs, None)
        if result is not None:
            found[run_id] = result
    return found


@pytest.mark.parametrize("selection", SELECTIONS, ids=repr)
def test_convergence_checks_reuse_the_rows_curves_with_the_same_verdicts(
    web_store_url: str, selection: Selection
) -> None:
    with open_store(web_store_url) as store, store.reading() as conn:
        rows = seed_rows(conn, selection)
        got = convergence_checks(conn, rows)
        expected = _convergence_reading_every_reference(conn, rows)
        # one run, as its page checks it: references outside the rows, runs after it too
        singles = [rows[-1:], rows[len(rows) // 2 : len(rows) // 2 + 1]]
        one_run = [convergence_checks(conn, one) for one in singles]
        expected_one_run = [_convergence_reading_every_reference(conn, one) for one in singles]
    assert got == expected
    assert one_run == expected_one_run
    if selection == Selection():
        assert got and any(c.references for c in got.values())  # the data has references


@pytest.mark.parametrize("selection", SELECTIONS, ids=repr)
def test_seed_flags_of_whole_configurations_need_no_second_read(
    web_store_url: str, selection: Selection
) -> None:
    with open_store(web_store_url) as store, store.reading() as conn:
        rows = seed_rows(conn, selection)
        second_read = flag_inputs(conn, rows, HISTORY_RUNS)
    flagged = flag_history(rows, HISTORY_RUNS)
    assert flagged == flag_history(second_read, HISTORY_RUNS)
    if selection.vendor == "metax" and selection.topology in (None, "2x8"):
        assert REGRESSED_RUN in flagged


def _keys(conn: Connection) -> list[ConfigKey]:
    return [
        ConfigKey(c["vendor"], c["config"], c["precision"], c["fix_hp"])
        for c in configurations(conn)
    ]


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def test_whole_history_moments_give_the_runs_interval_and_spread(web_store_url: str) -> None:
    with open_store(web_store_url) as store, store.reading() as conn:
        keys = _keys(conn)
        found = {
            key: (whole_history_moments(conn, key), configuration_history(conn, key))
            for key in keys
        }
    assert len(keys) >= 4
    compared = 0
    for key, (moments, rows) in found.items():
        assert rows
        for metric in METRICS:
            values = [r.get(metric) for r in rows]
            expected, expected_spread = interval_of(values), spread(values)
            if expected is None:
                assert metric not in moments, (key, metric)
                continue
            got = moments[metric].interval()
            assert got is not None and got.n == expected.n, (key, metric)
            assert _close(got.mean, expected.mean) and _close(got.sd, expected.sd), (key, metric)
            assert _close(got.half_width, expected.half_width), (key, metric)
            shown = spread_of_moments(moments[metric])
            assert shown is not None and expected_spread is not None
            assert (shown.n, shown.min, shown.max) == (
                expected_spread.n,
                expected_spread.min,
                expected_spread.max,
            )
            assert _close(shown.sd, expected_spread.sd), (key, metric)
            for a, b in ((got.mean, expected.mean), (got.half_width, expected.half_width)):
                assert units.metric(metric, a) == units.metric(metric, b)
            compared += 1
    assert compared >= 4 * len(METRICS) - 4


def _level(html: str) -> tuple[str, str]:
    """The page's two lines about the level: runs, mean ± sd, min, max; and the intervals
    (less the words that name the window: "finished from", "Mean of the runs shown")."""
    runs = re.search(r'<p id="history-count">(.*?)</p>', html, re.S)
    level = re.search(r'<p id="history-level">Mean of [^:]*:(.*?)</p>', html, re.S)
    assert runs and level, html[:2000]
    return re.sub(r" finished from [^;]+", "", runs.group(1)), level.group(1)


@pytest.mark.parametrize("metric", METRICS)
def test_history_page_shows_the_same_level_from_summaries_as_from_runs(
    web_store_url: str, metric: str
) -> None:
    from orchestrator.web.app import create_app

    with open_store(web_store_url) as store, store.reading() as conn:
        keys = _keys(conn)
    with TestClient(create_app(web_store_url)) as client:
        for key in keys:
            query = {"vendor": key.vendor, "config": key.config, "precision": key.precision}
            query.update(fix_hp=key.fix_hp, metric=metric)
            summary = client.get(f"/history?{urlencode(query)}")
            from_runs = client.get(f"/history?{urlencode({**query, 'since': '2000-01-01'})}")
            assert summary.status_code == from_runs.status_code == 200
            assert _level(summary.text) == _level(from_runs.text), key


def test_the_newest_runs_are_flagged_as_over_the_whole_history(web_store_url: str) -> None:
    """Every suffix of every configuration's history (the newest n, or those from a date):
    the HISTORY_RUNS runs before it, and its flags equal to the whole history's for its runs.
    The regressed run among the last few of its configuration: without the runs before them
    it would have fewer than MIN_HISTORY earlier runs and no flag."""
    with open_store(web_store_url) as store, store.reading() as conn:
        histories = {key: configuration_history(conn, key) for key in _keys(conn)}
        checked = 0
        for key, every in histories.items():
            whole = flag_history(every, HISTORY_RUNS)
            for n in range(1, len(every) + 1):
                newest = configuration_history(conn, key, last=n)
                assert newest == every[-n:], (key, n)
                before = runs_before(conn, key, newest, HISTORY_RUNS)
                assert before == every[-n - HISTORY_RUNS : -n], (key, n)
                shown = {r["run_id"] for r in newest}
                expected = {run_id: f for run_id, f in whole.items() if run_id in shown}
                assert history_regressions(conn, key, newest) == expected, (key, n)
                checked += REGRESSED_RUN in expected
    assert checked >= 2


def test_the_runs_before_the_shown_ones_count_a_run_that_finished_with_the_first(
    sqlite_web_store: str, tmp_path: Path
) -> None:
    """Two runs finished at the same time, the shown runs starting with the later (by run
    id): the other one is among the runs before them, and the k before are still k."""
    copy = tmp_path / "ties.db"
    shutil.copy(sqlite_web_store.removeprefix("sqlite:///"), copy)
    url = f"sqlite:///{copy}"
    key = ConfigKey("metax", "MXC500 2x8", "fp32", "bs=16, lr=0.08, epochs=2")
    with open_store(url) as store:
        with store.engine.begin() as conn:
            every = configuration_history(conn, key)
            tied = every[-3]["finished_at"]
            conn.execute(
                update(Run).where(Run.run_id == every[-4]["run_id"]).values(finished_at=tied)
            )
        with store.reading() as conn:
            every = configuration_history(conn, key)
            assert every[-4]["finished_at"] == every[-3]["finished_at"] == tied
            for n in range(1, len(every)):
                newest = configuration_history(conn, key, last=n)
                assert newest == every[-n:], n
                assert runs_before(conn, key, newest, 2) == every[-n - 2 : -n], n
