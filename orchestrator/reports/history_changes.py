"""A configuration's history read from the store, with its change points explained by the
manifests of the runs around them (the reads behind `orchestrator history` and /history)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from orchestrator.reports.changepoints import explain, explain_windows, find_change_points
from orchestrator.reports.history_report import ConfigHistory
from orchestrator.store.config_queries import ConfigKey, configuration_history
from orchestrator.store.run_facts import run_facts


def load_history(conn: Connection, key: ConfigKey, since: datetime | None = None) -> ConfigHistory:
    rows = configuration_history(conn, key, since)
    points = find_change_points(rows)
    around = {str(rows[i]["run_id"]) for w in explain_windows(points, len(rows)) for i in w}
    explained = explain(points, rows, run_facts(conn, sorted(around)))
    return ConfigHistory(key.vendor, key.config, key.precision, key.fix_hp, rows, explained)
