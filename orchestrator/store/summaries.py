"""Per-configuration summaries (config_summaries): a configuration's whole history in one row,
so the pages and reports over all of it read a few rows instead of rescanning its runs.

A summary row is, by definition, an aggregate of the runs with its key (vendor, hardware label
or else vendor, config label, topology, precision, fix_hp): runs of any status, succeeded runs,
and over the succeeded ones each metric's count, sum, sum of squares, min and max, the first
and last finish, and the latest RECENT_RUNS runs. Every write that can change one (publish,
re-publish, delete, copy, a status change into or out of `succeeded`, a new run) calls
`refresh` for the scopes it touched, in its own transaction: the scope's rows are recomputed
from its runs through ix_runs_config_time, so they can never drift from the runs.
`rebuild` recomputes every row (`orchestrator db rebuild-summaries`); `recompute` is the same
definition in plain Python over the raw rows, which the tests compare the table with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import astuple
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, case, delete, func, select, text

from orchestrator import units
from orchestrator.store import verdicts
from orchestrator.store.bulk import insert_rows
from orchestrator.store.models import RECENT_RUNS, SUMMARY_METRICS, ConfigSummary, Run
from orchestrator.store.scopes import Scope, Touched, scope_filter, touched
from orchestrator.store.summary_extras import HARDWARE, extras

KEY = ("vendor", "hardware", "config_label", "topology", "precision", "fix_hp")


def scopes_of(conn: Connection, run_ids: Iterable[str]) -> Touched:
    """What a write of these runs touches, read before or after it (store/scopes.py)."""
    return touched(conn, run_ids)


def _aggregates() -> list[Any]:
    succeeded = Run.status == "succeeded"
    columns: list[Any] = [
        Run.vendor,
        HARDWARE.label("hardware"),
        Run.config_label,
        Run.topology,
        Run.precision,
        Run.fix_hp,
        func.max(Run.nnodes).label("nnodes"),
        func.max(Run.nproc_per_node).label("nproc_per_node"),
        func.count().label("runs"),
        func.sum(case((succeeded, 1), else_=0)).label("succeeded"),
        func.min(case((succeeded, Run.finished_at))).label("first_finished_at"),
        func.max(case((succeeded, Run.finished_at))).label("last_finished_at"),
    ]
    for name in SUMMARY_METRICS:
        value = case((succeeded, Run.__table__.c[name]))
        columns += [
            func.count(value).label(f"{name}_n"),
            func.sum(value).label(f"{name}_sum"),
            func.sum(value * value).label(f"{name}_sum_sq"),
            func.min(value).label(f"{name}_min"),
            func.max(value).label(f"{name}_max"),
        ]
    return columns


def _group(query: Any) -> Any:
    return query.group_by(
        Run.vendor, HARDWARE, Run.config_label, Run.topology, Run.precision, Run.fix_hp
    )


def _recent(conn: Connection, scope: Scope, hardware: str) -> list[dict[str, Any]]:
    metrics = [Run.__table__.c[m] for m in SUMMARY_METRICS]
    query = (
        select(Run.run_id, Run.finished_at, *metrics)
        .where(
            scope_filter(Run, scope),
            HARDWARE == hardware,
            Run.status == "succeeded",
            Run.finished_at.is_not(None),
        )
        .order_by(Run.finished_at.desc(), Run.run_id.desc())
        .limit(RECENT_RUNS)
    )
    return [_recent_item(row) for row in conn.execute(query).mappings()]


def _recent_item(row: Mapping[Any, Any]) -> dict[str, Any]:
    item = {"run_id": row["run_id"], "finished_at": _iso(row["finished_at"])}
    item.update({m: row[m] for m in SUMMARY_METRICS})
    return item


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat()


def _summary_row(
    conn: Connection,
    row: Mapping[Any, Any],
    before: Mapping[str, Any] | None = None,
    added: Collection[str] | None = None,
) -> dict[str, Any]:
    out = dict(row)
    scope = Scope(
        row["vendor"], row["topology"], row["precision"], row["config_label"], row["fix_hp"]
    )
    out["succeeded"] = int(out["succeeded"] or 0)
    out["recent"] = _recent(conn, scope, row["hardware"]) if out["succeeded"] else []
    out.update(extras(conn, scope, row["hardware"], before, added))
    return out


def refresh(conn: Connection, changed: Touched, added_only: bool = False) -> None:
    """Recompute the summary rows of these scopes from their runs, and the verdicts of their
    runs from the touched ones on (store/verdicts.py), in the caller's transaction.
    `added_only`: the write only added the touched runs to their scopes' succeeded runs (a
    publish of new runs, a move into `succeeded`): the environment and memory peak then take
    the old row and those runs (store/summary_extras.py) instead of every run."""
    ordered = changed.scopes
    _lock(conn, ordered)
    for scope in ordered:
        where = scope_filter(ConfigSummary, scope)
        added = changed.spans[scope].run_ids if added_only else None
        before: dict[str, dict[str, Any]] = {}
        if added is not None:
            stored_rows = conn.execute(select(ConfigSummary).where(where)).mappings()
            before = {str(r["hardware"]): dict(r) for r in stored_rows}
        conn.execute(delete(ConfigSummary).where(where))
        query = _group(select(*_aggregates()).where(scope_filter(Run, scope)))
        rows = [
            _summary_row(conn, r, before.get(r["hardware"]), added)
            for r in conn.execute(query).mappings()
        ]
        insert_rows(conn, ConfigSummary, rows)
    verdicts.refresh(conn, changed)


def _lock(conn: Connection, scopes: Sequence[Scope]) -> None:
    """On PostgreSQL, one refresh of a scope at a time, until the transaction ends: two workers
    publishing runs of one configuration would otherwise both delete and insert its row (the
    second fails on the primary key) or each count only its own new run. The one that waits
    reads after the other's commit (READ COMMITTED), so it counts both. SQLite serialises
    writers already. Taken in one order, so two refreshes never wait on each other."""
    if conn.dialect.name != "postgresql":
        return
    for scope in scopes:
        conn.execute(select(func.pg_advisory_xact_lock(_lock_key(scope))))


def _lock_key(scope: Scope) -> int:
    digest = hashlib.sha256(repr(("config_summaries", *astuple(scope))).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def rebuild(conn: Connection) -> int:
    """Every summary row again, from the runs (one grouped scan); rows written."""
    if conn.dialect.name == "postgresql":  # no refresh may insert between the delete and ours
        conn.execute(text("LOCK TABLE config_summaries IN SHARE ROW EXCLUSIVE MODE"))
    conn.execute(delete(ConfigSummary))
    rows = [_summary_row(conn, r) for r in conn.execute(_group(select(*_aggregates()))).mappings()]
    insert_rows(conn, ConfigSummary, rows)
    return len(rows)


def stored(conn: Connection) -> list[dict[str, Any]]:
    """Every summary row, in key order."""
    query = select(ConfigSummary).order_by(*(ConfigSummary.__table__.c[k] for k in KEY))
    return [dict(r) for r in conn.execute(query).mappings()]


# -- the definition in plain Python (tests, and what docs/schema.md says a row is) -------------


def recompute(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Summary rows from raw runs rows (dicts with the runs columns), in key order."""
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for run in runs:
        hardware = run["hardware_label"] or run["vendor"]
        key = (run["vendor"], hardware, run["config_label"], run["topology"], run["precision"])
        groups.setdefault((*key, run["fix_hp"]), []).append(run)
    return [_recomputed(key, groups[key]) for key in sorted(groups)]


