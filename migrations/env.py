"""Alembic environment for the results store, driven from code (orchestrator.store.migrate).

There is no alembic.ini: orchestrator.store.migrate builds the Config, opens the connection with
the store's engine settings and hands it over in `config.attributes["connection"]`.
"""

from __future__ import annotations

from alembic import context

from orchestrator.store.models import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through `orchestrator db upgrade` (orchestrator.store.migrate), "
        "which provides the database connection"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: later migrations rebuild tables in batch mode.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
    transaction_per_migration=False,
)

with context.begin_transaction():
    context.run_migrations()
