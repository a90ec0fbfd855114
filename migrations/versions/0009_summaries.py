"""Pages whose cost does not grow with the history: per-configuration summaries
(config_summaries), monitor series downsampled at publish (run_monitor_series), and an index per
sort of the runs page (each column with run_id, its tie-breaker).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

A frozen snapshot like 0001: it does not import orchestrator.store. The two new tables are
filled from the rows already stored, by the same definitions as orchestrator/store/summaries.py
and orchestrator/store/monitor_series.py (copied here, as they are today), so a store upgraded
with history is the same as one whose runs were published after the upgrade.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SORTED = (
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
METRICS = ("e2e_time_s", "p_whole", "p_train", "p_core", "map")
KEY = ("vendor", "hardware", "config_label", "topology", "precision", "fix_hp")
RECENT_RUNS = 20
BUCKETS = 120


def _time() -> sa.types.TypeEngine[Any]:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    metric_columns = [
        column
        for m in METRICS
        for column in (
            sa.Column(f"{m}_n", sa.Integer(), nullable=False),
            sa.Column(f"{m}_sum", sa.Float(), nullable=True),
            sa.Column(f"{m}_sum_sq", sa.Float(), nullable=True),
            sa.Column(f"{m}_min", sa.Float(), nullable=True),
            sa.Column(f"{m}_max", sa.Float(), nullable=True),
        )
    ]
    op.create_table(
        "config_summaries",
        sa.Column("vendor", sa.String(64), nullable=False),
        sa.Column("hardware", sa.String(64), nullable=False),
        sa.Column("config_label", sa.String(128), nullable=False),
        sa.Column("topology", sa.String(16), nullable=False),
        sa.Column("precision", sa.String(16), nullable=False),
        sa.Column("fix_hp", sa.String(255), nullable=False),
        sa.Column("nnodes", sa.Integer(), nullable=False),
        sa.Column("nproc_per_node", sa.Integer(), nullable=False),
        sa.Column("runs", sa.Integer(), nullable=False),
        sa.Column("succeeded", sa.Integer(), nullable=False),
        sa.Column("first_finished_at", _time(), nullable=True),
        sa.Column("last_finished_at", _time(), nullable=True),
        *metric_columns,
        sa.Column("recent", json_type, nullable=False),
        sa.PrimaryKeyConstraint(*KEY, name="pk_config_summaries"),
    )
    op.create_table(
        "run_monitor_series",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("series", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("node_name", sa.String(128), nullable=False),
        sa.Column("device_index", sa.Integer(), nullable=True),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("points", json_type, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.run_id"],
            name="fk_run_monitor_series_run_id_runs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "series", name="pk_run_monitor_series"),
    )
    # (column, run_id) serves every query the single-column indexes served
    op.drop_index("ix_runs_finished_at", table_name="runs")
    op.drop_index("ix_runs_p_core", table_name="runs")
    for column in SORTED:
        op.create_index(f"ix_runs_sort_{column}", "runs", [column, "run_id"])
    op.create_index(
        "ix_runs_config_submitted", "runs", ["vendor", "topology", "precision", "submitted_at"]
    )
    # the queue's index with the tie-breaker: "status = 'running' ORDER BY submitted_at,
    # run_id" would otherwise walk ix_runs_sort_submitted_at over the whole history on SQLite
    op.drop_index("ix_runs_status_submitted", table_name="runs")
    op.create_index("ix_runs_status_submitted", "runs", ["status", "submitted_at", "run_id"])
    conn = op.get_bind()
    _fill_summaries(conn)
    _fill_monitor_series(conn)
    _create_search(conn)


def downgrade() -> None:
    _drop_search(op.get_bind())
    op.drop_index("ix_runs_config_submitted", table_name="runs")
    op.drop_index("ix_runs_status_submitted", table_name="runs")
    op.create_index("ix_runs_status_submitted", "runs", ["status", "submitted_at"])
    for column in SORTED:
        op.drop_index(f"ix_runs_sort_{column}", table_name="runs")
    op.create_index("ix_runs_finished_at", "runs", ["finished_at"])
    op.create_index("ix_runs_p_core", "runs", ["p_core"])
    op.drop_table("run_monitor_series")
    op.drop_table("config_summaries")


# -- text search: FTS5 (trigram) on SQLite, pg_trgm GIN indexes on PostgreSQL ------------------

SQLITE_SEARCH = (
    "CREATE VIRTUAL TABLE runs_search USING fts5(run_id, reason, tokenize = 'trigram')",
    "INSERT INTO runs_search (run_id, reason) SELECT run_id, reason FROM runs",
    """CREATE TRIGGER runs_search_insert AFTER INSERT ON runs BEGIN
    INSERT INTO runs_search (run_id, reason) VALUES (new.run_id, new.reason);
