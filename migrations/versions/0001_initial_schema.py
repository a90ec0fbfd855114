"""Initial schema: runs, ranks, epochs, nodes, images, campaigns, leases, monitors, views.

Revision ID: 0001
Revises:
Create Date: 2026-01-15

A frozen snapshot: it does not import orchestrator.store.models, so that later changes to the
models never change what this migration does. tests/unit/test_store_migrations.py checks that the
models and the migrations agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUN_STATUSES = "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'lost')"


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _big_id() -> sa.Column:
    kind = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    return sa.Column("id", kind, autoincrement=True, nullable=False)


def _str(name: str, length: int, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.String(length=length), nullable=nullable)


def _num(name: str, kind: type[sa.types.TypeEngine], nullable: bool = False) -> sa.Column:
    return sa.Column(name, kind(), nullable=nullable)


# Portable SQL (SQLite >= 3.28 and PostgreSQL): the seed's table, one row per run.
SEED_TABLE = """
CREATE VIEW seed_table AS
SELECT r.run_id AS run_id,
       r.config_label AS config,
       r.precision AS precision,
       r.fix_hp AS fix_hp,
       r.e2e_time_s AS e2e_time,
       r.p_whole AS p_whole,
       r.p_train AS p_train,
       r.p_core AS p_core,
       r.map AS map,
       r.mem_label AS mem,
       r.vendor AS vendor,
       r.topology AS topology,
       r.status AS status,
       r.finished_at AS finished_at,
       r.campaign_id AS campaign_id
FROM runs AS r
"""

# Every succeeded run of a configuration in time order, with the change from the run before:
# where a regression shows up, and with which driver, torch and image it came.
CONFIG_HISTORY = """
CREATE VIEW config_history AS
SELECT r.vendor AS vendor,
       r.config_label AS config,
       r.topology AS topology,
       r.precision AS precision,
       r.fix_hp AS fix_hp,
       r.run_id AS run_id,
       r.finished_at AS finished_at,
       ROW_NUMBER() OVER w AS run_number,
       r.p_core AS p_core,
       LAG(r.p_core) OVER w AS previous_p_core,
       r.p_core / NULLIF(LAG(r.p_core) OVER w, 0) - 1.0 AS p_core_change,
       r.p_train AS p_train,
       r.p_whole AS p_whole,
       r.map AS map,
       r.e2e_time_s AS e2e_time,
       r.mem_label AS mem,
       r.torch_version AS torch_version,
       n.driver AS driver,
       r.image_id AS image_id
FROM runs AS r
LEFT JOIN run_nodes AS n ON n.run_id = r.run_id AND n.node_rank = 0
WHERE r.status = 'succeeded'
WINDOW w AS (PARTITION BY r.vendor, r.config_label, r.precision, r.fix_hp
             ORDER BY r.finished_at, r.run_id)
