"""The sides of a comparison read from the store: `orchestrator compare` and the /compare page
name them the same way, a run id (or an unambiguous prefix) or a configuration written
VENDOR:TOPOLOGY:PRECISION[:FIX_HP] (the mean of its last succeeded runs, or of those since its
last change point)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection

from orchestrator.errors import ConfigError
from orchestrator.no_match import stored_instead
from orchestrator.reports.changepoints import find_change_points, since_last
from orchestrator.reports.compare import Side, config_side, run_side
from orchestrator.store.config_queries import (
    ConfigKey,
    configuration_history,
    find_configurations,
    hparams_of,
    runs_of,
    setups_of,
)
from orchestrator.store.queries import environment, resolve_run
from orchestrator.store.web_queries import filter_options

DEFAULT_LAST = 10  # a configuration is the mean of its last 10 succeeded runs


def is_configuration(item: str) -> bool:
    return ":" in item


def load_sides(
    conn: Connection, items: Sequence[str], last: int = DEFAULT_LAST, since_change: bool = False
) -> list[Side]:
    """One side per item, in the order given (the first is the baseline)."""
    if len(items) < 2:
        raise ConfigError(
            "compare needs two or more runs or configurations",
            "name them, e.g. orchestrator compare RUN_A RUN_B, or metax-c500:2x8:amp nvidia:2x8:amp",
        )
    return [
        _configuration(conn, item, last, since_change)
        if is_configuration(item)
        else _run(conn, item)
        for item in items
    ]


def oldest_first(conn: Connection, items: Sequence[str]) -> list[str]:
    """Run items in the order they finished (the oldest becomes the baseline), then any
    configurations: what a selection ticked on the newest-first runs page means."""
    runs = [resolve_run(conn, i) for i in items if not is_configuration(i)]
    rows = runs_of(conn, runs)
    latest = datetime.max.replace(tzinfo=timezone.utc)
    rows = sorted(rows, key=lambda r: (r["finished_at"] or latest, str(r["run_id"])))
    return [str(r["run_id"]) for r in rows] + [i for i in items if is_configuration(i)]


def _run(conn: Connection, ref: str) -> Side:
    run_id = resolve_run(conn, ref)
    row = runs_of(conn, [run_id])[0]
    return run_side(
        row,
        environment(conn, [run_id]),
        hparams_of(conn, [run_id])[run_id],
        setups_of(conn, [run_id]),
    )


def _stored_hint(conn: Connection, given: Mapping[str, str | None]) -> str:
    """What the store holds of the parts that match nothing, or where to look."""
    options = filter_options(conn)
    stored = {
        "--vendor": options.vendors,
        "--topology": options.topologies,
        "--precision": options.precisions,
    }
    instead = stored_instead(given, stored)
    if not instead:  # each part exists, not together: see which runs there are
        return "see the succeeded runs with: orchestrator runs list --status succeeded"
    return "; ".join(instead)


def resolve_configuration(conn: Connection, item: str) -> ConfigKey:
    """VENDOR:TOPOLOGY:PRECISION[:FIX_HP] -> the one configuration of succeeded runs it names."""
    parts = item.split(":")
    if len(parts) not in (3, 4) or not all(parts[:3]):
        raise ConfigError(
            f"configuration {item!r} is not VENDOR:TOPOLOGY:PRECISION[:FIX_HP]",
            "write e.g. metax-c500:2x8:amp, or metax-c500:2x8:amp:bs=16, lr=0.08",
        )
    vendor, topology, precision = parts[:3]
    fix_hp = parts[3] if len(parts) == 4 else None
    keys = find_configurations(conn, vendor, topology, precision, fix_hp)
    if not keys:
        given = {"--vendor": vendor, "--topology": topology, "--precision": precision}
        raise ConfigError(
            f"no succeeded run of configuration {item!r} in the results store",
            _stored_hint(conn, given),
        )
    if len(keys) > 1:
        shown = "; ".join(f"{k.config} fix_hp {k.fix_hp}" for k in keys[:5])
        raise ConfigError(
            f"configuration {item!r} matches {len(keys)} configurations: {shown}",
            f"add :FIX_HP, e.g. {item}:/ for the defaults",
        )
    return keys[0]


def _configuration(conn: Connection, item: str, last: int, since_change: bool) -> Side:
    key = resolve_configuration(conn, item)
    rows: Sequence[Mapping[Any, Any]]
    if since_change:  # at most `last` of them
        rows, what = runs_since_change(conn, key)[-last:], " since the last change point"
    else:
        rows, what = configuration_history(conn, key, last=last), ""
    ids = [str(r["run_id"]) for r in rows]
    label = f"{item} (mean of {len(rows)} run{'s' if len(rows) != 1 else ''}{what})"
    newest = hparams_of(conn, ids[-1:]).get(ids[-1], {})
    return config_side(label, rows, environment(conn, ids), newest, setups_of(conn, ids))


def runs_since_change(conn: Connection, key: ConfigKey) -> list[Mapping[Any, Any]]:
    """The configuration's succeeded runs from its last change point on (docs/reports.md)."""
    rows = configuration_history(conn, key)
    return since_last(rows, find_change_points(rows))
