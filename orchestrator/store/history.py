"""What a report needs from the store beyond the selection itself: a campaign's runs and the
history of the selected configurations (for regression flags and the history plot)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, select

from orchestrator.errors import StoreError
from orchestrator.store.models import Campaign
from orchestrator.store.queries import SEED_TABLE


def campaign_run_ids(conn: Connection, campaign_id: str, status: str | None) -> tuple[str, ...]:
    """The campaign's runs (with `status`, if given); an unknown campaign is an error."""
    if conn.scalar(select(Campaign.campaign_id).where(Campaign.campaign_id == campaign_id)) is None:
        raise StoreError(
            f"no campaign {campaign_id!r} in the results store",
            'check the campaign id (orchestrator query "SELECT campaign_id, name FROM campaigns")',
        )
    query = select(SEED_TABLE.c.run_id).where(SEED_TABLE.c.campaign_id == campaign_id)
    if status:
        query = query.where(SEED_TABLE.c.status == status)
    return tuple(conn.scalars(query.order_by(SEED_TABLE.c.run_id)))


def configuration_history(
    conn: Connection,
    rows: Sequence[Mapping[Any, Any]],
    config_key: Callable[[Mapping[Any, Any]], tuple[str, ...]],
) -> list[Mapping[Any, Any]]:
    """Every succeeded run of the configurations the rows belong to, oldest first.
    `config_key`: what makes two runs repeats of one configuration (the report's rule; its
    first two fields are the vendor and the config name)."""
    keys = {config_key(r) for r in rows}
    if not keys:
        return []
    vendors = sorted({k[0] for k in keys})
    configs = sorted({k[1] for k in keys})
    query = (
        select(SEED_TABLE)
        .where(
            SEED_TABLE.c.status == "succeeded",
            SEED_TABLE.c.vendor.in_(vendors),
            SEED_TABLE.c.config.in_(configs),
        )
        .order_by(SEED_TABLE.c.finished_at, SEED_TABLE.c.run_id)
    )
    found = [dict(r) for r in conn.execute(query).mappings()]
    return [r for r in found if config_key(r) in keys]
