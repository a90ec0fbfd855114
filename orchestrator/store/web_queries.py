"""The reads of the results pages (`orchestrator serve`) and of `orchestrator compare`: runs pages
with filters, sorting and pagination (index walks of one page, counts capped or from the
configuration summaries), one run's extras (monitor series as downsampled at publish, rank 0's
resolved configuration), campaigns and the queue. Configurations, history,
scaling and compare's reads are in config_queries.py.

Every filter is a bound parameter; the web layer runs no SQL of its own. Queries that the seed
table and the CLI already have (run_detail, seed_rows, environment) stay in queries.py.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, func, select
from sqlalchemy.engine import RowMapping

from orchestrator.store.models import (
    Campaign,
    ConfigSummary,
    NodeLease,
    RankResult,
    Run,
    RunNode,
)
from orchestrator.store.monitor_series import stored as stored_series
from orchestrator.store.search import (
    TextMatch,
    found_ids,
    index_matches,
    index_serves,
    searched,
    walks,
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
    total: int  # exact when `exact`, else a lower bound (the count stopped there)
    page: int
    per_page: int
    exact: bool = True

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def total_label(self) -> str:
        return f"{self.total:,}" if self.exact else f"{self.total:,}+"

    @property
    def pages_label(self) -> str:
        return str(self.pages) if self.exact else f"{self.pages}+"

    @property
    def has_next(self) -> bool:
        return self.page < self.pages or (not self.exact and len(self.rows) == self.per_page)


# The runs page counts matching runs up to this many (then says "10,000+"): an exact count of a
# filtered history would read every matching row on every request.
COUNT_CAP = 10_000
# Sort columns that are NULL for some runs (not finished, failed): their NULLs come last both
# ways, read as a second index range rather than with NULLS LAST, which no index serves on both
# backends.
_NULLABLE_SORTS = frozenset({"finished", "e2e_time", "p_whole", "p_train", "p_core", "map"})


def _filtered(
    conn: Connection, query: Select[Any], f: RunFilter, text: TextMatch | None = None
) -> Select[Any]:
    """`query` narrowed by the filter; `text`: how this request finds the text's runs."""
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
        query = searched(conn, query, text or TextMatch(f.text))
    return query


def _summary_total(conn: Connection, f: RunFilter) -> int | None:
    """The exact count from config_summaries, where the filter is one the summaries answer."""
    if f.campaign or f.since or f.until or f.text or f.status not in (None, "", "succeeded"):
        return None
    count = ConfigSummary.succeeded if f.status == "succeeded" else ConfigSummary.runs
    query = select(func.coalesce(func.sum(count), 0))
    for column, value in (
        (ConfigSummary.vendor, f.vendor),
        (ConfigSummary.topology, f.topology),
        (ConfigSummary.precision, f.precision),
    ):
        if value:
            query = query.where(column == value)
    return int(conn.scalar(query) or 0)


def _only_text(f: RunFilter) -> bool:
    others = (f.vendor, f.topology, f.precision, f.status, f.campaign, f.since, f.until)
    return not any(others)


def count_runs(
    conn: Connection, f: RunFilter, cap: int, text: TextMatch | None = None
) -> tuple[int, bool]:
    """How many runs match, and whether that is exact: from the summaries, else counted up to
    `cap` (a bounded index walk)."""
    exact = _summary_total(conn, f)
    if exact is not None:
        return exact, True
    matching = None
    if text is not None and text.ids is None and _only_text(f):
        # counted in the FTS5 table, which holds one row per run (its triggers): no run read
        matching = index_matches(conn, text.words, cap + 1)
    if matching is None:
        matching = _filtered(conn, select(Run.run_id), f, text).limit(cap + 1).subquery()
    n = int(conn.scalar(select(func.count()).select_from(matching)) or 0)
    return (n, True) if n <= cap else (cap, False)


