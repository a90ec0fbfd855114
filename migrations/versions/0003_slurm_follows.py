"""Slurm follows: which process follows each Slurm run's job (Slurm, not node leases, owns
the nodes; the follower collects and publishes the run when the job ends).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

A frozen snapshot like 0001: it does not import orchestrator.store.models.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "slurm_follows",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
            name=op.f("fk_slurm_follows_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_slurm_follows")),
    )


def downgrade() -> None:
    op.drop_table("slurm_follows")
