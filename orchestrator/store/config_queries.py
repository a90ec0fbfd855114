"""The reads about configurations: their list, one configuration's history, scaling aggregates,
and what `orchestrator compare` and the /compare page read of runs (seed rows, --set values,
epochs). Every filter is a bound parameter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select
from sqlalchemy.engine import RowMapping

from orchestrator.confidence import Moments
from orchestrator.store.models import SUMMARY_METRICS, ConfigSummary, Run
from orchestrator.store.queries import SEED_TABLE

# The seed table's names of the summaries' metrics where they differ.
SEED_NAMES = {"e2e_time_s": "e2e_time"}

# -- configurations, history, scaling ------------------------------------------------------------


@dataclass(frozen=True)
class ConfigKey:
    """What makes runs repeats of one configuration (report_stats.config_key, by name)."""

    vendor: str
    config: str
    precision: str
    fix_hp: str


def configurations(conn: Connection) -> list[RowMapping]:
    """Every configuration with succeeded runs: how many, the latest finish, mean p_core; from
    config_summaries (a few rows per configuration, whatever the length of its history)."""
    c = ConfigSummary
    p_core = func.sum(c.p_core_sum) / func.nullif(func.sum(c.p_core_n), 0)
    query = (
        select(
            c.vendor,
            c.config_label.label("config"),
            c.topology,
            c.precision,
            c.fix_hp,
            func.sum(c.succeeded).label("n"),
            func.max(c.last_finished_at).label("last"),
            p_core.label("p_core"),
        )
        .where(c.succeeded > 0)
        .group_by(c.vendor, c.config_label, c.topology, c.precision, c.fix_hp)
        .order_by(c.vendor, c.config_label, c.precision, c.fix_hp)
    )
    return list(conn.execute(query).mappings())


def configuration_history(
    conn: Connection,
    key: ConfigKey,
    since: datetime | None = None,
    last: int | None = None,
    until: datetime | None = None,
) -> list[RowMapping]:
    """The succeeded runs of one configuration as seed_table rows, oldest first: those finished
    from `since` up to `until` (each where given), or only the newest `last` of them (a walk of
    ix_runs_config_time back from the newest, `last` entries long)."""
    view = SEED_TABLE
    query = select(view).where(
        view.c.vendor == key.vendor,
        view.c.topology == _topology(conn, key),
        view.c.precision == key.precision,
        view.c.status == "succeeded",
        view.c.config == key.config,
        view.c.fix_hp == key.fix_hp,
    )
    if since is not None:
        query = query.where(view.c.finished_at >= since)
    if until is not None:
        query = query.where(view.c.finished_at <= until)
    if last is None:
        return list(conn.execute(query.order_by(view.c.finished_at, view.c.run_id)).mappings())
    newest = query.order_by(view.c.finished_at.desc(), view.c.run_id.desc()).limit(last)
    return list(reversed(list(conn.execute(newest).mappings())))


def runs_before(
    conn: Connection, key: ConfigKey, rows: Sequence[Mapping[Any, Any]], k: int
) -> list[RowMapping]:
    """The k succeeded runs of the configuration just before `rows` (its runs from some run on,
    oldest first, as configuration_history reads them): the history that the regression flags
    of the first of `rows` read. Runs that finished at the same time as the first of `rows`
    but sort before it count; those among `rows` are dropped."""
    if not rows:
        return []
    first = rows[0]["finished_at"]
    shown = {r["run_id"] for r in rows}
    ties = sum(1 for r in rows if r["finished_at"] == first)
    earlier = configuration_history(conn, key, until=first, last=k + ties)
    return [r for r in earlier if r["run_id"] not in shown][-k:]


def succeeded_runs(conn: Connection, key: ConfigKey) -> int:
    """How many succeeded runs the configuration has, from config_summaries (not a count of
    its runs)."""
    c = ConfigSummary
    total = conn.scalar(
        select(func.sum(c.succeeded)).where(
            c.vendor == key.vendor,
            c.config_label == key.config,
            c.precision == key.precision,
            c.fix_hp == key.fix_hp,
        )
    )
    return int(total or 0)


def whole_history_moments(conn: Connection, key: ConfigKey) -> dict[str, Moments]:
    """Each seed metric of the configuration's succeeded runs over its whole history, from
    config_summaries (a row per hardware label the configuration ran on, added up): no read of
    its runs. A metric no run has is left out."""
    c = ConfigSummary.__table__.c
    columns = []
    for name in SUMMARY_METRICS:
        columns += [
            func.sum(c[f"{name}_n"]),
            func.sum(c[f"{name}_sum"]),
            func.sum(c[f"{name}_sum_sq"]),
            func.min(c[f"{name}_min"]),
            func.max(c[f"{name}_max"]),
        ]
    row = conn.execute(
        select(*columns).where(
            c.vendor == key.vendor,
            c.config_label == key.config,
            c.precision == key.precision,
            c.fix_hp == key.fix_hp,
        )
    ).one()
    found = {}
    for i, name in enumerate(SUMMARY_METRICS):
        n, total, total_sq, low, high = row[5 * i : 5 * i + 5]
        if n:
            shown = SEED_NAMES.get(name, name)
            found[shown] = Moments(int(n), float(total), float(total_sq), float(low), float(high))
    return found


def _topology(conn: Connection, key: ConfigKey) -> str | None:
    """A configuration's topology (part of its label), which lets a query use the index
    ix_runs_config_time (vendor, topology, precision, finished_at); from its summary."""
    return conn.scalar(
        select(ConfigSummary.topology)
        .where(
            ConfigSummary.vendor == key.vendor,
            ConfigSummary.config_label == key.config,
            ConfigSummary.precision == key.precision,
        )
        .limit(1)
    )


def find_configurations(
    conn: Connection, vendor: str, topology: str, precision: str, fix_hp: str | None
) -> list[ConfigKey]:
    """The configurations of succeeded runs with this vendor, topology and precision (from
    config_summaries: a few rows, not the configurations' runs)."""
    c = ConfigSummary
    query = (
        select(c.vendor, c.config_label, c.precision, c.fix_hp)
        .where(c.succeeded > 0, c.vendor == vendor, c.topology == topology)
        .where(c.precision == precision)
        .distinct()
    )
    if fix_hp is not None:
        query = query.where(c.fix_hp == fix_hp)
    rows = conn.execute(query.order_by(c.config_label, c.fix_hp)).all()
    return [ConfigKey(r.vendor, r.config_label, r.precision, r.fix_hp) for r in rows]


def scaling_groups(
    conn: Connection,
    vendor: str | None = None,
    precision: str | None = None,
    since: datetime | None = None,
) -> list[RowMapping]:
    """Succeeded runs with a p_core aggregated per hardware, precision, hyper-parameters
    (fix_hp) and topology, as `report` groups repeats: n, mean, min, max and the mean of squares
    (for the spread) of p_train and p_core. The whole history comes from config_summaries;
    a window (`since`) is aggregated from its runs by the database."""
    if since is None:
        return _scaling_from_summaries(conn, vendor, precision)
    hardware = func.coalesce(Run.hardware_label, Run.vendor).label("hardware")
    columns: list[Any] = [Run.vendor, hardware, Run.precision, Run.fix_hp, Run.topology]
    columns += [Run.nnodes, Run.nproc_per_node]
    columns.append(func.count().label("n"))
    for name, column in (("p_train", Run.p_train), ("p_core", Run.p_core)):
        columns += [
            func.avg(column).label(f"{name}_mean"),
            func.avg(column * column).label(f"{name}_mean_sq"),
            func.min(column).label(f"{name}_min"),
            func.max(column).label(f"{name}_max"),
        ]
    query = select(*columns).where(
        Run.status == "succeeded", Run.p_core.is_not(None), Run.finished_at >= since
    )
    if vendor:
        query = query.where(Run.vendor == vendor)
    if precision:
        query = query.where(Run.precision == precision)
    query = query.group_by(
        Run.vendor,
        hardware,
        Run.precision,
        Run.fix_hp,
        Run.topology,
        Run.nnodes,
        Run.nproc_per_node,
    ).order_by(Run.vendor, hardware, Run.precision, Run.fix_hp, Run.nnodes, Run.nproc_per_node)
    return list(conn.execute(query).mappings())


def _scaling_from_summaries(
    conn: Connection, vendor: str | None, precision: str | None
) -> list[RowMapping]:
    c = ConfigSummary
    keys = (c.vendor, c.hardware, c.precision, c.fix_hp, c.topology, c.nnodes, c.nproc_per_node)
    columns: list[Any] = [*keys, func.sum(c.p_core_n).label("n")]
    for name in ("p_train", "p_core"):
        n = func.nullif(func.sum(c.__table__.c[f"{name}_n"]), 0)
        columns += [
            (func.sum(c.__table__.c[f"{name}_sum"]) / n).label(f"{name}_mean"),
            (func.sum(c.__table__.c[f"{name}_sum_sq"]) / n).label(f"{name}_mean_sq"),
            func.min(c.__table__.c[f"{name}_min"]).label(f"{name}_min"),
            func.max(c.__table__.c[f"{name}_max"]).label(f"{name}_max"),
        ]
    query = select(*columns).where(c.p_core_n > 0)
    if vendor:
        query = query.where(c.vendor == vendor)
    if precision:
        query = query.where(c.precision == precision)
    query = query.group_by(*keys).order_by(
        c.vendor, c.hardware, c.precision, c.fix_hp, c.nnodes, c.nproc_per_node
    )
    return list(conn.execute(query).mappings())


# -- compare's reads ----------------------------------------------------------------------------


def runs_of(conn: Connection, run_ids: Sequence[str]) -> list[RowMapping]:
    """seed_table rows of these runs (any status), in the order given."""
    if not run_ids:
        return []
    rows = {
        r["run_id"]: r
        for r in conn.execute(
            select(SEED_TABLE).where(SEED_TABLE.c.run_id.in_(list(run_ids)))
        ).mappings()
    }
    return [rows[i] for i in run_ids if i in rows]


def hparams_of(conn: Connection, run_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The --set hyper-parameters of each run."""
    if not run_ids:
        return {}
    query = select(Run.run_id, Run.hparams).where(Run.run_id.in_(list(run_ids)))
    return {r.run_id: dict(r.hparams or {}) for r in conn.execute(query)}


def setups_of(conn: Connection, run_ids: Sequence[str]) -> list[RowMapping]:
    """What makes runs alike (compare.SETUP_FIELDS) for each of these runs."""
    if not run_ids:
        return []
    columns = (Run.run_id, Run.vendor, Run.topology, Run.cluster, Run.backend, Run.runtime)
    query = select(*columns, Run.precision, Run.fix_hp).where(Run.run_id.in_(list(run_ids)))
    return list(conn.execute(query).mappings())


# The seed table's columns that the regression flags read.
_FLAG_COLUMNS = tuple(
    SEED_TABLE.c[name]
    for name in (
        "run_id",
        "vendor",
        "topology",
        "config",
        "precision",
        "fix_hp",
        "status",
        "finished_at",
        "p_train",
        "p_core",
    )
)


def flag_inputs(conn: Connection, rows: Sequence[Mapping[Any, Any]], k: int) -> list[RowMapping]:
    """What report_stats.flag_history needs to flag `rows` (and the convergence checks to find
    each run's references): per configuration, the k succeeded runs before its earliest
    selected run and every succeeded run from there to its latest.
    (store/history.py: configuration_history reads the configurations' whole history instead.)"""
    spans: dict[tuple[str, ...], tuple[datetime, datetime]] = {}
    for row in rows:
        if row.get("status") != "succeeded" or row.get("finished_at") is None:
            continue
        key = tuple(str(row[c]) for c in ("vendor", "topology", "config", "precision", "fix_hp"))
        first, last = spans.get(key, (row["finished_at"], row["finished_at"]))
        spans[key] = (min(first, row["finished_at"]), max(last, row["finished_at"]))
    view = SEED_TABLE.c
    found: list[RowMapping] = []
    for (vendor, topology, config, precision, fix_hp), (first, last) in spans.items():
        base = select(*_FLAG_COLUMNS).where(
            view.status == "succeeded",
            view.vendor == vendor,
            view.topology == topology,
            view.precision == precision,
            view.config == config,
            view.fix_hp == fix_hp,
        )
        before = base.where(view.finished_at < first)
        before = before.order_by(view.finished_at.desc(), view.run_id.desc()).limit(k)
        found += conn.execute(before).mappings()
        span = base.where(view.finished_at >= first, view.finished_at <= last)
        found += conn.execute(span).mappings()
    return found
