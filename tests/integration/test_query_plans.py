"""The queries behind the fixed-size pages read indexes, never a whole table, on both backends:
every statement a page's reads send is recorded (a cursor event) and EXPLAINed with its own
parameters.

How a plan is judged:
- SQLite: `EXPLAIN QUERY PLAN` may SEARCH or walk an index (`SCAN runs USING INDEX ...`, with
  the page's LIMIT), never `SCAN <table>` without an index; the runs page's sorts without
  filters need no `USE TEMP B-TREE FOR ORDER BY` (the index gives the order). SQLite plans
  without statistics as if every table were large, as a lab's store is: the test forgets what
  ANALYZE learnt of its small store.
- PostgreSQL: the test store is small, so the planner rightly prefers a sequential scan; the
  test sets `enable_seqscan = off` (and `enable_sort = off` for the sorts) in its own
  transaction, which makes the planner pick an index wherever one serves the query: a
  `Seq Scan` or `Sort` left in the plan means no index can serve it. bench/bench_web.py shows
  the planner choosing these plans by itself at 100,000 runs.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import Connection, event
from sqlalchemy.engine import make_url

from orchestrator.regressions import HISTORY_RUNS
from orchestrator.reports.compare_sides import load_sides
from orchestrator.reports.history_changes import history_regressions, load_history
from orchestrator.reports.whole_report import whole_view
from orchestrator.store import open_store
from orchestrator.store.config_queries import (
    ConfigKey,
    configuration_history,
    flag_inputs,
    runs_before,
    succeeded_runs,
    whole_history_moments,
)
from orchestrator.store.queries import Selection, environment, run_detail, run_warnings, seed_rows
from orchestrator.store.web_queries import (
    RUN_SORTS,
    RunFilter,
    campaign_progress,
    configuration_runs,
    filter_options,
    monitor_series,
    queue_state,
    rank_zero_config,
    runs_page,
)
from tests.support.web_fixtures import CAMPAIGN_ID, MONITORED_RUN

# Tables whose size grows with the history.
BIG = (
    "runs",
    "r",
    "rank_results",
    "run_epochs",
    "run_nodes",
    "monitor_samples",
    "run_status_history",
)


@contextmanager
def recorded(conn: Connection) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, params))

    event.listen(conn, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(conn, "before_cursor_execute", record)


def plan(conn: Connection, statement: str, params: Any, no_sort: bool) -> list[str]:
    if conn.dialect.name == "sqlite":
        rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
        return [str(r[-1]) for r in rows]
    with conn.begin_nested() if conn.in_transaction() else conn.begin():
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        if no_sort:
            conn.exec_driver_sql("SET LOCAL enable_sort = off")
        rows = conn.exec_driver_sql(f"EXPLAIN {statement}", params).all()
    return [str(r[0]) for r in rows]


def whole_table_reads(lines: list[str], no_sort: bool, limited: bool = True) -> list[str]:
    """The lines of a plan that read a whole table; `limited`: the statement has a LIMIT, which
    stops SQLite's walk of an index in order (`SCAN runs USING INDEX`) after one page."""
    bad = []
    for line in lines:
        scanned = re.search(r"\bSCAN (\w+)(?: AS \w+)?$", line)  # SQLite, no USING INDEX
        if scanned and scanned.group(1) in BIG:
            bad.append(line)
        walked = re.search(r"\bSCAN (\w+)(?: AS \w+)? USING (?:COVERING )?INDEX", line)
        if walked and walked.group(1) in BIG and not limited:
            bad.append(line)
        seq = re.search(r"Seq Scan on (\w+)", line)  # PostgreSQL
        if seq and seq.group(1) in BIG:
            bad.append(line)
        if no_sort and ("USE TEMP B-TREE FOR ORDER BY" in line or re.search(r"\bSort\b", line)):
            bad.append(line)
    return bad


def forget_statistics(url: str) -> None:
    """SQLite: drop what ANALYZE (run by `PRAGMA optimize` as connections close) learnt of the
    small test store, so that the planner plans as for a large history: with 23 runs known, a
    full scan is cheaper than 9 lookups by key, as it is not at 100,000."""
    if not url.startswith("sqlite"):
        return
    with sqlite3.connect(make_url(url).database or "") as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone():
            conn.execute("DELETE FROM sqlite_stat1")


@pytest.fixture(scope="module")
def check(web_store_url: str) -> Iterator[Callable[..., None]]:
    forget_statistics(web_store_url)
    with open_store(web_store_url) as store, store.engine.connect() as conn:

        def run(
            read: Callable[[Connection], Any], no_sort: bool = False, through: str | None = None
        ) -> None:
            """`through`: every statement on runs (or the seed_table view of them) must use this
            index and walk no other."""
            with recorded(conn) as statements:
                read(conn)
            assert statements
            for statement, params in statements:
                lines = plan(conn, statement, params, no_sort)
                limited = "LIMIT" in statement.upper() and through is None
                bad = whole_table_reads(lines, no_sort, limited)
                assert not bad, f"{statement}\n{params}\n" + "\n".join(lines)
                if through is not None and re.search(r"\bFROM (?:runs|seed_table)\b", statement):
                    assert through in "\n".join(lines), f"{statement}\n" + "\n".join(lines)

        yield run


