"""A run's own readings: each rank's pace and straggler scores, the run's stragglers, and the
energy of its training window from the monitors' power samples (J, J per image, coverage).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

A frozen snapshot like 0001: it does not import orchestrator.store.models. ADD COLUMN only (and
one index); no view reads these columns, so the views stay as 0004 made them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.add_column("rank_results", sa.Column("node_name", sa.String(128), nullable=True))
    op.add_column("rank_results", sa.Column("device_index", sa.Integer(), nullable=True))
    op.add_column("rank_results", sa.Column("pace_s", sa.Float(), nullable=True))
    op.add_column("rank_results", sa.Column("straggler_ratio", sa.Float(), nullable=True))
    op.add_column("rank_results", sa.Column("history_ratio", sa.Float(), nullable=True))
    op.add_column("rank_results", sa.Column("straggler", sa.Boolean(), nullable=True))
    op.create_index("ix_rank_results_node_device", "rank_results", ["node_name", "device_index"])
    op.add_column("runs", sa.Column("stragglers", json, nullable=True))
    op.add_column("runs", sa.Column("energy_j", sa.Float(), nullable=True))
    op.add_column("runs", sa.Column("energy_per_image_j", sa.Float(), nullable=True))
    op.add_column("runs", sa.Column("power_coverage", sa.Float(), nullable=True))
    op.add_column("runs", sa.Column("energy", json, nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite >= 3.35), as 0002's, 0004's and 0005's downgrades.
    for column in ("energy", "power_coverage", "energy_per_image_j", "energy_j", "stragglers"):
        op.drop_column("runs", column)
    op.drop_index("ix_rank_results_node_device", table_name="rank_results")
    for column in (
        "straggler",
        "history_ratio",
        "straggler_ratio",
        "pace_s",
        "device_index",
        "node_name",
    ):
        op.drop_column("rank_results", column)
