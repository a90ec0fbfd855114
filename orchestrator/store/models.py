"""The results store's tables, as typed SQLAlchemy 2.0 models.

Designed for the whole mission, not one issue: runs and what they measured (per run, per rank,
per epoch), where they ran (nodes and the environment captured on each), with what software
(images and their wheels), why they ended (status history, failure), campaigns, node leases for the
queue, and monitor time series. The schema itself is only ever created by the Alembic migrations in
migrations/ (a test checks that these models and the migrations agree). docs/schema.md describes
every table for people who write SQL.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from orchestrator.states import CAMPAIGN_STATUSES, HEALTH_CHECKS, HEALTH_VERDICTS, RUN_STATUSES

# Stable constraint names, so later migrations (batch mode on SQLite) can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Timestamps are stored in UTC and always come back timezone-aware.

    Postgres keeps them as timestamptz; SQLite has no time zones, so the UTC wall time is stored
    as text ('2026-01-14 09:30:12.000000'), which sorts and compares correctly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store needs timezone-aware times")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


# JSON documents: JSONB on Postgres (indexable, `->>` operators), JSON text on SQLite (json_extract).
# Python None is stored as SQL NULL, not as the JSON text 'null'.
JsonDoc = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
# Files kept as they were written (rank files, manifests): `json` on Postgres keeps the text byte
# for byte, and ingests ~1.6x faster than jsonb, which parses every document into binary form.
# `document::jsonb` gives jsonb's operators when a query needs them.
RawDoc = JSON(none_as_null=True)
# 64-bit ids that still autoincrement on SQLite (only INTEGER PRIMARY KEY does).
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JsonDoc}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Campaign(Base):
    """A matrix of runs (vendors x topologies x precisions x repeats) scheduled together."""

    __tablename__ = "campaigns"
    __table_args__ = (CheckConstraint(_in("status", CAMPAIGN_STATUSES), name="status"),)

    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JsonDoc)  # the campaign file, as parsed
    status: Mapped[str] = mapped_column(String(16), default="queued")
    created_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class Image(Base):
    """A Docker image built from a vendor's wheels; runs refer to it by image_id."""

    __tablename__ = "images"

    image_id: Mapped[str] = mapped_column(String(128), primary_key=True)  # 'sha256:...'
    tag: Mapped[str] = mapped_column(String(255), index=True)
    base: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    build_seconds: Mapped[float | None] = mapped_column(Float)
    build_log_path: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None]
    recorded_at: Mapped[datetime]


class ImageWheel(Base):
    __tablename__ = "image_wheels"

    image_id: Mapped[str] = mapped_column(
        ForeignKey("images.image_id", ondelete="CASCADE"), primary_key=True
    )
    filename: Mapped[str] = mapped_column(String(255), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)


# The runs columns the runs page sorts by, each indexed with run_id (migration 0009).
SORTED_COLUMNS = (
    "submitted_at",
    "finished_at",
    "status",
    "config_label",
    "precision",
    "e2e_time_s",
    "p_whole",
    "p_train",
    "p_core",
    "map",
)


