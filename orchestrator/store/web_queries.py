"""The reads of the results pages (`orchestrator serve`) and of `orchestrator compare`: runs pages
with filters, sorting and pagination, one run's extras (monitor series downsampled in the
database, rank 0's resolved configuration), campaigns and the queue. Configurations, history,
scaling and compare's reads are in config_queries.py.

Every filter is a bound parameter; the web layer runs no SQL of its own. Queries that the seed
table and the CLI already have (run_detail, seed_rows, environment) stay in queries.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Integer, Select, cast, func, or_, select
from sqlalchemy.engine import RowMapping

from orchestrator.store.models import (
    Campaign,
    MonitorSample,
    NodeLease,
    RankResult,
    Run,
    RunNode,
)

# Sort keys of the runs page -> column; the run id breaks ties.
RUN_SORTS: dict[str, Any] = {
    "submitted": Run.submitted_at,
    "finished": Run.finished_at,
    "run": Run.run_id,
    "status": Run.status,
    "config": Run.config_label,
    "precision": Run.precision,
    "e2e_time": Run.e2e_time_s,
    "p_whole": Run.p_whole,
    "p_train": Run.p_train,
    "p_core": Run.p_core,
    "map": Run.map,
}
MAX_PER_PAGE = 500
# A row of the runs page: the seed table's numbers and what the filters show.
_RUN_ROW: tuple[Any, ...] = (
    Run.run_id,
    Run.status,
    Run.vendor,
    Run.topology,
    Run.config_label.label("config"),
    Run.precision,
    Run.fix_hp,
    Run.e2e_time_s.label("e2e_time"),
    Run.p_whole,
    Run.p_train,
    Run.p_core,
    Run.map,
    Run.mem_label.label("mem"),
    Run.mem_source,
    Run.source,
    Run.campaign_id,
    Run.submitted_at,
    Run.finished_at,
    Run.reason,
)


@dataclass(frozen=True)
class RunFilter:
    """The runs page's query string, parsed. `text` matches the run id or the failure reason."""

    vendor: str | None = None
    topology: str | None = None
    precision: str | None = None
    status: str | None = None
    campaign: str | None = None
    since: datetime | None = None  # submitted on or after
    until: datetime | None = None  # submitted before
    text: str | None = None
    sort: str = "submitted"
    descending: bool = True
    page: int = 1
    per_page: int = 50


@dataclass(frozen=True)
class RunsPage:
    rows: list[RowMapping]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def _filtered(query: Select[Any], f: RunFilter) -> Select[Any]:
    for column, value in (
        (Run.vendor, f.vendor),
        (Run.topology, f.topology),
        (Run.precision, f.precision),
        (Run.status, f.status),
        (Run.campaign_id, f.campaign),
    ):
        if value:
            query = query.where(column == value)
    if f.since:
        query = query.where(Run.submitted_at >= f.since)
    if f.until:
        query = query.where(Run.submitted_at < f.until)
    if f.text:
        query = query.where(
            or_(
                Run.run_id.contains(f.text, autoescape=True),
                Run.reason.contains(f.text, autoescape=True),
            )
        )
    return query


