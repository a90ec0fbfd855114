"""The results store: SQLAlchemy models, Alembic migrations, ingest of run folders, queries.

SQLite for a laptop, PostgreSQL for a lab; the schema is made only by `orchestrator db upgrade`
(migrations/). docs/schema.md describes the tables and views.
"""

from orchestrator.store.engine import redact_url
from orchestrator.store.ingest import RunSummary
from orchestrator.store.metrics import RunMetrics
from orchestrator.store.migrate import (
    Migration,
    current_revision,
    downgrade_impact,
    downgrade_store,
    head_revision,
    upgrade_store,
)
from orchestrator.store.store import Store, open_store

__all__ = [
    "Migration",
    "RunMetrics",
    "RunSummary",
    "Store",
    "current_revision",
    "downgrade_impact",
    "downgrade_store",
    "head_revision",
    "open_store",
    "redact_url",
    "upgrade_store",
]