class Run(Base):
    """One benchmark run: what was asked, where, with what, how it ended, and its metrics."""

    __tablename__ = "runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        # The admins' usual filter and sort: a configuration over time.
        Index("ix_runs_config_time", "vendor", "topology", "precision", "finished_at"),
        # A run page's "other runs of this configuration", newest submitted first (0009).
        Index("ix_runs_config_submitted", "vendor", "topology", "precision", "submitted_at"),
        # "succeeded runs since ...": without it SQLite scans every succeeded run.
        Index("ix_runs_status_time", "status", "finished_at"),
        # The queue's scan: queued (or running) runs in submission order; run_id (0009) makes
        # it the exact order the queue and the runs page ask for, so that SQLite's planner
        # never prefers walking ix_runs_sort_submitted_at over every run instead.
        Index("ix_runs_status_submitted", "status", "submitted_at", "run_id"),
        # "which runs fell back to sockets" (0005)
        Index("ix_runs_fabric_transport", "fabric_transport"),
        # The runs page's sorts (0009): each column with the run id that breaks its ties, so a
        # page is an index walk of per_page entries (store/web_queries.py), never a sort.
        *(Index(f"ix_runs_sort_{c}", c, "run_id") for c in SORTED_COLUMNS),
    )

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    campaign_id: Mapped[str | None] = mapped_column(
        ForeignKey("campaigns.campaign_id", ondelete="SET NULL"), index=True
    )
    # What was asked
    case: Mapped[str] = mapped_column(String(64))
    vendor: Mapped[str] = mapped_column(String(64))
    hardware_label: Mapped[str | None] = mapped_column(String(64))  # e.g. 'MetaX C500 64G'
    cluster: Mapped[str] = mapped_column(String(128))
    backend: Mapped[str] = mapped_column(String(16))  # 'ssh' | 'slurm'
    runtime: Mapped[str] = mapped_column(String(16))  # 'host' | 'docker'
    topology: Mapped[str] = mapped_column(String(16))  # '2x8'
    nnodes: Mapped[int] = mapped_column(Integer)
    nproc_per_node: Mapped[int] = mapped_column(Integer)
    world_size: Mapped[int] = mapped_column(Integer)
    precision: Mapped[str] = mapped_column(String(16))
    hparams: Mapped[dict[str, Any]] = mapped_column(JsonDoc)  # --set key=value, as strings
    fix_hp: Mapped[str] = mapped_column(String(255))  # 'bs=16, lr=0.16', or '/' when none
    config_name: Mapped[str | None] = mapped_column(String(128))
    config_label: Mapped[str] = mapped_column(String(128))  # 'MXC500 2x8'
    # Who, when, how it ended
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    failure: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    submitted_by: Mapped[str] = mapped_column(String(100))
    submitted_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    command: Mapped[str | None] = mapped_column(Text)
    orchestrator_version: Mapped[str | None] = mapped_column(String(32))
    slurm_job_id: Mapped[str | None] = mapped_column(String(32))
    image_tag: Mapped[str | None] = mapped_column(String(255))
    image_id: Mapped[str | None] = mapped_column(String(128), index=True)  # images.image_id
    # The seed's metrics (docs/schema.md, "Run metrics"); NULL unless the run succeeded.
    global_images: Mapped[int | None] = mapped_column(BigInteger)
    e2e_time_s: Mapped[float | None] = mapped_column(Float)
    p_whole: Mapped[float | None] = mapped_column(Float)
    p_train: Mapped[float | None] = mapped_column(Float)
    p_core: Mapped[float | None] = mapped_column(Float)
    map: Mapped[float | None] = mapped_column(Float)
    mem_used_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mem_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    mem_label: Mapped[str | None] = mapped_column(String(32))  # '37.1/64.0' (GiB)
    # Migration 0004: where mem comes from ('device': the SMI tool's peak during training,
    # 'allocator': the ranks' peak reserved), and every device's peak [{node, device, used_bytes,
    # total_bytes}] from the monitors.
    mem_source: Mapped[str | None] = mapped_column(String(16))
    mem_devices: Mapped[list[Any] | None] = mapped_column(JsonDoc)
    epochs_completed: Mapped[int | None] = mapped_column(Integer)
    converged: Mapped[bool | None] = mapped_column(Boolean)
    # Migration 0005: how ranks talked, from their NCCL INFO lines (orchestrator/fabric.py):
    # 'ib' | 'socket' | 'intra-node' | 'gloo' | 'mixed' | 'unknown', a line for tables, and
    # per node {node, transport, devices, inter, intra}; and what the run should be read with
    # (sockets where the cluster names IB HCAs, an SMI output not understood), a list of lines.
    fabric_transport: Mapped[str | None] = mapped_column(String(16))
    fabric_summary: Mapped[str | None] = mapped_column(String(255))
    fabric: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    warnings: Mapped[list[Any] | None] = mapped_column(JsonDoc)
    device_name: Mapped[str | None] = mapped_column(String(128))
    torch_version: Mapped[str | None] = mapped_column(String(64))
    # Migration 0008: the ranks flagged as stragglers [{rank, node, device, pace_s, ratio,
    # history_ratio}] (store/stragglers.py); the training window's energy from the monitors'
    # power samples (orchestrator/energy.py): J (the BMC's where sampled, else the devices'),
    # J per image, the worst series' share of seconds with a sample, and every series.
    stragglers: Mapped[list[Any] | None] = mapped_column(JsonDoc)
    energy_j: Mapped[float | None] = mapped_column(Float)
    energy_per_image_j: Mapped[float | None] = mapped_column(Float)
    power_coverage: Mapped[float | None] = mapped_column(Float)
    energy: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    # Provenance of the row; source (0004): 'orchestrator', or the tool of an imported log
    source: Mapped[str] = mapped_column(String(16), server_default="orchestrator")
    manifest: Mapped[dict[str, Any] | None] = mapped_column(RawDoc)  # manifest.json as published
    source_digest: Mapped[str | None] = mapped_column(String(64))  # sha256 of the run folder
    created_at: Mapped[datetime]
    published_at: Mapped[datetime | None]
    # The queue (migration 0002): what a worker needs to execute a queued run, and a cancel
    # request the owning worker polls.
    request: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    cancel_requested_at: Mapped[datetime | None]


