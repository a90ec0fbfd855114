"""The run_followers view: each run with whether its follower is still there, for read-only
paths (`orchestrator query`, the web pages) that must not wait for a writing command to settle
a run whose follower died.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

A frozen snapshot like 0001: it does not import orchestrator. The view mirrors the one rule of
orchestrator/store/follower.py (follower_state, follower_grace_s, SETTLE_MARGIN_S = 4 s):

- follower NULL: the run is not running, or it has no stored request (nobody can adopt it);
- 'alive': one of its leases (node_leases, or its job's slurm_follows row) expires after now;
- 'gone': every lease expired (or it holds none) and its job is a scheduler's (slurm_job_id:
  never settled by the grace), or the grace has not passed since the latest expiry;
- 'lost-pending': its follower has been gone for [cluster] follower_grace_s of its stored
  cluster file (default 180 s) plus the margin: the next writer records it lost.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SETTLE_MARGIN_S = 4.0
DEFAULT_GRACE_S = 180.0

_HELD = """held AS (
  SELECT run_id, MAX(expires_at) AS expires_at, MIN(holder) AS holder
  FROM (
    SELECT run_id, expires_at, holder FROM node_leases WHERE run_id IS NOT NULL
    UNION ALL
    SELECT run_id, expires_at, holder FROM slurm_follows
  ) AS leases
  GROUP BY run_id
)"""

# Per dialect: the grace from the stored request (numbers only, as follower_grace_s), whether a
# lease is still live, and whether the grace has passed since it expired.
_SQLITE = {
    "grace": (
        "CASE WHEN json_type(r.request, '$.cluster_data.cluster.follower_grace_s') "
        "IN ('integer', 'real') "
        "THEN json_extract(r.request, '$.cluster_data.cluster.follower_grace_s') "
        f"ELSE {DEFAULT_GRACE_S} END"
    ),
    "live": "julianday(lease_expires_at) > julianday('now')",
    "past": (
        f"(julianday('now') - julianday(lease_expires_at)) * 86400.0 >= grace_s + {SETTLE_MARGIN_S}"
    ),
}
_POSTGRES = {
    "grace": (
        "CASE WHEN jsonb_typeof(r.request #> '{cluster_data,cluster,follower_grace_s}') "
        "= 'number' "
        "THEN (r.request #>> '{cluster_data,cluster,follower_grace_s}')::double precision "
        f"ELSE {DEFAULT_GRACE_S} END"
    ),
    "live": "lease_expires_at > now()",
    "past": (f"EXTRACT(EPOCH FROM (now() - lease_expires_at)) >= grace_s + {SETTLE_MARGIN_S}"),
}


def view_sql(dialect: str) -> str:
    sql = _POSTGRES if dialect == "postgresql" else _SQLITE
    return f"""CREATE VIEW run_followers AS
WITH {_HELD},
facts AS (
  SELECT r.run_id, r.cluster, r.backend, r.status, r.slurm_job_id,
    r.request IS NOT NULL AS has_request,
    h.holder, h.expires_at AS lease_expires_at,
    CASE WHEN r.slurm_job_id IS NOT NULL THEN NULL ELSE {sql["grace"]} END AS grace_s
  FROM runs AS r LEFT JOIN held AS h ON h.run_id = r.run_id
)
SELECT run_id, cluster, backend, status, holder, lease_expires_at, grace_s,
  CASE
    WHEN status <> 'running' OR NOT has_request THEN NULL
    WHEN lease_expires_at IS NOT NULL AND {sql["live"]} THEN 'alive'
    WHEN grace_s IS NULL THEN 'gone'
    WHEN lease_expires_at IS NULL OR {sql["past"]} THEN 'lost-pending'
    ELSE 'gone'
  END AS follower
FROM facts
"""


def upgrade() -> None:
    op.execute(view_sql(op.get_bind().dialect.name))


def downgrade() -> None:
    op.execute("DROP VIEW run_followers")
