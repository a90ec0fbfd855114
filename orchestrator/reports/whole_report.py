"""The grouped seed table of whole configurations (every succeeded run of each, no window, no
chosen runs), from what the store keeps at publish (store/whole_configs.py): the same groups,
flags, convergence lines, warnings and environment as reading every run gives, in a few rows
per configuration. `report` (markdown, table) and the /seed page use it; CSV and JSON, which
list every run, read the runs."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from orchestrator.convergence import Convergence
from orchestrator.regressions import ConfigKey, Regression
from orchestrator.reports.stats import SummaryGroup
from orchestrator.store.whole_configs import whole_configurations


@dataclass(frozen=True)
class WholeView:
    environment: list[tuple[str, list[str]]]
    groups: list[SummaryGroup]
    regressions: dict[str, list[Regression]]  # run id -> its flags, in the seed table's order
    warnings: dict[str, list[str]]
    convergence: list[Convergence]  # the flagged checks, in the seed table's order


def whole_view(
    conn: Connection, vendor: str | None, topology: str | None, precision: str | None
) -> WholeView | None:
    """None while the kept rows are not current (store/derived.py): read the runs then."""
    found = whole_configurations(conn, vendor, topology, precision)
    if found is None:
        return None
    flagged: dict[ConfigKey, list[str]] = {}
    for verdict in found.verdicts:
        if verdict.regressions:
            flagged.setdefault(verdict.key, []).append(verdict.run_id)
    groups = [
        SummaryGroup(
            t.key,
            t.topology,
            t.succeeded,
            t.moments,
            t.mem_peak,
            t.mem_peak_source,
            t.mem_measured > 0,
            flagged.get(t.key, []),
        )
        for t in found.totals
    ]
    return WholeView(
        found.environment,
        groups,
        {v.run_id: v.regressions for v in found.verdicts if v.regressions},
        found.warnings,
        [v.convergence for v in found.verdicts if v.convergence is not None],
    )