class RunStatusChange(Base):
    """Every status a run went through, with the reason: the run's history."""

    __tablename__ = "run_status_history"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        Index("ix_run_status_history_run", "run_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]


class RunNode(Base):
    """A node of a run and the environment captured on it (nodes/<name>/env.json)."""

    __tablename__ = "run_nodes"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    node_rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_name: Mapped[str] = mapped_column(String(128), index=True)
    address: Mapped[str | None] = mapped_column(String(255))
    os: Mapped[str | None] = mapped_column(String(255))
    kernel: Mapped[str | None] = mapped_column(String(255))
    cpu: Mapped[str | None] = mapped_column(String(255))
    mem_total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    accelerator_model: Mapped[str | None] = mapped_column(String(255))
    accelerator_count: Mapped[int | None] = mapped_column(Integer)
    driver: Mapped[str | None] = mapped_column(String(128))
    docker: Mapped[str | None] = mapped_column(String(128))
    torch: Mapped[str | None] = mapped_column(String(128))
    torchvision: Mapped[str | None] = mapped_column(String(128))
    python: Mapped[str | None] = mapped_column(String(64))
    ib: Mapped[list[Any] | None] = mapped_column(JsonDoc)  # InfiniBand ports as captured
    env: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)  # the whole env.json
    captured_at: Mapped[datetime | None]


class RankResult(Base):
    """One rank's result file: the fields admins query as columns, and the whole document."""

    __tablename__ = "rank_results"
    __table_args__ = (Index("ix_rank_results_node_device", "node_name", "device_index"),)

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    rank: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_rank: Mapped[int] = mapped_column(Integer)
    local_rank: Mapped[int] = mapped_column(Integer)
    host: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))  # 'ok' | 'failed'
    device_name: Mapped[str | None] = mapped_column(String(128))
    e2e_s: Mapped[float] = mapped_column(Float)
    import_s: Mapped[float | None] = mapped_column(Float)  # 0004; NULL in a version-1 rank file
    init_s: Mapped[float] = mapped_column(Float)
    train_s: Mapped[float] = mapped_column(Float)
    train_no_eval_s: Mapped[float] = mapped_column(Float)
    core_s: Mapped[float] = mapped_column(Float)
    eval_s: Mapped[float] = mapped_column(Float)
    rank_images: Mapped[int] = mapped_column(BigInteger)
    global_images: Mapped[int] = mapped_column(BigInteger)
    rank_iterations: Mapped[int] = mapped_column(Integer)
    epochs_completed: Mapped[int] = mapped_column(Integer)
    p_whole: Mapped[float | None] = mapped_column(Float)
    p_train: Mapped[float | None] = mapped_column(Float)
    p_core: Mapped[float | None] = mapped_column(Float)
    map: Mapped[float | None] = mapped_column(Float)
    peak_allocated_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_reserved_bytes: Mapped[int | None] = mapped_column(BigInteger)
    total_mem_bytes: Mapped[int | None] = mapped_column(BigInteger)
    converged: Mapped[bool] = mapped_column(Boolean)
    error_type: Mapped[str | None] = mapped_column(String(128))
    error_message: Mapped[str | None] = mapped_column(Text)
    document: Mapped[dict[str, Any]] = mapped_column(RawDoc)  # the rank file, byte for byte
    # Migration 0008 (store/stragglers.py): the node (cluster name) and device (SMI index, NULL
    # on a CPU) the rank ran on; its seconds per iteration without waiting for the others
    # (data + forward); that over the median rank's and over its device's own history; flagged.
    node_name: Mapped[str | None] = mapped_column(String(128))
    device_index: Mapped[int | None] = mapped_column(Integer)
    pace_s: Mapped[float | None] = mapped_column(Float)
    straggler_ratio: Mapped[float | None] = mapped_column(Float)
    history_ratio: Mapped[float | None] = mapped_column(Float)
    straggler: Mapped[bool | None] = mapped_column(Boolean)


