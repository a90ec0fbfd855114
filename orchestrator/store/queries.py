"""Reading the history: runs lists, one run in full, the seed's table and its environment block."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Connection, Float, MetaData, Select, String, Table, func, select
from sqlalchemy.engine import RowMapping

from orchestrator.errors import StoreError
from orchestrator.store.environments import (
    gate_query,
    lines,
    node_query,
    on_gated,
    parts_of,
    parts_of_runs,
)
from orchestrator.store.health import run_gate
from orchestrator.store.models import (
    Image,
    ImageWheel,
    RankResult,
    Run,
    RunEpoch,
    RunNode,
    RunStatusChange,
    UtcDateTime,
)

# The views made by the migrations, described for SQLAlchemy (they are not in Base.metadata, so
# schema comparisons and create_all never see them).
_views = MetaData()
SEED_TABLE = Table(
    "seed_table",
    _views,
    Column("run_id", String),
    Column("config", String),
    Column("precision", String),
    Column("fix_hp", String),
    Column("e2e_time", Float),
    Column("p_whole", Float),
    Column("p_train", Float),
    Column("p_core", Float),
    Column("map", Float),
    Column("mem", String),
    Column("vendor", String),
    Column("topology", String),
    Column("status", String),
    Column("finished_at", UtcDateTime),
    Column("campaign_id", String),
    Column("mem_source", String),  # migration 0004
    Column("source", String),
)
SEED_COLUMNS = (
    "config",
    "precision",
    "fix_hp",
    "e2e_time",
    "p_whole",
    "p_train",
    "p_core",
    "map",
    "mem",
)


@dataclass(frozen=True)
class Selection:
    """Which runs a report or a list shows. Without run_ids, only `status` runs (default succeeded)."""

    vendor: str | None = None
    topology: str | None = None
    precision: str | None = None
    status: str | None = "succeeded"
    since: datetime | None = None
    run_ids: tuple[str, ...] = ()
    limit: int | None = None


def resolve_run(conn: Connection, ref: str) -> str:
    """A run id, or an unambiguous prefix of one."""
    if conn.scalar(select(Run.run_id).where(Run.run_id == ref)) is not None:
        return ref
    escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    matches = list(
        conn.scalars(select(Run.run_id).where(Run.run_id.like(escaped + "%", escape="\\")).limit(6))
    )
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StoreError(
            f"no run {ref!r} in the results store", "list runs with: orchestrator runs list"
        )
    shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
    raise StoreError(f"run {ref!r} is ambiguous: {shown}", "give more of the run id")


def list_runs(
    conn: Connection,
    vendor: str | None = None,
    topology: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[RowMapping]:
    """Newest first by submission time."""
    query = select(
        Run.run_id,
        Run.status,
        Run.config_label.label("config"),
        Run.precision,
        Run.fix_hp,
        Run.p_core,
        Run.map,
        Run.submitted_by,
        Run.submitted_at,
        Run.finished_at,
        Run.reason,
    )
    if vendor:
        query = query.where(Run.vendor == vendor)
    if topology:
        query = query.where(Run.topology == topology)
    if status:
        query = query.where(Run.status == status)
    if since:
        query = query.where(Run.submitted_at >= since)
    query = query.order_by(Run.submitted_at.desc(), Run.run_id.desc()).limit(limit)
    return list(conn.execute(query).mappings().all())


@dataclass
class RunDetail:
    run: RowMapping
    history: list[RowMapping] = field(default_factory=list)
    nodes: list[RowMapping] = field(default_factory=list)
    ranks: list[RowMapping] = field(default_factory=list)
    epochs: list[RowMapping] = field(default_factory=list)
    image: RowMapping | None = None
    wheels: list[RowMapping] = field(default_factory=list)
    # What the run read, from its manifest: data_dir and backbone_weights (None if unrecorded)
    inputs: dict[str, Any] = field(default_factory=dict)
    # The health checks that gated it (store/health.py run_gate), oldest first
    health: list[dict[str, Any]] = field(default_factory=list)


def run_detail(conn: Connection, ref: str) -> RunDetail:
    run_id = resolve_run(conn, ref)
    run_columns = [c for c in Run.__table__.c if c.name not in ("manifest",)]
    run = conn.execute(select(*run_columns).where(Run.run_id == run_id)).mappings().one()
    detail = RunDetail(run=run, health=run_gate(conn, run_id))
    manifest = conn.scalar(select(Run.manifest).where(Run.run_id == run_id))
    if isinstance(manifest, dict):
        detail.inputs = {k: manifest.get(k) for k in ("data_dir", "backbone_weights")}
    detail.history = list(
        conn.execute(
            select(RunStatusChange.status, RunStatusChange.reason, RunStatusChange.at)
            .where(RunStatusChange.run_id == run_id)
            .order_by(RunStatusChange.at, RunStatusChange.id)
        ).mappings()
    )
    node_columns = [c for c in RunNode.__table__.c if c.name not in ("env", "run_id")]
    detail.nodes = list(
        conn.execute(
            select(*node_columns).where(RunNode.run_id == run_id).order_by(RunNode.node_rank)
        ).mappings()
    )
    rank_columns = [c for c in RankResult.__table__.c if c.name not in ("document", "run_id")]
    detail.ranks = list(
        conn.execute(
            select(*rank_columns).where(RankResult.run_id == run_id).order_by(RankResult.rank)
        ).mappings()
    )
    detail.epochs = list(
        conn.execute(
            select(RunEpoch).where(RunEpoch.run_id == run_id).order_by(RunEpoch.epoch)
        ).mappings()
    )
    if run["image_id"]:
        detail.image = (
            conn.execute(select(Image).where(Image.image_id == run["image_id"])).mappings().first()
        )
        detail.wheels = list(
            conn.execute(
                select(ImageWheel.filename, ImageWheel.sha256)
                .where(ImageWheel.image_id == run["image_id"])
                .order_by(ImageWheel.filename)
            ).mappings()
        )
    return detail


def run_documents(conn: Connection, ref: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run's row and its rank files as stored (rank order): what an export is built from."""
    run_id = resolve_run(conn, ref)
    run_columns = [c for c in Run.__table__.c if c.name not in ("manifest", "request")]
    run = conn.execute(select(*run_columns).where(Run.run_id == run_id)).mappings().one()
    documents = conn.scalars(
        select(RankResult.document).where(RankResult.run_id == run_id).order_by(RankResult.rank)
    )
    return dict(run), [dict(d) for d in documents]


