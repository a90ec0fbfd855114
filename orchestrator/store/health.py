"""The health checks' rows (docs/health.md): one health_checks row per probe, one
health_figures row per figure; a node's history; the figures that gated a run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, or_, select
from sqlalchemy.engine import RowMapping

from orchestrator.store import summaries
from orchestrator.store.models import HealthCheckRun, HealthFigure

# (check, node, peer, device, ranks): what a figure is of, the same over time.
FigureKey = tuple[str, str | None, str | None, int | None, int | None]
FIGURE_FIELDS = (
    "check_name",
    "node_name",
    "peer_name",
    "device_index",
    "ranks",
    "value",
    "unit",
    "expected",
    "expected_from",
    "fraction",
    "verdict",
    "exempt",
)


def record_check(
    conn: Connection,
    check: Mapping[str, Any],
    figures: Sequence[Mapping[str, Any]],
) -> int:
    """A health_checks row (cluster, topology, nodes, gated_run_id, backend, precision,
    started_at, took_s, ok, blamed, summary) and its figures (FIGURE_FIELDS each); its id."""
    check_id = conn.execute(
        insert(HealthCheckRun).values(**dict(check)).returning(HealthCheckRun.id)
    ).scalar_one()
    if figures:
        at = check["started_at"]
        rows = [{**{k: f[k] for k in FIGURE_FIELDS}, "check_id": check_id, "measured_at": at}
                for f in figures]  # fmt: skip
        conn.execute(insert(HealthFigure), rows)
    gated = check.get("gated_run_id")
    if gated and check.get("ok"):  # the gate line of its configuration's environment block
        summaries.refresh(conn, summaries.scopes_of(conn, [str(gated)]))
    return int(check_id)


def passing_history(
    conn: Connection, cluster: str, nodes: Sequence[str], precision: str | None, limit: int
) -> dict[FigureKey, list[float]]:
    """Recent figures of these nodes that were not failing, newest first, per FigureKey (at
    most `limit` each): the own medians a figure without an expected value is judged by."""
    query = (
        select(
            HealthFigure.check_name,
            HealthFigure.node_name,
            HealthFigure.peer_name,
            HealthFigure.device_index,
            HealthFigure.ranks,
            HealthFigure.value,
        )
        .join(HealthCheckRun, HealthCheckRun.id == HealthFigure.check_id)
        .where(
            HealthCheckRun.cluster == cluster,
            HealthFigure.verdict != "fail",
            or_(HealthFigure.node_name.in_(list(nodes)), HealthFigure.node_name.is_(None)),
        )
        .order_by(HealthFigure.measured_at.desc(), HealthFigure.id.desc())
        .limit(5000)
    )
    if precision is not None:
        query = query.where(HealthCheckRun.precision == precision)
    found: dict[FigureKey, list[float]] = {}
    for check, node, peer, device, ranks, value in conn.execute(query):
        values = found.setdefault((check, node, peer, device, ranks), [])
        if len(values) < limit:
            values.append(float(value))
    return found


def node_figures(
    conn: Connection, node: str, cluster: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """A node's figures over time, newest first: its devices, its intra-node all-reduce and
    the pairs it is in; with the check's time, topology and the run it gated."""
    query = (
        select(
            *_FIGURE_COLUMNS,
            HealthCheckRun.cluster,
            HealthCheckRun.topology,
            HealthCheckRun.gated_run_id,
        )
        .join(HealthCheckRun, HealthCheckRun.id == HealthFigure.check_id)
        .where(or_(HealthFigure.node_name == node, HealthFigure.peer_name == node))
        .order_by(HealthFigure.measured_at.desc(), HealthFigure.id)
        .limit(limit)
    )
    if cluster is not None:
        query = query.where(HealthCheckRun.cluster == cluster)
    return [_figure(row) for row in conn.execute(query).mappings()]


def run_gate(conn: Connection, run_id: str) -> list[dict[str, Any]]:
    """The health checks that gated a run (oldest first: a refusal, then the pass on other
    nodes), each with its figures."""
    checks = (
        conn.execute(
            select(HealthCheckRun.__table__)
            .where(HealthCheckRun.gated_run_id == run_id)
            .order_by(HealthCheckRun.started_at, HealthCheckRun.id)
        )
        .mappings()
        .all()
    )
    found = []
    for check in checks:
        figures = conn.execute(
            select(*_FIGURE_COLUMNS)
            .where(HealthFigure.check_id == check["id"])
            .order_by(HealthFigure.id)
        ).mappings()
        found.append(
            {
                "id": check["id"],
                "topology": check["topology"],
                "nodes": list(check["nodes"] or []),
                "started_at": check["started_at"].isoformat(),
                "took_s": check["took_s"],
                "ok": bool(check["ok"]),
                "blamed": list(check["blamed"] or []),
                "summary": check["summary"],
                "figures": [_figure(f) for f in figures],
            }
        )
    return found


_FIGURE_COLUMNS = [*(HealthFigure.__table__.c[k] for k in FIGURE_FIELDS), HealthFigure.measured_at]


def _figure(row: RowMapping) -> dict[str, Any]:
    found = dict(row)
    measured: datetime = found["measured_at"]
    found["measured_at"] = measured.isoformat()
    found["exempt"] = bool(found["exempt"])
    return found