class RunEpoch(Base):
    """One epoch of a run, over all ranks: the training curve and per-epoch throughput.

    images add up over ranks, times are the slowest rank's (as for the run's metrics), loss, lr
    and mAP are rank 0's. Each rank's own epochs stay in rank_results.document.
    """

    __tablename__ = "run_epochs"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    ranks: Mapped[int] = mapped_column(Integer)  # how many ranks reported this epoch
    iterations: Mapped[int] = mapped_column(Integer)  # per rank
    images: Mapped[int] = mapped_column(BigInteger)  # over all ranks
    loss: Mapped[float | None] = mapped_column(Float)
    lr: Mapped[float | None] = mapped_column(Float)
    train_s: Mapped[float] = mapped_column(Float)
    core_s: Mapped[float] = mapped_column(Float)
    eval_s: Mapped[float | None] = mapped_column(Float)
    p_train: Mapped[float | None] = mapped_column(Float)
    p_core: Mapped[float | None] = mapped_column(Float)
    map: Mapped[float | None] = mapped_column(Float)


class MonitorSample(Base):
    """A narrow time series: one metric of one node (or device) at one time."""

    __tablename__ = "monitor_samples"
    __table_args__ = (Index("ix_monitor_samples_run_metric_ts", "run_id", "metric", "ts"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.run_id", ondelete="CASCADE"))
    node_name: Mapped[str] = mapped_column(String(128))
    ts: Mapped[datetime]
    device_index: Mapped[int | None] = mapped_column(Integer)  # NULL: a whole-node metric
    metric: Mapped[str] = mapped_column(String(64))  # e.g. 'device_mem_used_bytes'
    value: Mapped[float] = mapped_column(Float)


class NodeLease(Base):
    """A node held by one worker for one run; the primary key makes double-booking impossible."""

    __tablename__ = "node_leases"

    cluster: Mapped[str] = mapped_column(String(128), primary_key=True)
    node_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    run_id: Mapped[str | None] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), index=True
    )
    holder: Mapped[str] = mapped_column(String(128))  # worker id: host:pid or a queue worker
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)


class SlurmFollow(Base):
    """Which worker follows a Slurm run's job (renewed like a lease; an expired row lets
    another worker adopt the run). Slurm owns the nodes: Slurm runs take no node_leases."""

    __tablename__ = "slurm_follows"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    job_id: Mapped[str] = mapped_column(String(32))
    holder: Mapped[str] = mapped_column(String(128))
    acquired_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class HealthCheckRun(Base):
    """One run of the health probe (`orchestrator health`, or the gate before a run)."""

    __tablename__ = "health_checks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    cluster: Mapped[str] = mapped_column(String(128))
    topology: Mapped[str] = mapped_column(String(32))
    nodes: Mapped[list[Any]] = mapped_column(JsonDoc)  # node names, node rank order
    # The run it gated; NULL for `orchestrator health` (and once that run is deleted).
    gated_run_id: Mapped[str | None] = mapped_column(
        ForeignKey("runs.run_id", ondelete="SET NULL"), index=True
    )
    backend: Mapped[str | None] = mapped_column(String(16))  # nccl | gloo
    precision: Mapped[str | None] = mapped_column(String(8))
    started_at: Mapped[datetime] = mapped_column(index=True)
    took_s: Mapped[float | None] = mapped_column(Float)
    ok: Mapped[bool] = mapped_column(Boolean)
    blamed: Mapped[list[Any] | None] = mapped_column(JsonDoc)  # nodes named by failing figures
    summary: Mapped[str | None] = mapped_column(String(1024))


