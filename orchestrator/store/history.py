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
    `config_key`: what makes two runs repeats of one configuration (the report's rule: the
    vendor, the config name, the precision and fix_hp). Each field narrows the query, so only
    the configurations' own runs are read (not those of every precision and fix_hp of a
    config name: eight times as many rows in a lab's store); the rest is filtered here. The
    rows' topologies (part of the config name) let it walk ix_runs_config_time rather than
    every run in finishing order."""
    keys = {config_key(r) for r in rows}
    if not keys:
        return []
    view = SEED_TABLE.c
    vendors, configs, precisions, fix_hps = (sorted({k[i] for k in keys}) for i in range(4))
    topologies = sorted({str(r["topology"]) for r in rows})
    query = (
        select(SEED_TABLE)
        .where(
            view.status == "succeeded",
            view.vendor.in_(vendors),
            view.topology.in_(topologies),
            view.config.in_(configs),
            view.precision.in_(precisions),
            view.fix_hp.in_(fix_hps),
        )
        .order_by(view.finished_at, view.run_id)
    )
    found = [dict(r) for r in conn.execute(query).mappings()]
    return [r for r in found if config_key(r) in keys]
