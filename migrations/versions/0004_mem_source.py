"""Comparable with FlagPerf: where a run's mem comes from, the per-device peaks, the run's source
(a native run or an imported FlagPerf log), each rank's import time; the views show them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

A frozen snapshot like 0001: it does not import orchestrator.store.models, and it carries the
view definitions it replaces (for the downgrade) as text.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SEED_COLUMNS = """r.run_id AS run_id,
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
       r.campaign_id AS campaign_id"""

SEED_TABLE_0001 = f"CREATE VIEW seed_table AS\nSELECT {_SEED_COLUMNS}\nFROM runs AS r\n"
SEED_TABLE = (
    "CREATE VIEW seed_table AS\n"
    f"SELECT {_SEED_COLUMNS},\n"
    "       r.mem_source AS mem_source,\n"
    "       r.source AS source\n"
    "FROM runs AS r\n"
)

_HISTORY_HEAD = """CREATE VIEW config_history AS
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
"""
_HISTORY_TAIL = """       r.torch_version AS torch_version,
       n.driver AS driver,
       r.image_id AS image_id
FROM runs AS r
LEFT JOIN run_nodes AS n ON n.run_id = r.run_id AND n.node_rank = 0
WHERE r.status = 'succeeded'
WINDOW w AS (PARTITION BY r.vendor, r.config_label, r.precision, r.fix_hp
             ORDER BY r.finished_at, r.run_id)
"""
CONFIG_HISTORY_0001 = _HISTORY_HEAD + _HISTORY_TAIL
CONFIG_HISTORY = _HISTORY_HEAD + "       r.mem_source AS mem_source,\n" + _HISTORY_TAIL


def upgrade() -> None:
    # ADD COLUMN needs no table rebuild on SQLite; the views are made again on the new columns.
    op.execute("DROP VIEW config_history")
    op.execute("DROP VIEW seed_table")
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.add_column(
        "runs",
        sa.Column("source", sa.String(16), nullable=False, server_default="orchestrator"),
    )
    op.add_column("runs", sa.Column("mem_source", sa.String(16), nullable=True))
    op.add_column("runs", sa.Column("mem_devices", json, nullable=True))
    op.add_column("rank_results", sa.Column("import_s", sa.Float(), nullable=True))
    op.execute(SEED_TABLE)
    op.execute(CONFIG_HISTORY)


def downgrade() -> None:
    op.execute("DROP VIEW config_history")
    op.execute("DROP VIEW seed_table")
    # Plain DROP COLUMN (SQLite >= 3.35), as 0002's downgrade.
    op.drop_column("rank_results", "import_s")
    op.drop_column("runs", "mem_devices")
    op.drop_column("runs", "mem_source")
    op.drop_column("runs", "source")
    op.execute(SEED_TABLE_0001)
    op.execute(CONFIG_HISTORY_0001)