END""",
    # The FTS row of a run is found by a MATCH on its id (indexed), then checked exactly;
    # an id shorter than a trigram is looked for the slow way.
    """CREATE TRIGGER runs_search_delete AFTER DELETE ON runs BEGIN
    DELETE FROM runs_search WHERE rowid IN (
        SELECT rowid FROM runs_search
        WHERE runs_search MATCH 'run_id : "' || replace(old.run_id, '"', '""') || '"'
    ) AND run_id = old.run_id;
    DELETE FROM runs_search WHERE length(old.run_id) < 3 AND run_id = old.run_id;
END""",
    """CREATE TRIGGER runs_search_update AFTER UPDATE OF run_id, reason ON runs
WHEN old.reason IS NOT new.reason OR old.run_id IS NOT new.run_id BEGIN
    DELETE FROM runs_search WHERE rowid IN (
        SELECT rowid FROM runs_search
        WHERE runs_search MATCH 'run_id : "' || replace(old.run_id, '"', '""') || '"'
    ) AND run_id = old.run_id;
    DELETE FROM runs_search WHERE length(old.run_id) < 3 AND run_id = old.run_id;
    INSERT INTO runs_search (run_id, reason) VALUES (new.run_id, new.reason);
END""",
)


def _create_search(conn: sa.Connection) -> None:
    if conn.dialect.name == "sqlite":
        for statement in SQLITE_SEARCH:
            conn.exec_driver_sql(statement)
        return
    # pg_trgm ships with PostgreSQL's contrib; it is a trusted extension (PostgreSQL 13+): the
    # database's owner may create it. Where it cannot be created, the search reads the table
    # (docs/web.md); the upgrade goes on.
    with conn.begin_nested() as savepoint:
        try:
            conn.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except sa.exc.DBAPIError:
            savepoint.rollback()
            return
    for column in ("run_id", "reason"):
        conn.exec_driver_sql(
            f"CREATE INDEX ix_runs_search_{column} ON runs USING gin ({column} gin_trgm_ops)"
        )


def _drop_search(conn: sa.Connection) -> None:
    if conn.dialect.name == "sqlite":
        for trigger in ("insert", "delete", "update"):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS runs_search_{trigger}")
        conn.exec_driver_sql("DROP TABLE IF EXISTS runs_search")
        return
    for column in ("run_id", "reason"):
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS ix_runs_search_{column}")
    # the extension stays: other databases' objects may use it, and dropping needs its owner


# -- filling the tables from the stored rows (frozen copies of the store's definitions) ---------


def _utc(value: Any) -> datetime:
    """A timestamp as read with plain SQL: text on SQLite (UTC), timestamptz on PostgreSQL."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _fill_summaries(conn: sa.Connection) -> None:
    succeeded = "status = 'succeeded'"
    columns = [
        "vendor",
        "COALESCE(hardware_label, vendor) AS hardware",
        "config_label",
        "topology",
        "precision",
        "fix_hp",
        "MAX(nnodes) AS nnodes",
        "MAX(nproc_per_node) AS nproc_per_node",
        "COUNT(*) AS runs",
        f"SUM(CASE WHEN {succeeded} THEN 1 ELSE 0 END) AS succeeded",
        f"MIN(CASE WHEN {succeeded} THEN finished_at END) AS first_finished_at",
        f"MAX(CASE WHEN {succeeded} THEN finished_at END) AS last_finished_at",
    ]
    for m in METRICS:
        value = f"CASE WHEN {succeeded} THEN {m} END"
        columns += [
            f"COUNT({value}) AS {m}_n",
            f"SUM({value}) AS {m}_sum",
            f"SUM(({value}) * ({value})) AS {m}_sum_sq",
            f"MIN({value}) AS {m}_min",
            f"MAX({value}) AS {m}_max",
        ]
    group = "vendor, COALESCE(hardware_label, vendor), config_label, topology, precision, fix_hp"
    rows = conn.execute(
        sa.text(f"SELECT {', '.join(columns)} FROM runs GROUP BY {group}")  # noqa: S608
    ).mappings()
    table = sa.table(
        "config_summaries",
        *(sa.column(name) for name in KEY),
        sa.column("recent", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
        *(
            sa.column(c)
            for c in ("nnodes", "nproc_per_node", "runs", "succeeded")
            + tuple(f"{m}_{s}" for m in METRICS for s in ("n", "sum", "sum_sq", "min", "max"))
        ),
        sa.column("first_finished_at", _time()),
        sa.column("last_finished_at", _time()),
    )
    for row in list(rows):
        out = dict(row)
        for name in ("first_finished_at", "last_finished_at"):
            out[name] = None if out[name] is None else _utc(out[name])
        out["succeeded"] = int(out["succeeded"] or 0)
        out["recent"] = _recent(conn, out) if out["succeeded"] else []
        conn.execute(sa.insert(table), [out])


def _recent(conn: sa.Connection, key: dict[str, Any]) -> list[dict[str, Any]]:
    query = sa.text(
        f"SELECT run_id, finished_at, {', '.join(METRICS)} FROM runs "  # noqa: S608
        "WHERE vendor = :vendor AND topology = :topology AND precision = :precision "
        "AND config_label = :config_label AND fix_hp = :fix_hp "
        "AND COALESCE(hardware_label, vendor) = :hardware AND status = 'succeeded' "
        "AND finished_at IS NOT NULL ORDER BY finished_at DESC, run_id DESC LIMIT :n"
    )
    params = {k: key[k] for k in KEY} | {"n": RECENT_RUNS}
    recent = []
    for row in conn.execute(query, params).mappings():
        item = {"run_id": row["run_id"], "finished_at": _utc(row["finished_at"]).isoformat()}
        item.update({m: row[m] for m in METRICS})
        recent.append(item)
    return recent


def _fill_monitor_series(conn: sa.Connection) -> None:
    table = sa.table(
        "run_monitor_series",
        *(sa.column(c) for c in ("run_id", "series", "metric", "node_name", "device_index")),
        sa.column("samples"),
        sa.column("points", sa.JSON().with_variant(postgresql.JSONB(), "postgresql")),
    )
    run_ids = list(conn.execute(sa.text("SELECT DISTINCT run_id FROM monitor_samples")).scalars())
    for run_id in run_ids:
        samples = conn.execute(
            sa.text(
                "SELECT metric, node_name, device_index, ts, value FROM monitor_samples "
                "WHERE run_id = :r"
            ),
            {"r": run_id},
        ).mappings()
        rows = _downsample(run_id, list(samples))
        if rows:
            conn.execute(sa.insert(table), rows)


def _downsample(run_id: str, rows: list[Any]) -> list[dict[str, Any]]:
    times = [_utc(r["ts"]).timestamp() for r in rows]
    t0 = min(times)
    width = max((max(times) - t0) / BUCKETS, 1e-3)
    sums: dict[tuple[str, str, int | None], dict[int, list[float]]] = {}
    for row, t in zip(rows, times):
        if row["metric"] == "monitor_tool_missing":
            continue
        key = (str(row["metric"]), str(row["node_name"]), row["device_index"])
        bucket = sums.setdefault(key, {}).setdefault(math.floor((t - t0) / width), [0.0, 0])
        bucket[0] += float(row["value"])
        bucket[1] += 1

    def order(key: tuple[str, str, int | None]) -> tuple[str, str, int]:
        return (key[0], key[1], -1 if key[2] is None else key[2])

    out = []
    for i, key in enumerate(sorted(sums, key=order)):
        buckets = sorted(sums[key].items())
        out.append(
            {
                "run_id": run_id,
                "series": i,
                "metric": key[0],
                "node_name": key[1],
                "device_index": key[2],
                "samples": int(sum(n for _, (_, n) in buckets)),
                "points": [[round((k + 0.5) * width, 3), total / n] for k, (total, n) in buckets],
            }
        )
    return out