def runs_page(conn: Connection, f: RunFilter) -> RunsPage:
    """One page of runs with the seed table's numbers. The total is exact from the summaries or
    up to COUNT_CAP runs (or as far as the page asked for), else a lower bound: no request reads
    more of the history than its page needs."""
    per_page = max(1, min(f.per_page, MAX_PER_PAGE))
    wanted = max(1, f.page)
    text = TextMatch(f.text, found_ids(conn, f.text)) if f.text else None
    if text is not None and text.ids == []:  # no statement on runs (`IN ()` would scan them)
        return RunsPage([], 0, 1, per_page, True)
    total, exact = count_runs(conn, f, max(COUNT_CAP, wanted * per_page), text)
    page = max(1, min(wanted, max(1, -(-total // per_page))))
    if text is not None and text.ids is None and index_serves(conn, text.words):
        text = replace(text, walk=walks(total, page * per_page, _history_size(conn)))
    rows = _page_rows(conn, f, per_page, (page - 1) * per_page, text)
    return RunsPage(rows, total, page, per_page, exact)


def _history_size(conn: Connection) -> int:
    """How many runs the store holds, from the configuration summaries."""
    return int(conn.scalar(select(func.coalesce(func.sum(ConfigSummary.runs), 0))) or 0)


def _not_by_index(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """The same order as `column`, but one no index gives: a campaign's page reads its few
    hundred runs by ix_runs_campaign_id (a search's, by the ids it found) and sorts them.
    Ordered by the column itself, SQLite's planner (no statistics) walks the column's sort
    index over the whole history instead, looking for those runs among all of them (a LIMIT
    stops it only once found)."""
    return func.coalesce(column, column)


def _page_rows(
    conn: Connection, f: RunFilter, per_page: int, offset: int, text: TextMatch | None
) -> list[RowMapping]:
    """The rows of one page, by an index on (sort column, run_id) (ix_runs_sort_*)."""
    column = RUN_SORTS.get(f.sort, Run.submitted_at)
    # a campaign's or a few matches' runs, read by their ids and sorted
    few = f.campaign or (text is not None and text.ids is not None)
    by: ColumnElement[Any] = _not_by_index(column) if few else column
    order = (by.desc(), Run.run_id.desc()) if f.descending else (by.asc(), Run.run_id.asc())
    query = _filtered(conn, select(*_RUN_ROW), f, text)
    if f.sort not in _NULLABLE_SORTS:
        return list(conn.execute(query.order_by(*order).limit(per_page).offset(offset)).mappings())
    present = query.where(column.is_not(None)).order_by(*order)
    rows = list(conn.execute(present.limit(per_page).offset(offset)).mappings())
    if len(rows) == per_page:
        return rows
    if rows:  # this page holds the last valued runs: the NULLs start right after them
        skip = 0
    else:  # the page lies in the NULLs: skip those that earlier pages showed
        valued = (
            _filtered(conn, select(Run.run_id), f, text).where(column.is_not(None)).limit(offset)
        )
        skip = offset - int(conn.scalar(select(func.count()).select_from(valued.subquery())) or 0)
    missing = query.where(column.is_(None)).order_by(order[1])
    rows += conn.execute(missing.limit(per_page - len(rows)).offset(skip)).mappings()
    return rows


@dataclass(frozen=True)
class FilterOptions:
    vendors: list[str]
    topologies: list[str]
    precisions: list[str]
    campaigns: list[tuple[str, str]]  # (campaign_id, name)


def filter_options(conn: Connection) -> FilterOptions:
    """The values the runs page offers in its drop-downs, from the configuration summaries
    (every configuration with a run of any status has one)."""
    combos = conn.execute(
        select(ConfigSummary.vendor, ConfigSummary.topology, ConfigSummary.precision).distinct()
    ).all()
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


def monitor_series(conn: Connection, run_id: str) -> list[Series]:
    """Every monitor series of a run as downsampled when it was published
    (store/monitor_series.py): a few rows, however many samples the run has."""
    return [
        Series(
            row["metric"],
            row["node_name"],
            row["device_index"],
            [(float(x), float(y)) for x, y in row["points"]],
            int(row["samples"]),
        )
        for row in stored_series(conn, run_id)
    ]


def configuration_runs(conn: Connection, run: RowMapping, limit: int = 20) -> list[RowMapping]:
    """The latest runs of a run's configuration (vendor, config, precision, fix_hp), any status:
    a walk of ix_runs_config_submitted back from the newest."""
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
            Run.topology == run["topology"],
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
    counts: dict[str, dict[str, int]] = {}
    if campaign_id is not None:
        # one campaign's runs by ix_runs_campaign_id, counted here: grouped by status in SQL,
        # SQLite's planner walks an index on status over every run of the history instead
        statuses = conn.scalars(select(Run.status).where(Run.campaign_id == campaign_id))
        counts[campaign_id] = dict(sorted(Counter(statuses).items()))
    else:  # every campaign's runs: the range of ix_runs_campaign_id that is not NULL
        counts_query = (
            select(Run.campaign_id, Run.status, func.count().label("n"))
            .where(Run.campaign_id.is_not(None))
            .group_by(Run.campaign_id, Run.status)
        )
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