def _where(
    conn: Connection, query: Select[Any], selection: Selection, source: Any = SEED_TABLE
) -> Select[Any]:
    """The selection's filters on `source`: the seed_table view, or the runs table it shows
    (same column names), which lets a query join runs directly and use its indexes."""
    c = source.c
    if selection.run_ids:
        ids = [resolve_run(conn, ref) for ref in selection.run_ids]
        query = query.where(c.run_id.in_(ids))
    elif selection.status:
        query = query.where(c.status == selection.status)
    if selection.vendor:
        query = query.where(c.vendor == selection.vendor)
    if selection.topology:
        query = query.where(c.topology == selection.topology)
    if selection.precision:
        query = query.where(c.precision == selection.precision)
    if selection.since:
        query = query.where(c.finished_at >= selection.since)
    if selection.limit:
        order = (c.vendor, c.topology, c.precision, c.finished_at, c.run_id)
        return query.order_by(*order).limit(selection.limit)
    return query


def seed_rows(conn: Connection, selection: Selection) -> list[RowMapping]:
    """Rows of the seed_table view for a selection, in configuration order."""
    view = SEED_TABLE
    query = _where(conn, select(view), selection)
    if not selection.limit:
        query = query.order_by(
            view.c.vendor, view.c.topology, view.c.precision, view.c.finished_at, view.c.run_id
        )
    return list(conn.execute(query).mappings().all())


def environment(conn: Connection, runs: Selection | Sequence[str]) -> list[tuple[str, list[str]]]:
    """The seed page's environment block over these runs (store/environments.py).

    `runs` is a Selection (one query, the database finds the distinct environments) or run ids.
    """
    if isinstance(runs, Selection) and not runs.limit:
        counted = select(func.count()).select_from(SEED_TABLE)
        count = int(conn.scalar(_where(conn, counted, runs)) or 0)  # the gate line's "of N"
        nodes = [_where(conn, node_query(), runs, Run.__table__)]
        gates = [_where(conn, gate_query().join(Run, on_gated()), runs, Run.__table__)]
        return lines(parts_of(conn, nodes, gates), count)
    if isinstance(runs, Selection):  # which runs depends on their order
        ids = list(conn.scalars(_where(conn, select(SEED_TABLE.c.run_id), runs)))
    else:
        ids = [runs] if isinstance(runs, str) else list(runs)
    return lines(parts_of_runs(conn, ids), len(ids))


