"""The seed table of whole configurations (every succeeded run of each, no time window, no
chosen runs) read from what is kept at publish: config_summaries for the groups and the
environment block, run_verdicts for the flags and warnings. A few rows per configuration, however long its history; the reports use it when
store/derived.py says those rows are current, and read the runs otherwise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select

from orchestrator.confidence import Moments
from orchestrator.regressions import ConfigKey
from orchestrator.store import derived, verdicts
from orchestrator.store.config_queries import SEED_NAMES
from orchestrator.store.environments import EnvironmentParts, lines
from orchestrator.store.models import SUMMARY_METRICS, ConfigSummary
from orchestrator.store.verdicts import Verdict
from orchestrator.units import mem_used_gib


@dataclass(frozen=True)
class ConfigTotals:
    """One configuration's succeeded runs, summed over the hardware labels it ran on."""

    key: ConfigKey  # vendor, config label, precision, fix_hp
    topology: str
    succeeded: int
    first_finished_at: datetime | None
    moments: Mapping[str, Moments]  # seed metric name (and energy_per_image_j) -> moments
    mem_peak: str | None
    mem_peak_source: str | None
    mem_measured: int


@dataclass(frozen=True)
class WholeConfigurations:
    totals: list[ConfigTotals]  # in the seed table's order of first appearance
    environment: list[tuple[str, list[str]]]
    verdicts: list[Verdict]  # the seed table's order
    warnings: dict[str, list[str]]  # run id -> its warnings, by run id


def whole_configurations(
    conn: Connection, vendor: str | None, topology: str | None, precision: str | None
) -> WholeConfigurations | None:
    """The configurations these filters select, whole; None when the kept rows are not
    current (the caller reads the runs)."""
    if not derived.current(conn):
        return None
    filters = {"vendor": vendor, "topology": topology, "precision": precision}
    c = ConfigSummary.__table__.c
    query = select(ConfigSummary).where(c.succeeded > 0)
    for name, value in filters.items():
        if value is not None:
            query = query.where(c[name] == value)
    rows = [dict(r) for r in conn.execute(query).mappings()]
    parts = EnvironmentParts()
    for row in rows:
        parts.add(EnvironmentParts.of_document(row["environment"]))
    succeeded = sum(int(r["succeeded"]) for r in rows)
    kept = verdicts.stored(conn, vendor, topology, precision)
    return WholeConfigurations(
        _totals(rows),
        lines(parts, succeeded),
        kept,
        dict(sorted((v.run_id, v.warnings) for v in kept if v.warnings)),
    )


def _totals(rows: list[dict[str, Any]]) -> list[ConfigTotals]:
    by_key: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["vendor"], row["config_label"], row["precision"], row["fix_hp"])
        by_key.setdefault(key, []).append(row)
    totals = [_total(key, group) for key, group in by_key.items()]
    # the order in which a seed table of the runs meets each configuration first
    totals.sort(key=lambda t: (t.key[0], t.topology, t.key[2], t.first_finished_at, t.key))
    return totals


def _total(key: tuple[str, ...], rows: list[dict[str, Any]]) -> ConfigTotals:
    moments = {}
    for name in SUMMARY_METRICS:
        n = sum(int(r[f"{name}_n"] or 0) for r in rows)
        if n:
            with_values = [r for r in rows if r[f"{name}_n"]]
            moments[SEED_NAMES.get(name, name)] = Moments(
                n,
                sum(float(r[f"{name}_sum"]) for r in with_values),
                sum(float(r[f"{name}_sum_sq"]) for r in with_values),
                min(float(r[f"{name}_min"]) for r in with_values),
                max(float(r[f"{name}_max"]) for r in with_values),
            )
    peaks = [r for r in rows if r["mem_peak"]]
    top = max(peaks, key=lambda r: mem_used_gib(str(r["mem_peak"])), default=None)
    first = [r["first_finished_at"] for r in rows if r["first_finished_at"] is not None]
    return ConfigTotals(
        (key[0], key[1], key[2], key[3]),
        str(rows[0]["topology"]),
        sum(int(r["succeeded"]) for r in rows),
        min(first, default=None),
        moments,
        top["mem_peak"] if top else None,
        top["mem_peak_source"] if top else None,
        sum(int(r["mem_measured"] or 0) for r in rows),
    )
