"""The outcomes of a campaign's earlier repeats of one configuration: what a repeat rule
(orchestrator/runs/repeat_rule.py) decides on when a worker takes the next repeat."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, select

from orchestrator.store.models import Run

# The rule's metric -> its column.
_COLUMNS = {
    "p_core": Run.p_core,
    "p_train": Run.p_train,
    "p_whole": Run.p_whole,
    "e2e_time": Run.e2e_time_s,
    "map": Run.map,
}
# What makes queued runs of a campaign repeats of one configuration (their request documents).
SAME = ("cluster_key", "topology", "precision", "set_name")


def repeat_outcomes(
    conn: Connection, doc: Mapping[str, Any], metric: str
) -> list[tuple[str, float | None]]:
    """(status, metric) of the campaign's runs like `doc` that ended: succeeded, failed or lost
    (cancelled runs did not run: neither samples nor failures)."""
    campaign_id = doc.get("campaign_id")
    if not campaign_id:
        return []
    query = select(Run.status, _COLUMNS[metric].label("value"), Run.request).where(
        Run.campaign_id == campaign_id, Run.status.in_(("succeeded", "failed", "lost"))
    )
    return [
        (str(row.status), row.value)
        for row in conn.execute(query)
        if all((row.request or {}).get(k) == doc.get(k) for k in SAME)
    ]