class HealthFigure(Base):
    """One figure of a health check: a device's compute, an all-reduce's or a node pair's
    busBW, with what it was judged against and the verdict (docs/health.md)."""

    __tablename__ = "health_figures"
    __table_args__ = (
        CheckConstraint(_in("check_name", HEALTH_CHECKS), name="check_name"),
        CheckConstraint(_in("verdict", HEALTH_VERDICTS), name="verdict"),
        Index("ix_health_figures_node_check_at", "node_name", "check_name", "measured_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    check_id: Mapped[int] = mapped_column(
        ForeignKey("health_checks.id", ondelete="CASCADE"), index=True
    )
    check_name: Mapped[str] = mapped_column(String(16))  # compute | allreduce | intra | pair
    node_name: Mapped[str | None] = mapped_column(String(128))  # pair: the first node
    peer_name: Mapped[str | None] = mapped_column(String(128))  # pair: the second node
    device_index: Mapped[int | None] = mapped_column(Integer)
    ranks: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(16))
    expected: Mapped[float | None] = mapped_column(Float)
    expected_from: Mapped[str] = mapped_column(String(32))
    fraction: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(16))
    exempt: Mapped[bool] = mapped_column(Boolean, default=False)
    measured_at: Mapped[datetime]


class NodeQuarantine(Base):
    """A node the gate found below threshold: leases skip it until `orchestrator nodes
    release` or its expiry."""

    __tablename__ = "node_quarantine"

    cluster: Mapped[str] = mapped_column(String(128), primary_key=True)
    node_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    reason: Mapped[str] = mapped_column(String(1024))
    since: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    check_id: Mapped[int | None] = mapped_column(
        ForeignKey("health_checks.id", ondelete="SET NULL")
    )


# The seed metrics a configuration summary keeps sums, sums of squares and extremes of.
SUMMARY_METRICS = ("e2e_time_s", "p_whole", "p_train", "p_core", "map", "energy_per_image_j")
RECENT_RUNS = 20  # succeeded runs a configuration summary lists, newest first


class ConfigSummary(Base):
    """One configuration's whole history in one row (migration 0009), kept by store/summaries.py
    in the transaction of every write that changes it, and equal to an aggregate of its runs:
    how many runs (any status) and succeeded ones, and over the succeeded ones each metric's
    count, sum, sum of squares (mean and variance without a rescan), min and max, and the
    latest RECENT_RUNS runs. `orchestrator db rebuild-summaries` recomputes every row."""

    __tablename__ = "config_summaries"

    vendor: Mapped[str] = mapped_column(String(64), primary_key=True)
    hardware: Mapped[str] = mapped_column(String(64), primary_key=True)  # label, else vendor
    config_label: Mapped[str] = mapped_column(String(128), primary_key=True)
    topology: Mapped[str] = mapped_column(String(16), primary_key=True)
    precision: Mapped[str] = mapped_column(String(16), primary_key=True)
    fix_hp: Mapped[str] = mapped_column(String(255), primary_key=True)
    nnodes: Mapped[int] = mapped_column(Integer)
    nproc_per_node: Mapped[int] = mapped_column(Integer)
    runs: Mapped[int] = mapped_column(Integer)  # any status
    succeeded: Mapped[int] = mapped_column(Integer)
    first_finished_at: Mapped[datetime | None]  # of the succeeded runs
    last_finished_at: Mapped[datetime | None]
    e2e_time_s_n: Mapped[int] = mapped_column(Integer)
    e2e_time_s_sum: Mapped[float | None] = mapped_column(Float)
    e2e_time_s_sum_sq: Mapped[float | None] = mapped_column(Float)
    e2e_time_s_min: Mapped[float | None] = mapped_column(Float)
    e2e_time_s_max: Mapped[float | None] = mapped_column(Float)
    p_whole_n: Mapped[int] = mapped_column(Integer)
    p_whole_sum: Mapped[float | None] = mapped_column(Float)
    p_whole_sum_sq: Mapped[float | None] = mapped_column(Float)
    p_whole_min: Mapped[float | None] = mapped_column(Float)
    p_whole_max: Mapped[float | None] = mapped_column(Float)
    p_train_n: Mapped[int] = mapped_column(Integer)
    p_train_sum: Mapped[float | None] = mapped_column(Float)
    p_train_sum_sq: Mapped[float | None] = mapped_column(Float)
    p_train_min: Mapped[float | None] = mapped_column(Float)
    p_train_max: Mapped[float | None] = mapped_column(Float)
    p_core_n: Mapped[int] = mapped_column(Integer)
    p_core_sum: Mapped[float | None] = mapped_column(Float)
    p_core_sum_sq: Mapped[float | None] = mapped_column(Float)
    p_core_min: Mapped[float | None] = mapped_column(Float)
    p_core_max: Mapped[float | None] = mapped_column(Float)
    map_n: Mapped[int] = mapped_column(Integer)
    map_sum: Mapped[float | None] = mapped_column(Float)
    map_sum_sq: Mapped[float | None] = mapped_column(Float)
    map_min: Mapped[float | None] = mapped_column(Float)
    map_max: Mapped[float | None] = mapped_column(Float)
    # 0010: J/image (columns of 0008's runs), the memory peak and the environment block
    energy_per_image_j_n: Mapped[int | None] = mapped_column(Integer)
    energy_per_image_j_sum: Mapped[float | None] = mapped_column(Float)
    energy_per_image_j_sum_sq: Mapped[float | None] = mapped_column(Float)
    energy_per_image_j_min: Mapped[float | None] = mapped_column(Float)
    energy_per_image_j_max: Mapped[float | None] = mapped_column(Float)
    mem_peak: Mapped[str | None] = mapped_column(String(64))  # the label with the most used
    mem_peak_source: Mapped[str | None] = mapped_column(String(16))
    mem_measured: Mapped[int | None] = mapped_column(Integer)  # runs whose mem is ours
    # {"fields": {field: [values]}, "labels": [...], "wheels": [...], "gated": n,
    #  "lows": {check: [value, unit]}}: store/environments.py
    environment: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    # [{run_id, finished_at (ISO 8601 UTC), e2e_time_s, p_whole, p_train, p_core, map}]
    recent: Mapped[list[Any]] = mapped_column(JsonDoc)


