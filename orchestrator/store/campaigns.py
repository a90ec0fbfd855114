"""A campaign's row: inserted with its runs, running when its first run starts, finished when
none of its runs is queued or running any more."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, insert, select, update

from orchestrator.clock import utcnow
from orchestrator.states import ACTIVE_STATUSES
from orchestrator.store.models import Campaign, Run

if TYPE_CHECKING:
    from orchestrator.store import Store


def insert_campaign(
    conn: Connection, campaign_id: str, name: str, spec: dict[str, Any], by: str
) -> None:
    conn.execute(
        insert(Campaign),
        [
            {
                "campaign_id": campaign_id,
                "name": name,
                "spec": spec,
                "status": "queued",
                "created_by": by,
                "created_at": utcnow(),
            }
        ],
    )


def start_campaign(conn: Connection, campaign_id: str | None) -> None:
    """A campaign whose first run starts is running."""
    if campaign_id:
        conn.execute(
            update(Campaign)
            .where(Campaign.campaign_id == campaign_id, Campaign.status == "queued")
            .values(status="running")
        )


def finish_campaign_if_done(store: Store, campaign_id: str | None) -> None:
    if not campaign_id:
        return
    with store.transaction() as conn:
        open_runs = conn.scalar(
            select(Run.run_id)
            .where(Run.campaign_id == campaign_id, Run.status.in_(ACTIVE_STATUSES))
            .limit(1)
        )
        if open_runs is None:
            conn.execute(
                update(Campaign)
                .where(Campaign.campaign_id == campaign_id, Campaign.status.in_(ACTIVE_STATUSES))
                .values(status="finished", finished_at=utcnow())
            )
