"""A configuration's history read from the store, with its change points explained by the
manifests of the runs around them (the reads behind `orchestrator history` and /history), and
the regression flags of a part of it as over the whole history.

The change points are computed on the fly (no table keeps them) and remembered per history:
the key is a digest of the history's run ids and metric values, so a published, deleted or
copied run changes it and the next request computes them again. `orchestrator serve` answers
repeated views of a configuration from memory; a command computes once anyway."""

from __future__ import annotations

import hashlib
import math
import threading
from array import array
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from orchestrator.regressions import HISTORY_RUNS, Regression, flag_history
from orchestrator.reports.changepoints import (
    CHANGE_METRICS,
    ChangePoint,
    explain,
    explain_windows,
    find_change_points,
)
from orchestrator.reports.history_report import ConfigHistory
from orchestrator.store.config_queries import ConfigKey, configuration_history, runs_before
from orchestrator.store.run_facts import run_facts

_REMEMBERED = 64  # histories whose change points are kept
_cache: OrderedDict[str, list[ChangePoint]] = OrderedDict()
_lock = threading.Lock()


def load_history(
    conn: Connection, key: ConfigKey, since: datetime | None = None, last: int | None = None
) -> ConfigHistory:
    """The configuration's succeeded runs (from `since`; only the newest `last` where given)
    and their change points, found among those runs."""
    rows = configuration_history(conn, key, since, last)
    digest = history_digest(rows)
    with _lock:
        points = _cache.get(digest)
        if points is not None:
            _cache.move_to_end(digest)
    if points is None:
        found = find_change_points(rows)
        around = {str(rows[i]["run_id"]) for w in explain_windows(found, len(rows)) for i in w}
        points = explain(found, rows, run_facts(conn, sorted(around)))
        with _lock:
            _cache[digest] = points
            while len(_cache) > _REMEMBERED:
                _cache.popitem(last=False)
    return ConfigHistory(key.vendor, key.config, key.precision, key.fix_hp, rows, points)


def history_regressions(
    conn: Connection, key: ConfigKey, rows: Sequence[Mapping[Any, Any]]
) -> dict[str, list[Regression]]:
    """The regression flags of `rows` (the configuration's runs from some run on, oldest first)
    as over its whole history: the HISTORY_RUNS runs before the first of them are their history
    too, read by one short walk of the index (not the history before them)."""
    earlier = runs_before(conn, key, rows, HISTORY_RUNS)
    flagged = flag_history([*earlier, *rows], HISTORY_RUNS)
    shown = {str(r["run_id"]) for r in rows}
    return {run_id: found for run_id, found in flagged.items() if run_id in shown}


def history_digest(rows: Sequence[Mapping[Any, Any]]) -> str:
    """What the change points depend on: the runs (ids, in order) and their watched metrics."""
    digest = hashlib.sha256("\n".join(str(r["run_id"]) for r in rows).encode())
    for metric in CHANGE_METRICS:
        digest.update(array("d", [_number(r.get(metric)) for r in rows]).tobytes())
    return digest.hexdigest()


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)
