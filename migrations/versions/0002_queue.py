"""Queue: the queued request on runs, a cancel request flag, and the queue's scan index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-20

A frozen snapshot like 0001: it does not import orchestrator.store.models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ADD COLUMN of nullable columns needs no table rebuild on SQLite.
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.add_column("runs", sa.Column("request", json, nullable=True))
    op.add_column(
        "runs", sa.Column("cancel_requested_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_index("ix_runs_status_submitted", "runs", ["status", "submitted_at"])


def downgrade() -> None:
    op.drop_index("ix_runs_status_submitted", table_name="runs")
    # Plain DROP COLUMN (SQLite >= 3.35): a batch rebuild of runs would break the views on it.
    op.drop_column("runs", "cancel_requested_at")
    op.drop_column("runs", "request")