@pytest.mark.parametrize("sort", sorted(RUN_SORTS))
@pytest.mark.parametrize("descending", [True, False])
def test_each_sort_of_the_runs_page_walks_an_index(
    check: Callable[..., None], sort: str, descending: bool
) -> None:
    for page in (1, 3):
        f = RunFilter(sort=sort, descending=descending, page=page, per_page=5)
        check(lambda conn, f=f: runs_page(conn, f), no_sort=True)


@pytest.mark.parametrize(
    "f",
    [
        RunFilter(status="failed"),
        RunFilter(vendor="metax", topology="2x8", status="succeeded"),
        RunFilter(since=datetime(2026, 1, 18, tzinfo=timezone.utc)),
        RunFilter(campaign=CAMPAIGN_ID, sort="p_core"),
        RunFilter(status="succeeded", sort="p_core", descending=False, page=2, per_page=5),
        RunFilter(text="2x8-metax"),
        RunFilter(text="NCCL", sort="p_core"),
    ],
    ids=["failed", "config", "since", "campaign", "succeeded-by-p_core", "search", "search-p_core"],
)
def test_filtered_runs_pages_read_no_whole_table(check: Callable[..., None], f: RunFilter) -> None:
    check(lambda conn: (runs_page(conn, f), filter_options(conn)))


def test_a_run_page_reads_no_whole_table(check: Callable[..., None]) -> None:
    def read(conn: Connection) -> None:
        detail = run_detail(conn, MONITORED_RUN)
        rank_zero_config(conn, MONITORED_RUN)
        assert monitor_series(conn, MONITORED_RUN)
        configuration_runs(conn, detail.run)

    check(read)


def test_the_seed_table_of_a_recent_window_reads_no_whole_table(check: Callable[..., None]) -> None:
    since = datetime(2026, 1, 20, tzinfo=timezone.utc) - timedelta(days=90)

    def read(conn: Connection) -> None:
        selection = Selection(vendor="metax", topology="2x8", precision="fp32", since=since)
        rows = seed_rows(conn, selection)
        assert rows
        environment(conn, selection)
        flag_inputs(conn, rows, 5)
        run_warnings(conn, [r["run_id"] for r in rows])

    check(read)


def test_the_seed_table_of_whole_configurations_reads_no_run(check: Callable[..., None]) -> None:
    """From config_summaries and run_verdicts: no statement reads runs at all."""

    def read(conn: Connection) -> None:
        with recorded(conn) as statements:
            view = whole_view(conn, "metax", "2x8", None)
        assert view is not None and view.groups
        assert not [s for s, _ in statements if re.search(r"\b(?:FROM|JOIN) runs\b", s)]

    check(read)


@pytest.mark.parametrize("since", [None, datetime(2026, 1, 16, tzinfo=timezone.utc)])
def test_a_configuration_history_page_walks_the_configuration_index(
    check: Callable[..., None], web_store_url: str, since: datetime | None
) -> None:
    """The history page's reads: the newest runs of the configuration (or those from `since`)
    and the runs before them for the flags, through ix_runs_config_time (in its order of
    finished_at; only runs that finished at the same time are sorted by run id); its count and
    level from config_summaries; the manifests around a change point by run id. PostgreSQL's
    planner, with no statistics of a tiny store, may walk ix_runs_status_time back instead (a
    walk the LIMIT stops as well): there only no sequential scan is required."""
    key = ConfigKey("metax", "MXC500 2x8", "fp32", "bs=16, lr=0.08, epochs=2")
    last = 3 if since is None else None

    def rows(conn: Connection) -> None:
        shown = configuration_history(conn, key, since, last)
        assert len(shown) == 3 if since is None else len(shown) > 3
        assert len(runs_before(conn, key, shown, HISTORY_RUNS)) == 7 - len(shown)

    def page(conn: Connection) -> None:
        found = load_history(conn, key, since, last)
        history_regressions(conn, key, found.rows)
        assert succeeded_runs(conn, key) == 7
        whole_history_moments(conn, key)

    sqlite = web_store_url.startswith("sqlite")
    check(rows, through="ix_runs_config_time" if sqlite else None)
    check(page)


def test_the_queue_page_reads_no_whole_table(check: Callable[..., None]) -> None:
    check(lambda conn: (queue_state(conn), campaign_progress(conn)))


def test_compare_reads_no_whole_table(check: Callable[..., None]) -> None:
    check(lambda conn: load_sides(conn, ["metax:2x8:fp32", "nvidia:2x8:amp", MONITORED_RUN]))


@pytest.mark.parametrize("sort", ["submitted", "p_core", "run"])
def test_a_campaign_page_reads_only_its_runs_through_the_campaign_index(
    check: Callable[..., None], sort: str
) -> None:
    """A campaign is a few hundred runs of a long history: its counts and its pages read them
    by ix_runs_campaign_id, not by walking a sort or status index over every run (which a
    LIMIT does not stop early when the campaign's runs are old)."""
    f = RunFilter(campaign=CAMPAIGN_ID, sort=sort, page=1, per_page=5)

    def read(conn: Connection) -> None:
        assert campaign_progress(conn, CAMPAIGN_ID)[0]["total"] == runs_page(conn, f).total > 0

    check(read, through="ix_runs_campaign_id")
