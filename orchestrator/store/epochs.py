"""A run's epochs (run_epochs), read for its mAP curve: the convergence checks (the verdicts
kept at publish and the reports) and the epoch charts of /compare."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, select
from sqlalchemy.engine import RowMapping

from orchestrator.store.models import RunEpoch


def epochs_of(conn: Connection, run_ids: Sequence[str]) -> dict[str, list[RowMapping]]:
    found: dict[str, list[RowMapping]] = {i: [] for i in run_ids}
    if not run_ids:
        return found
    query = (
        select(RunEpoch)
        .where(RunEpoch.run_id.in_(list(run_ids)))
        .order_by(RunEpoch.run_id, RunEpoch.epoch)
    )
    for row in conn.execute(query).mappings():
        found[row["run_id"]].append(row)
    return found
