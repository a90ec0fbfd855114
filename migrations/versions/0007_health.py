"""Health checks: the probe's runs, their figures and verdicts, and quarantined nodes
(docs/health.md).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

A frozen snapshot like 0001: it does not import orchestrator.store.models. New tables only.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECKS = ("compute", "allreduce", "intra", "pair")
VERDICTS = ("ok", "fail", "unjudged")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def upgrade() -> None:
    json = sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )
    big_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    at = sa.DateTime(timezone=True)
    op.create_table(
        "health_checks",
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column("cluster", sa.String(128), nullable=False),
        sa.Column("topology", sa.String(32), nullable=False),
        sa.Column("nodes", json, nullable=False),
        sa.Column(
            "gated_run_id",
            sa.String(64),
            sa.ForeignKey(
                "runs.run_id",
                ondelete="SET NULL",
                name=op.f("fk_health_checks_gated_run_id_runs"),
            ),
            nullable=True,
        ),
        sa.Column("backend", sa.String(16), nullable=True),
        sa.Column("precision", sa.String(8), nullable=True),
        sa.Column("started_at", at, nullable=False),
        sa.Column("took_s", sa.Float(), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("blamed", json, nullable=True),
        sa.Column("summary", sa.String(1024), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_health_checks")),
    )
    op.create_index("ix_health_checks_gated_run_id", "health_checks", ["gated_run_id"])
    op.create_index("ix_health_checks_started_at", "health_checks", ["started_at"])
    op.create_table(
        "health_figures",
        sa.Column("id", big_id, primary_key=True, autoincrement=True),
        sa.Column(
            "check_id",
            big_id,
            sa.ForeignKey(
                "health_checks.id",
                ondelete="CASCADE",
                name=op.f("fk_health_figures_check_id_health_checks"),
            ),
            nullable=False,
        ),
        sa.Column("check_name", sa.String(16), nullable=False),
        sa.Column("node_name", sa.String(128), nullable=True),
        sa.Column("peer_name", sa.String(128), nullable=True),
        sa.Column("device_index", sa.Integer(), nullable=True),
        sa.Column("ranks", sa.Integer(), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("expected", sa.Float(), nullable=True),
        sa.Column("expected_from", sa.String(32), nullable=False),
        sa.Column("fraction", sa.Float(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("exempt", sa.Boolean(), nullable=False),
        sa.Column("measured_at", at, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_health_figures")),
        sa.CheckConstraint(_in("check_name", CHECKS), name=op.f("ck_health_figures_check_name")),
        sa.CheckConstraint(_in("verdict", VERDICTS), name=op.f("ck_health_figures_verdict")),
    )
    op.create_index("ix_health_figures_check_id", "health_figures", ["check_id"])
    op.create_index(
        "ix_health_figures_node_check_at",
        "health_figures",
        ["node_name", "check_name", "measured_at"],
    )
    op.create_table(
        "node_quarantine",
        sa.Column("cluster", sa.String(128), nullable=False),
        sa.Column("node_name", sa.String(128), nullable=False),
        sa.Column("reason", sa.String(1024), nullable=False),
        sa.Column("since", at, nullable=False),
        sa.Column("expires_at", at, nullable=False),
        sa.Column(
            "check_id",
            big_id,
            sa.ForeignKey(
                "health_checks.id",
                ondelete="SET NULL",
                name=op.f("fk_node_quarantine_check_id_health_checks"),
            ),
            nullable=True,
        ),
        sa.PrimaryKeyConstraint("cluster", "node_name", name=op.f("pk_node_quarantine")),
    )
    op.create_index("ix_node_quarantine_expires_at", "node_quarantine", ["expires_at"])


def downgrade() -> None:
    op.drop_table("node_quarantine")
    op.drop_table("health_figures")
    op.drop_table("health_checks")