def run_warnings(conn: Connection, run_ids: Sequence[str]) -> dict[str, list[str]]:
    """The warnings stored on these runs (runs.warnings), by run id; runs without any are left
    out."""
    found: dict[str, list[str]] = {}
    ids = list(run_ids)
    for i in range(0, len(ids), 500):
        query = select(Run.run_id, Run.warnings).where(
            Run.run_id.in_(ids[i : i + 500]), Run.warnings.is_not(None)
        )
        for run_id, warnings in conn.execute(query):
            if warnings:
                found[run_id] = [str(w) for w in warnings]
    return dict(sorted(found.items()))


ENERGY_KEYS = ("energy_j", "energy_per_image_j", "power_coverage")  # runs' columns (0008)


def with_energy(conn: Connection, rows: Sequence[RowMapping]) -> list[dict[str, Any]]:
    """Seed rows with each run's energy (J, J per image, power coverage; None where its
    monitors sampled no power): the seed_table view predates them."""
    found: dict[str, dict[str, Any]] = {}
    ids = [row["run_id"] for row in rows]
    for i in range(0, len(ids), 500):
        query = select(Run.run_id, *(Run.__table__.c[k] for k in ENERGY_KEYS)).where(
            Run.run_id.in_(ids[i : i + 500]), Run.energy_j.is_not(None)
        )
        for row in conn.execute(query).mappings():
            found[row["run_id"]] = {k: row[k] for k in ENERGY_KEYS}
    empty = dict.fromkeys(ENERGY_KEYS)
    return [{**row, **found.get(row["run_id"], empty)} for row in rows]


# -- the run lifecycle's reads (attach, cancel, queue) --------------------------------------------


@dataclass(frozen=True)
class RunBrief:
    """What the commands that act on one run need to know of it first."""

    run_id: str
    status: str
    backend: str
    reason: str | None
    slurm_job_id: str | None


def run_brief(conn: Connection, run_id: str) -> RunBrief | None:
    row = conn.execute(
        select(Run.run_id, Run.status, Run.backend, Run.reason, Run.slurm_job_id).where(
            Run.run_id == run_id
        )
    ).first()
    if row is None:
        return None
    return RunBrief(row.run_id, row.status, row.backend, row.reason, row.slurm_job_id)


@dataclass(frozen=True)
class RunHeadline:
    """What the one line a run ends with says: status, wall time, p_core, mAP."""

    status: str
    reason: str | None
    submitted_at: datetime | None
    finished_at: datetime | None
    p_core: float | None
    map: float | None
    stragglers: list[Any] | None = None  # runs.stragglers (0008)

    @property
    def wall_s(self) -> float | None:
        if self.submitted_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.submitted_at).total_seconds()


def run_headline(conn: Connection, run_id: str) -> RunHeadline | None:
    row = conn.execute(
        select(
            Run.status,
            Run.reason,
            Run.submitted_at,
            Run.finished_at,
            Run.p_core,
            Run.map,
            Run.stragglers,
        ).where(Run.run_id == run_id)
    ).first()
    if row is None:
        return None
    return RunHeadline(
        row.status,
        row.reason,
        row.submitted_at,
        row.finished_at,
        row.p_core,
        row.map,
        row.stragglers,
    )


@dataclass(frozen=True)
class RunningRun:
    run_id: str
    topology: str
    cluster: str
    slurm_job_id: str | None
    queued: bool  # it came through the queue (a stored request), not a foreground submit


def running_runs(conn: Connection) -> list[RunningRun]:
    """The running runs, oldest submission first (`orchestrator queue`)."""
    rows = conn.execute(
        select(
            Run.run_id,
            Run.topology,
            Run.cluster,
            Run.slurm_job_id,
            Run.request.is_not(None).label("queued"),
        )
        .where(Run.status == "running")
        .order_by(Run.submitted_at)
    ).all()
    return [
        RunningRun(r.run_id, r.topology, r.cluster, r.slurm_job_id, bool(r.queued)) for r in rows
    ]
