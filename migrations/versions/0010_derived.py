"""Whole-history views from kept data, and the runs page's search indexes on PostgreSQL made
unusable for a plain `run_id = ...`: the per-run verdicts (regression flags, convergence
checks, the run's warnings), and what a configuration's summary needs for the grouped seed table without its runs
(J/image moments, the memory peak, the environment block); a record of which definitions the
derived rows were computed with.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Unlike 0009 this migration fills nothing: the new rows and columns are derived data, computed
by the store's own code (orchestrator/store/derived.py) with the definitions of the version
that runs `orchestrator db upgrade`, which records them in derived_versions. A later change of
a rule (the regression flag's sigmas, say) then rebuilds them at the next upgrade, with no
migration; until then the pages read the raw rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENERGY = "energy_per_image_j"
SUMMARY_COLUMNS = (
    f"{ENERGY}_n",
    f"{ENERGY}_sum",
    f"{ENERGY}_sum_sq",
    f"{ENERGY}_min",
    f"{ENERGY}_max",
    "mem_peak",
    "mem_peak_source",
    "mem_measured",
    "environment",
)
SCOPE = ("vendor", "topology", "precision", "config_label", "fix_hp")


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("config_summaries") as table:
        table.add_column(sa.Column(f"{ENERGY}_n", sa.Integer(), nullable=True))
        for end in ("sum", "sum_sq", "min", "max"):
            table.add_column(sa.Column(f"{ENERGY}_{end}", sa.Float(), nullable=True))
        table.add_column(sa.Column("mem_peak", sa.String(64), nullable=True))
        table.add_column(sa.Column("mem_peak_source", sa.String(16), nullable=True))
        table.add_column(sa.Column("mem_measured", sa.Integer(), nullable=True))
        table.add_column(sa.Column("environment", _json(), nullable=True))
    op.create_table(
        "run_verdicts",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("vendor", sa.String(64), nullable=False),
        sa.Column("topology", sa.String(16), nullable=False),
        sa.Column("precision", sa.String(16), nullable=False),
        sa.Column("config_label", sa.String(128), nullable=False),
        sa.Column("fix_hp", sa.String(255), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("regressions", _json(), nullable=False),
        sa.Column("convergence", _json(), nullable=True),
        sa.Column("warnings", _json(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name="fk_run_verdicts_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", name="pk_run_verdicts"),
    )
    op.create_index("ix_run_verdicts_config", "run_verdicts", [*SCOPE, "finished_at"])
    op.create_table(
        "derived_versions",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(512), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_derived_versions"),
    )
    _search_indexes("lower({})")


def _search_indexes(expression: str) -> None:
    """0009's pg_trgm GIN indexes on the bare columns serve `=` too (gin_trgm_ops has it), and
    PostgreSQL's planner took the run_id one for `run_id IN (...)` reads (a run's warnings, its
    energy), which walked the trigram lists of `ben`, `enc`, ... for every run: 325 ms for 76
    runs of a 10,000-run store, instead of the primary key. Indexes on lower(column) serve the
    search (store/search.py, now case-insensitive as SQLite's) and nothing else. Only where 0009
    could make them (pg_trgm present)."""
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return
    found = conn.exec_driver_sql(
        "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_runs_search_run_id'"
    ).scalar()
    if not found:
        return
    for column in ("run_id", "reason"):
        conn.exec_driver_sql(f"DROP INDEX ix_runs_search_{column}")
        conn.exec_driver_sql(
            f"CREATE INDEX ix_runs_search_{column} ON runs "
            f"USING gin ({expression.format(column)} gin_trgm_ops)"
        )


def downgrade() -> None:
    _search_indexes("{}")
    op.drop_table("derived_versions")
    op.drop_index("ix_run_verdicts_config", table_name="run_verdicts")
    op.drop_table("run_verdicts")
    with op.batch_alter_table("config_summaries") as table:
        for column in reversed(SUMMARY_COLUMNS):
            table.drop_column(column)
