"""How ranks talked and what a run should be read with: the fabric NCCL used (transport, HCAs or
interfaces per node, from the ranks' NCCL INFO lines) and the run's warnings (sockets where the
cluster names IB HCAs; an SMI output not understood, so mem is the allocator's).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

A frozen snapshot like 0001: it does not import orchestrator.store.models. ADD COLUMN only: no
view reads these columns, so the views stay as 0004 made them.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.add_column("runs", sa.Column("fabric_transport", sa.String(16), nullable=True))
    op.add_column("runs", sa.Column("fabric_summary", sa.String(255), nullable=True))
    op.add_column("runs", sa.Column("fabric", json, nullable=True))
    op.add_column("runs", sa.Column("warnings", json, nullable=True))
    op.create_index("ix_runs_fabric_transport", "runs", ["fabric_transport"])


def downgrade() -> None:
    op.drop_index("ix_runs_fabric_transport", table_name="runs")
    # Plain DROP COLUMN (SQLite >= 3.35), as 0002's and 0004's downgrades.
    op.drop_column("runs", "warnings")
    op.drop_column("runs", "fabric")
    op.drop_column("runs", "fabric_summary")
    op.drop_column("runs", "fabric_transport")
