"""The whole-history views read less and show the same, on SQLite and PostgreSQL: each read is
compared with the straightforward one it replaced (the web store of test_web_routes: ingested
runs of several configurations, precisions and hyper-parameters, a regression, epochs).

- report's history (store/history.py: configuration_history) names every field of the
  configuration in the query: the same rows as every succeeded run filtered by config_key.
- the convergence checks take a reference's curve from the runs' own curves when it is one of
  them: the same verdicts as reading every reference's curve again.
- the seed table of whole configurations flags its rows against themselves: the same flags as
  against flag_inputs' second read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from sqlalchemy import Connection, select

from orchestrator.reports.convergence import REFERENCE_RUNS, check
from orchestrator.reports.convergence_reads import convergence_checks, curves_of
from orchestrator.reports.stats import HISTORY_RUNS, config_key, flag_history
from orchestrator.store import open_store
from orchestrator.store.config_queries import ConfigKey, configuration_history, flag_inputs
from orchestrator.store.history import configuration_history as report_history
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
        latest_only = convergence_checks(conn, rows[-1:])  # references outside the rows
        expected_latest = _convergence_reading_every_reference(conn, rows[-1:])
    assert got == expected
    assert latest_only == expected_latest
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