"""


def _prefer_lz4(table: str, column: str) -> None:
    """Postgres compresses large values (a rank document is ~3 KB) with pglz by default, which
    costs more server time per row than everything else an ingest does; lz4 is several times
    faster at a similar ratio. Servers built without lz4 keep pglz."""
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    methods = bind.exec_driver_sql(
        "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"
    ).scalar()
    if methods and "lz4" in methods:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4")


def upgrade() -> None:
    op.create_table(
        "campaigns",
        _str("campaign_id", 64),
        _str("name", 200),
        sa.Column("spec", _json(), nullable=False),
        _str("status", 16),
        _str("created_by", 100, nullable=True),
        _time("created_at", nullable=False),
        _time("finished_at"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'finished', 'cancelled')",
            name=op.f("ck_campaigns_status"),
        ),
        sa.PrimaryKeyConstraint("campaign_id", name=op.f("pk_campaigns")),
    )
    op.create_table(
        "images",
        _str("image_id", 128),
        _str("tag", 255),
        _str("base", 255, nullable=True),
        _num("size_bytes", sa.BigInteger, nullable=True),
        _num("build_seconds", sa.Float, nullable=True),
        _num("build_log_path", sa.Text, nullable=True),
        _time("created_at"),
        _time("recorded_at", nullable=False),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_images")),
    )
    op.create_index(op.f("ix_images_tag"), "images", ["tag"])
    op.create_table(
        "image_wheels",
        _str("image_id", 128),
        _str("filename", 255),
        _str("sha256", 64),
        sa.ForeignKeyConstraint(
            ["image_id"],
            ["images.image_id"],
            name=op.f("fk_image_wheels_image_id_images"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("image_id", "filename", name=op.f("pk_image_wheels")),
    )
    op.create_index(op.f("ix_image_wheels_sha256"), "image_wheels", ["sha256"])
    op.create_table(
        "runs",
        _str("run_id", 64),
        _str("campaign_id", 64, nullable=True),
        _str("case", 64),
        _str("vendor", 64),
        _str("hardware_label", 64, nullable=True),
        _str("cluster", 128),
        _str("backend", 16),
        _str("runtime", 16),
        _str("topology", 16),
        _num("nnodes", sa.Integer),
        _num("nproc_per_node", sa.Integer),
        _num("world_size", sa.Integer),
        _str("precision", 16),
        sa.Column("hparams", _json(), nullable=False),
        _str("fix_hp", 255),
        _str("config_name", 128, nullable=True),
        _str("config_label", 128),
        _str("status", 16),
        _num("reason", sa.Text, nullable=True),
        sa.Column("failure", _json(), nullable=True),
        _str("submitted_by", 100),
        _time("submitted_at", nullable=False),
        _time("started_at"),
        _time("finished_at"),
        _num("command", sa.Text, nullable=True),
        _str("orchestrator_version", 32, nullable=True),
        _str("slurm_job_id", 32, nullable=True),
        _str("image_tag", 255, nullable=True),
        _str("image_id", 128, nullable=True),
        _num("global_images", sa.BigInteger, nullable=True),
        _num("e2e_time_s", sa.Float, nullable=True),
        _num("p_whole", sa.Float, nullable=True),
        _num("p_train", sa.Float, nullable=True),
        _num("p_core", sa.Float, nullable=True),
        _num("map", sa.Float, nullable=True),
        _num("mem_used_bytes", sa.BigInteger, nullable=True),
        _num("mem_total_bytes", sa.BigInteger, nullable=True),
        _str("mem_label", 32, nullable=True),
        _num("epochs_completed", sa.Integer, nullable=True),
        _num("converged", sa.Boolean, nullable=True),
        _str("device_name", 128, nullable=True),
        _str("torch_version", 64, nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=True),  # json, not jsonb: kept as written
        _str("source_digest", 64, nullable=True),
        _time("created_at", nullable=False),
        _time("published_at"),
        sa.CheckConstraint(RUN_STATUSES, name=op.f("ck_runs_status")),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.campaign_id"],
            name=op.f("fk_runs_campaign_id_campaigns"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_runs")),
    )
    op.create_index(op.f("ix_runs_campaign_id"), "runs", ["campaign_id"])
    op.create_index(
        "ix_runs_config_time", "runs", ["vendor", "topology", "precision", "finished_at"]
    )
    op.create_index("ix_runs_finished_at", "runs", ["finished_at"])
    op.create_index(op.f("ix_runs_image_id"), "runs", ["image_id"])
    op.create_index("ix_runs_p_core", "runs", ["p_core"])
    op.create_index("ix_runs_status_time", "runs", ["status", "finished_at"])
    op.create_table(
        "run_status_history",
        _big_id(),
        _str("run_id", 64),
        _str("status", 16),
        _num("reason", sa.Text, nullable=True),
        _time("at", nullable=False),
        sa.CheckConstraint(RUN_STATUSES, name=op.f("ck_run_status_history_status")),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
            name=op.f("fk_run_status_history_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_status_history")),
    )
    op.create_index("ix_run_status_history_run", "run_status_history", ["run_id", "at"])
    op.create_table(
        "run_nodes",
        _str("run_id", 64),
        _num("node_rank", sa.Integer),
        _str("node_name", 128),
        _str("address", 255, nullable=True),
        _str("os", 255, nullable=True),
        _str("kernel", 255, nullable=True),
        _str("cpu", 255, nullable=True),
        _num("mem_total_bytes", sa.BigInteger, nullable=True),
        _str("accelerator_model", 255, nullable=True),
        _num("accelerator_count", sa.Integer, nullable=True),
        _str("driver", 128, nullable=True),
        _str("docker", 128, nullable=True),
        _str("torch", 128, nullable=True),
        _str("torchvision", 128, nullable=True),
        _str("python", 64, nullable=True),
        sa.Column("ib", _json(), nullable=True),
        sa.Column("env", _json(), nullable=True),
        _time("captured_at"),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name=op.f("fk_run_nodes_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "node_rank", name=op.f("pk_run_nodes")),
    )
    op.create_index(op.f("ix_run_nodes_node_name"), "run_nodes", ["node_name"])
    op.create_table(
        "rank_results",
        _str("run_id", 64),
        _num("rank", sa.Integer),
        _num("node_rank", sa.Integer),
        _num("local_rank", sa.Integer),
        _str("host", 255),
        _str("status", 16),
        _str("device_name", 128, nullable=True),
        _num("e2e_s", sa.Float),
        _num("init_s", sa.Float),
        _num("train_s", sa.Float),
        _num("train_no_eval_s", sa.Float),
        _num("core_s", sa.Float),
        _num("eval_s", sa.Float),
        _num("rank_images", sa.BigInteger),
        _num("global_images", sa.BigInteger),
        _num("rank_iterations", sa.Integer),
        _num("epochs_completed", sa.Integer),
        _num("p_whole", sa.Float, nullable=True),
        _num("p_train", sa.Float, nullable=True),
        _num("p_core", sa.Float, nullable=True),
        _num("map", sa.Float, nullable=True),
        _num("peak_allocated_bytes", sa.BigInteger, nullable=True),
        _num("peak_reserved_bytes", sa.BigInteger, nullable=True),
        _num("total_mem_bytes", sa.BigInteger, nullable=True),
        _num("converged", sa.Boolean),
        _str("error_type", 128, nullable=True),
        _num("error_message", sa.Text, nullable=True),
        sa.Column("document", sa.JSON(), nullable=False),  # json, not jsonb: kept as written
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
            name=op.f("fk_rank_results_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "rank", name=op.f("pk_rank_results")),
    )
    op.create_table(
        "run_epochs",
        _str("run_id", 64),
        _num("epoch", sa.Integer),
        _num("ranks", sa.Integer),
        _num("iterations", sa.Integer),
        _num("images", sa.BigInteger),
        _num("loss", sa.Float, nullable=True),
        _num("lr", sa.Float, nullable=True),
        _num("train_s", sa.Float),
        _num("core_s", sa.Float),
        _num("eval_s", sa.Float, nullable=True),
        _num("p_train", sa.Float, nullable=True),
        _num("p_core", sa.Float, nullable=True),
        _num("map", sa.Float, nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name=op.f("fk_run_epochs_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "epoch", name=op.f("pk_run_epochs")),
    )
    op.create_table(
        "monitor_samples",
        _big_id(),
        _str("run_id", 64),
        _str("node_name", 128),
        _time("ts", nullable=False),
        _num("device_index", sa.Integer, nullable=True),
        _str("metric", 64),
        _num("value", sa.Float),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
            name=op.f("fk_monitor_samples_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_monitor_samples")),
    )
    op.create_index(
        "ix_monitor_samples_run_metric_ts", "monitor_samples", ["run_id", "metric", "ts"]
    )
    op.create_table(
        "node_leases",
        _str("cluster", 128),
        _str("node_name", 128),
        _str("run_id", 64, nullable=True),
        _str("holder", 128),
        _time("acquired_at", nullable=False),
        _time("expires_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
            name=op.f("fk_node_leases_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("cluster", "node_name", name=op.f("pk_node_leases")),
    )
    op.create_index(op.f("ix_node_leases_expires_at"), "node_leases", ["expires_at"])
    op.create_index(op.f("ix_node_leases_run_id"), "node_leases", ["run_id"])
    _prefer_lz4("rank_results", "document")
    _prefer_lz4("runs", "manifest")
    op.execute(SEED_TABLE)
    op.execute(CONFIG_HISTORY)


def downgrade() -> None:
    op.execute("DROP VIEW config_history")
    op.execute("DROP VIEW seed_table")
    for table in (
        "node_leases",
        "monitor_samples",
        "run_epochs",
        "rank_results",
        "run_nodes",
        "run_status_history",
        "runs",
        "image_wheels",
        "images",
        "campaigns",
    ):
        op.drop_table(table)  # their indexes go with them