def runs_page(conn: Connection, f: RunFilter) -> RunsPage:
    """One page of runs with the seed table's numbers; the total counts every matching run."""
    total = conn.scalar(_filtered(select(func.count()).select_from(Run), f)) or 0
    per_page = max(1, min(f.per_page, MAX_PER_PAGE))
    page = max(1, min(f.page, max(1, -(-total // per_page))))
    column = RUN_SORTS.get(f.sort, Run.submitted_at)
    order = column.desc().nulls_last() if f.descending else column.asc().nulls_last()
    tie = Run.run_id.desc() if f.descending else Run.run_id.asc()
    query = select(*_RUN_ROW)
    query = _filtered(query, f).order_by(order, tie).limit(per_page).offset((page - 1) * per_page)
    return RunsPage(list(conn.execute(query).mappings()), total, page, per_page)


@dataclass(frozen=True)
class FilterOptions:
    vendors: list[str]
    topologies: list[str]
    precisions: list[str]
    campaigns: list[tuple[str, str]]  # (campaign_id, name)


def filter_options(conn: Connection) -> FilterOptions:
    """The values the runs page offers in its drop-downs (one index scan)."""
    combos = conn.execute(select(Run.vendor, Run.topology, Run.precision).distinct()).all()
    campaigns = conn.execute(
        select(Campaign.campaign_id, Campaign.name).order_by(Campaign.created_at.desc())
    ).all()
    return FilterOptions(
        sorted({c.vendor for c in combos}),
        sorted({c.topology for c in combos}, key=_topology_order),
        sorted({c.precision for c in combos}),
        [(c.campaign_id, c.name) for c in campaigns],
    )


def _topology_order(topology: str) -> tuple[int, str]:
    nodes, _, per_node = topology.partition("x")
    try:
        return (int(nodes) * int(per_node), topology)
    except ValueError:
        return (1 << 30, topology)


# -- one run -------------------------------------------------------------------------------------


def rank_zero_config(conn: Connection, run_id: str) -> dict[str, Any] | None:
    """Rank 0's `config` block: every hyper-parameter as the workload resolved it."""
    document = conn.scalar(
        select(RankResult.document).where(RankResult.run_id == run_id, RankResult.rank == 0)
    )
    if not isinstance(document, dict):
        return None
    config = document.get("config")
    return config if isinstance(config, dict) else None


@dataclass
class Series:
    """One monitor metric of one node (or one device of it), downsampled."""

    metric: str
    node: str
    device: int | None
    points: list[tuple[float, float]] = field(default_factory=list)  # (bucket middle s, mean)
    samples: int = 0  # stored samples behind the points


def _epoch_seconds(conn: Connection, column: Any) -> ColumnElement[Any]:
    if conn.dialect.name == "sqlite":  # timestamps are UTC text there
        return (func.julianday(column) - 2440587.5) * 86400.0
    return func.extract("epoch", column)


def monitor_series(conn: Connection, run_id: str, buckets: int = 120) -> list[Series]:
    """Every monitor series of a run, averaged by the database into at most `buckets` time
    buckets, so a run with 100,000 samples sends a few thousand rows."""
    sample = MonitorSample
    first, last = conn.execute(
        select(func.min(sample.ts), func.max(sample.ts)).where(sample.run_id == run_id)
    ).one()
    if first is None:
        return []
    t0 = first.timestamp()
    width = max((last.timestamp() - t0) / buckets, 1e-3)
    offset = _epoch_seconds(conn, sample.ts) - t0
    if conn.dialect.name == "sqlite":  # CAST truncates, which is floor for offsets >= 0
        bucket: ColumnElement[Any] = cast(offset / width, Integer)
    else:
        bucket = func.floor(offset / width)
    bucket = bucket.label("bucket")
    keys = (sample.metric, sample.node_name, sample.device_index)
    query = (
        select(
            *keys,
            bucket,
            func.avg(sample.value).label("value"),
            func.count().label("n"),
        )
        .where(sample.run_id == run_id, sample.metric != "monitor_tool_missing")
        .group_by(*keys, bucket)
    )
    found: dict[tuple[str, str, int | None], Series] = {}
    for metric, node, device, index, value, n in conn.execute(query):
        series = found.get((metric, node, device))
        if series is None:
            series = found[(metric, node, device)] = Series(metric, node, device)
        # x: the bucket's middle (an average of the times would cost a second conversion of
        # every sample's timestamp)
        series.points.append((round((int(index) + 0.5) * width, 3), float(value)))
        series.samples += int(n)
    for series in found.values():
        series.points.sort()
    return [found[k] for k in sorted(found, key=_series_order)]


def _series_order(key: tuple[str, str, int | None]) -> tuple[str, str, int]:
    metric, node, device = key
    return (metric, node, -1 if device is None else device)


def configuration_runs(conn: Connection, run: RowMapping, limit: int = 20) -> list[RowMapping]:
    """The latest runs of a run's configuration (vendor, config, precision, fix_hp), any status."""
    query = (
        select(
            Run.run_id,
            Run.status,
            Run.p_core,
            Run.finished_at,
            Run.submitted_at,
        )
        .where(
            Run.vendor == run["vendor"],
            Run.config_label == run["config_label"],
            Run.precision == run["precision"],
            Run.fix_hp == run["fix_hp"],
        )
        .order_by(Run.submitted_at.desc(), Run.run_id.desc())
        .limit(limit)
    )
    return list(conn.execute(query).mappings())


# -- campaigns and the queue ---------------------------------------------------------------------


def campaign_progress(conn: Connection, campaign_id: str | None = None) -> list[dict[str, Any]]:
    """Each campaign (newest first) with how many of its runs are in each status."""
    query = select(
        Campaign.campaign_id, Campaign.name, Campaign.status, Campaign.created_by
    ).add_columns(Campaign.created_at, Campaign.finished_at)
    if campaign_id is not None:
        query = query.where(Campaign.campaign_id == campaign_id)
    campaigns = [
        dict(r) for r in conn.execute(query.order_by(Campaign.created_at.desc())).mappings()
    ]
    counts_query = (
        select(Run.campaign_id, Run.status, func.count().label("n"))
        .where(Run.campaign_id.is_not(None))
        .group_by(Run.campaign_id, Run.status)
    )
    if campaign_id is not None:
        counts_query = counts_query.where(Run.campaign_id == campaign_id)
    counts: dict[str, dict[str, int]] = {}
    for row in conn.execute(counts_query):
        counts.setdefault(row.campaign_id, {})[row.status] = int(row.n)
    for campaign in campaigns:
        campaign["counts"] = counts.get(campaign["campaign_id"], {})
        campaign["total"] = sum(campaign["counts"].values())
    return campaigns


def campaign_spec(conn: Connection, campaign_id: str) -> dict[str, Any] | None:
    spec = conn.scalar(select(Campaign.spec).where(Campaign.campaign_id == campaign_id))
    return spec if isinstance(spec, dict) else None


@dataclass(frozen=True)
class QueueState:
    running: list[dict[str, Any]]  # with "nodes": [(node_name, address)], "holder", "expires_at"
    queued: list[RowMapping]


def queue_state(conn: Connection, queued_limit: int = 200) -> QueueState:
    """What runs now and where (nodes, lease holder), and what waits, oldest first."""
    running = [
        dict(r)
        for r in conn.execute(
            select(
                Run.run_id,
                Run.vendor,
                Run.topology,
                Run.precision,
                Run.cluster,
                Run.backend,
                Run.campaign_id,
                Run.submitted_by,
                Run.submitted_at,
                Run.started_at,
            )
            .where(Run.status == "running")
            .order_by(Run.submitted_at, Run.run_id)
        ).mappings()
    ]
    ids = [r["run_id"] for r in running]
    nodes: dict[str, list[tuple[str, str | None]]] = {}
    leases: dict[str, tuple[str, datetime]] = {}
    if ids:
        for node in conn.execute(
            select(RunNode.run_id, RunNode.node_name, RunNode.address)
            .where(RunNode.run_id.in_(ids))
            .order_by(RunNode.run_id, RunNode.node_rank)
        ):
            nodes.setdefault(node.run_id, []).append((node.node_name, node.address))
        for lease in conn.execute(
            select(NodeLease.run_id, NodeLease.holder, NodeLease.expires_at).where(
                NodeLease.run_id.in_(ids)
            )
        ):
            leases[lease.run_id] = (lease.holder, lease.expires_at)
    for run in running:
        run["nodes"] = nodes.get(run["run_id"], [])
        holder = leases.get(run["run_id"])
        run["holder"], run["expires_at"] = holder if holder else (None, None)
    queued = list(
        conn.execute(
            select(
                Run.run_id,
                Run.vendor,
                Run.topology,
                Run.precision,
                Run.cluster,
                Run.campaign_id,
                Run.submitted_by,
                Run.submitted_at,
            )
            .where(Run.status == "queued")
            .order_by(Run.submitted_at, Run.run_id)
            .limit(queued_limit)
        ).mappings()
    )
    return QueueState(running, queued)
