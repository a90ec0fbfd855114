"""The outcomes of a campaign's earlier repeats of one configuration: what a repeat rule
(orchestrator/repeat_rule.py) decides on when a worker takes the next repeat."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select

from orchestrator.repeat_rule import Verdict, rule_from_doc
from orchestrator.store.models import Run

if TYPE_CHECKING:
    from orchestrator.store import Store

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


def repeat_check(store: Store, doc: Mapping[str, Any], before_run: bool = True) -> Verdict | None:
    """The rule of a queued run over its campaign's repeats that ended (None: no rule; or,
    before the run, this repeat is within the minimum and runs whatever the others gave)."""
    rule = rule_from_doc(doc)
    if rule is None or (before_run and int(doc.get("repeat") or 0) <= rule.min):
        return None
    with store.reading() as conn:
        return rule.verdict(repeat_outcomes(conn, doc, rule.metric))
