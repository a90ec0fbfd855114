"""The parts of a summary row (config_summaries, 0010) that are not SQL aggregates: the memory
peak and the environment block's parts. Computed over the configuration's succeeded runs on the
hardware label; or, when a write only added runs (a publish, a run that succeeded), from the
row as it was and the added runs alone, so that publishing the newest run does not read its
configuration's thousands of node rows (650 ms at 100,000 runs on SQLite)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from sqlalchemy import Connection, and_, func, select

from orchestrator import units
from orchestrator.store.environments import (
    EnvironmentParts,
    gate_query,
    node_query,
    on_gated,
    parts_of,
)
from orchestrator.store.models import Run
from orchestrator.store.scopes import Scope, scope_filter

HARDWARE = func.coalesce(Run.hardware_label, Run.vendor)


def succeeded(scope: Scope, hardware: str) -> Any:
    """The succeeded runs of a scope on one hardware label (a summary row's runs)."""
    return and_(scope_filter(Run, scope), HARDWARE == hardware, Run.status == "succeeded")


def extras(
    conn: Connection,
    scope: Scope,
    hardware: str,
    before: Mapping[str, Any] | None,
    added: Collection[str] | None,
) -> dict[str, Any]:
    """The row's mem_peak, mem_peak_source, mem_measured and environment. `before`: the row
    as stored before the write; `added`: the runs the write added, when it only added (None:
    it may have removed or changed runs, and every run is read again)."""
    runs = succeeded(scope, hardware)
    if added is not None and before is not None and before["environment"] is not None:
        new = and_(runs, Run.run_id.in_(sorted(added)))
        mem = _mem(conn, new, before)
        if mem is not None:
            parts = EnvironmentParts.of_document(before["environment"])
            parts.add(_parts(conn, new))
            return {**mem, "environment": parts.document()}
    return {**_mem_of_all(conn, runs), "environment": _parts(conn, runs).document()}


def _parts(conn: Connection, runs: Any) -> EnvironmentParts:
    return parts_of(
        conn, [node_query().where(runs)], [gate_query().join(Run, on_gated()).where(runs)]
    )


def _mem_rows(conn: Connection, runs: Any) -> list[tuple[Any, ...]]:
    query = select(Run.mem_label, Run.mem_source, Run.p_core, Run.source).where(runs)
    return [tuple(r) for r in conn.execute(query.order_by(Run.finished_at, Run.run_id))]


def _mem_of_all(conn: Connection, runs: Any) -> dict[str, Any]:
    """The memory peak over the runs (the label with the most GiB used; the earliest run's
    among equals, as the seed table's group has it) and how many runs' mem is ours."""
    peak: tuple[float, str, str | None] | None = None
    measured = 0
    for label, source, p_core, run_source in _mem_rows(conn, runs):
        measured += units.measured_here(p_core, run_source)
        if label and (peak is None or units.mem_used_gib(label) > peak[0]):
            peak = (units.mem_used_gib(label), str(label), source)
    return {
        "mem_peak": peak[1] if peak else None,
        "mem_peak_source": peak[2] if peak else None,
        "mem_measured": measured,
    }


def _mem(conn: Connection, added: Any, before: Mapping[str, Any]) -> dict[str, Any] | None:
    """The row's memory fields with the added runs counted in; None when an added run ties
    the peak with another label or source (which of the two is the earlier run then needs
    every run read)."""
    found = {k: before[k] for k in ("mem_peak", "mem_peak_source")}
    found["mem_measured"] = int(before["mem_measured"] or 0)
    top = units.mem_used_gib(str(before["mem_peak"])) if before["mem_peak"] else None
    for label, source, p_core, run_source in _mem_rows(conn, added):
        found["mem_measured"] += units.measured_here(p_core, run_source)
        if not label:
            continue
        used = units.mem_used_gib(label)
        if top is not None and used == top:
            if (str(label), source) != (found["mem_peak"], found["mem_peak_source"]):
                return None
            continue
        if top is None or used > top:
            top, found["mem_peak"], found["mem_peak_source"] = used, str(label), source
    return found