class RunVerdict(Base):
    """A succeeded run's verdicts against the runs of its configuration before it (migration
    0010), kept by store/verdicts.py like the summaries: its regression flags, a convergence
    check that flagged it, and its warnings. Only runs with one of them have a row."""

    __tablename__ = "run_verdicts"
    __table_args__ = (
        Index(
            "ix_run_verdicts_config",
            "vendor",
            "topology",
            "precision",
            "config_label",
            "fix_hp",
            "finished_at",
        ),
    )

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    vendor: Mapped[str] = mapped_column(String(64))
    topology: Mapped[str] = mapped_column(String(16))
    precision: Mapped[str] = mapped_column(String(16))
    config_label: Mapped[str] = mapped_column(String(128))
    fix_hp: Mapped[str] = mapped_column(String(255))
    finished_at: Mapped[datetime]
    # [{metric, value, history_mean, history_sd, history_n}]
    regressions: Mapped[list[Any]] = mapped_column(JsonDoc)
    # Convergence's fields, when its check flagged the run
    convergence: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    warnings: Mapped[list[Any] | None] = mapped_column(JsonDoc)  # runs.warnings, when it has some


class DerivedVersion(Base):
    """Which definition the derived rows (summaries, verdicts) were computed with (0010):
    store/derived.py rebuilds them when the code's differs."""

    __tablename__ = "derived_versions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[str] = mapped_column(String(512))


class RunMonitorSeries(Base):
    """A run's monitor series downsampled once, at publish (migration 0009): what the run page
    draws, so it never reads the raw samples. points: [[seconds from the run's first sample
    (a bucket's middle), the bucket's mean], ...]."""

    __tablename__ = "run_monitor_series"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True
    )
    series: Mapped[int] = mapped_column(Integer, primary_key=True)  # order on the page
    metric: Mapped[str] = mapped_column(String(64))
    node_name: Mapped[str] = mapped_column(String(128))
    device_index: Mapped[int | None] = mapped_column(Integer)
    samples: Mapped[int] = mapped_column(Integer)
    points: Mapped[list[Any]] = mapped_column(JsonDoc)
