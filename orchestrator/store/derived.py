"""The rows derived from the runs (config_summaries, run_verdicts), as a whole: which
definitions they were computed with (derived_versions, migration 0010), rebuilt when the code's
differ. Readers that would trust them check `current` first and read the raw rows otherwise, so
a page is never wrong, only slower, between an upgrade of the code and `orchestrator db upgrade`
(which rebuilds them) or `orchestrator db rebuild-summaries`."""

from __future__ import annotations

from sqlalchemy import Connection, delete, select

from orchestrator.store import monitor_series, summaries, verdicts
from orchestrator.store.bulk import insert_rows
from orchestrator.store.models import DerivedVersion

# Bump the summaries' version when what a summary row holds or means changes.
VERSIONS = {
    "config_summaries": "2: counts, moments (J/image too), recent runs, mem peak, environment",
    "run_verdicts": verdicts.RULE,
}


def current(conn: Connection) -> bool:
    """Whether the derived rows were computed with this code's definitions."""
    rows = conn.execute(select(DerivedVersion.name, DerivedVersion.version))
    found = {str(name): str(version) for name, version in rows}
    return found == VERSIONS


def rebuild(conn: Connection) -> tuple[int, int]:
    """Summaries and verdicts again, from the runs, and their versions recorded:
    (summary rows, verdict rows)."""
    if conn.dialect.name == "postgresql":  # no publish may refresh a scope meanwhile
        conn.exec_driver_sql("LOCK TABLE run_verdicts IN SHARE ROW EXCLUSIVE MODE")
    found = summaries.rebuild(conn), verdicts.rebuild(conn)
    conn.execute(delete(DerivedVersion))
    insert_rows(conn, DerivedVersion, [{"name": k, "version": v} for k, v in VERSIONS.items()])
    return found


def rebuild_all(conn: Connection) -> tuple[int, int, int]:
    """rebuild, and every run's downsampled monitor series: (summary rows, verdict rows,
    monitored runs)."""
    configs, flagged = rebuild(conn)
    return configs, flagged, monitor_series.rebuild(conn)


def rebuild_if_stale(conn: Connection) -> bool:
    """rebuild when the rows are not current (a store just upgraded); whether it did."""
    if current(conn):
        return False
    rebuild(conn)
    return True