def _recomputed(key: tuple[str, ...], runs: list[Mapping[str, Any]]) -> dict[str, Any]:
    good = [r for r in runs if r["status"] == "succeeded"]
    finished = [r["finished_at"] for r in good if r["finished_at"] is not None]
    row: dict[str, Any] = dict(zip(KEY, key))
    row.update(
        nnodes=max(r["nnodes"] for r in runs),
        nproc_per_node=max(r["nproc_per_node"] for r in runs),
        runs=len(runs),
        succeeded=len(good),
        first_finished_at=min(finished, default=None),
        last_finished_at=max(finished, default=None),
    )
    for name in SUMMARY_METRICS:
        values = [float(r[name]) for r in good if r[name] is not None]
        row[f"{name}_n"] = len(values)
        row[f"{name}_sum"] = sum(values) if values else None
        row[f"{name}_sum_sq"] = sum(v * v for v in values) if values else None
        row[f"{name}_min"] = min(values, default=None)
        row[f"{name}_max"] = max(values, default=None)
    latest = sorted(
        (r for r in good if r["finished_at"] is not None),
        key=lambda r: (r["finished_at"], r["run_id"]),
        reverse=True,
    )[:RECENT_RUNS]
    row["recent"] = [_recent_item(r) for r in latest]
    in_order = sorted(good, key=lambda r: (r["finished_at"], r["run_id"]))
    with_mem = [r for r in in_order if r["mem_label"]]
    peak = max(with_mem, key=lambda r: units.mem_used_gib(r["mem_label"]), default=None)
    row["mem_peak"] = peak["mem_label"] if peak else None
    row["mem_peak_source"] = peak["mem_source"] if peak else None
    row["mem_measured"] = sum(units.measured_here(r["p_core"], r["source"]) for r in good)
    return row
