"""Per-run verdicts kept at publish (run_verdicts, migration 0010): each succeeded run's
regression flags (orchestrator/regressions.py: against the HISTORY_RUNS runs of its
configuration before it), its convergence check (orchestrator/convergence.py: against the
REFERENCE_RUNS before it) when that flagged it, and its warnings. A row exists only for a run
with something to show, so the whole-history views read a few rows, not every run.

A run's verdicts depend on the runs before it only: a write that touches runs from time t on
(store/scopes.py) recomputes the verdicts of its configuration's runs from t on, reading the
runs from t and the few before t. Publishing the newest run reads a dozen runs.
`rebuild` recomputes every row; `RULE` names the definitions the rows were computed with
(store/derived.py records it, and rebuilds the rows when the code's differs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select

from orchestrator import convergence as conv
from orchestrator import regressions as reg
from orchestrator.convergence import Convergence, check, curve_from_epochs
from orchestrator.regressions import ConfigKey, Regression, config_key, flag_history
from orchestrator.store.bulk import chunks, insert_rows
from orchestrator.store.epochs import epochs_of
from orchestrator.store.models import Run, RunVerdict
from orchestrator.store.scopes import Scope, Span, Touched, scope_filter

# Bump VERSION when the code of a rule changes; the constants are in the string already.
VERSION = 1
RULE = (
    f"v{VERSION}; regression: last {reg.HISTORY_RUNS} runs, watched {','.join(reg.WATCHED)}, "
    f"{reg.SIGMAS} sd and {reg.MIN_DROP} below, at least {reg.MIN_HISTORY}; convergence: last "
    f"{conv.REFERENCE_RUNS} runs, target {conv.TARGET_FRACTION}, mAP tolerance "
    f"{conv.MAP_TOLERANCE}, throughput change {conv.THROUGHPUT_CHANGE}"
)
BEFORE = max(reg.HISTORY_RUNS, conv.REFERENCE_RUNS)  # runs before a span its verdicts read

_COLUMNS = (
    Run.run_id,
    Run.vendor,
    Run.topology,
    Run.config_label.label("config"),
    Run.precision,
    Run.fix_hp,
    Run.status,
    Run.finished_at,
    Run.p_train,
    Run.p_core,
    Run.warnings,
)


def refresh(conn: Connection, touched: Touched) -> None:
    """The verdicts of each touched scope's runs from its span on, in the caller's transaction."""
    for scope in touched.scopes:
        _refresh_scope(conn, scope, touched.spans[scope])


def _refresh_scope(conn: Connection, scope: Scope, span: Span) -> None:
    # the rows of the touched runs wherever they finished before, and of every run after them
    mine = scope_filter(RunVerdict, scope)
    for chunk in chunks(sorted(span.run_ids)):
        conn.execute(delete(RunVerdict).where(mine, RunVerdict.run_id.in_(chunk)))
    if span.since is not None:
        conn.execute(delete(RunVerdict).where(mine, RunVerdict.finished_at >= span.since))
        _write(conn, scope, _runs_from(conn, scope, span.since), span.since)


def _runs_from(conn: Connection, scope: Scope, since: datetime | None) -> list[dict[str, Any]]:
    """The scope's succeeded runs from `since` on, after the BEFORE runs before it; oldest
    first (the whole scope when `since` is None)."""
    base = select(*_COLUMNS).where(
        scope_filter(Run, scope), Run.status == "succeeded", Run.finished_at.is_not(None)
    )
    if since is None:
        rows = conn.execute(base.order_by(Run.finished_at, Run.run_id)).mappings()
        return [dict(r) for r in rows]
    before = base.where(Run.finished_at < since)
    before = before.order_by(Run.finished_at.desc(), Run.run_id.desc()).limit(BEFORE)
    after = base.where(Run.finished_at >= since).order_by(Run.finished_at, Run.run_id)
    earlier = [dict(r) for r in conn.execute(before).mappings()]
    return earlier[::-1] + [dict(r) for r in conn.execute(after).mappings()]


def _write(
    conn: Connection, scope: Scope, runs: Sequence[Mapping[str, Any]], since: datetime | None
) -> int:
    """Verdict rows for the runs of `runs` finished from `since` on (all when None)."""
    chosen = [r for r in runs if since is None or r["finished_at"] >= since]
    flags = flag_history(runs)
    checks = _convergence(conn, runs, {str(r["run_id"]) for r in chosen})
    rows = []
    for run in chosen:
        run_id = str(run["run_id"])
        found, checked = flags.get(run_id, []), checks.get(run_id)
        warnings = [str(w) for w in run["warnings"] or []]
        if found or checked is not None or warnings:
            rows.append(
                {
                    "run_id": run_id,
                    "vendor": scope.vendor,
                    "topology": scope.topology,
                    "precision": scope.precision,
                    "config_label": scope.config_label,
                    "fix_hp": scope.fix_hp,
                    "finished_at": run["finished_at"],
                    "regressions": [_regression_doc(r) for r in found],
                    "convergence": _convergence_doc(checked) if checked else None,
                    "warnings": warnings or None,
                }
            )
    insert_rows(conn, RunVerdict, rows)
    return len(rows)


def _convergence(
    conn: Connection, runs: Sequence[Mapping[str, Any]], chosen: set[str]
) -> dict[str, Convergence]:
    """The flagged convergence checks of the chosen runs against the REFERENCE_RUNS runs before
    each in `runs` (oldest first) that have a curve: reports/convergence_reads.py's rule."""
    k = conv.REFERENCE_RUNS
    first = next((i for i, r in enumerate(runs) if str(r["run_id"]) in chosen), len(runs))
    wanted = runs[max(0, first - k) :]  # the chosen runs are the tail of `runs`
    epochs = epochs_of(conn, [str(r["run_id"]) for r in wanted])
    curves = {}
    for r in wanted:
        curve = curve_from_epochs(str(r["run_id"]), epochs.get(str(r["run_id"]), []), r["p_core"])
        if curve is not None:
            curves[curve.run_id] = curve
    found = {}
    for i, run in enumerate(runs):
        run_id = str(run["run_id"])
        if run_id not in chosen or run_id not in curves:
            continue
        refs = [
            curves[str(h["run_id"])] for h in runs[max(0, i - k) : i] if str(h["run_id"]) in curves
        ]
        result = check(curves[run_id], refs)
        if result is not None and result.flagged:
            found[run_id] = result
    return found


def rebuild(conn: Connection) -> int:
    """Every verdict row again, from the runs; rows written."""
    conn.execute(delete(RunVerdict))
    columns = (Run.vendor, Run.topology, Run.precision, Run.config_label, Run.fix_hp)
    scopes = [Scope(*row) for row in conn.execute(select(*columns).distinct())]
    return sum(_write(conn, s, _runs_from(conn, s, None), None) for s in sorted(scopes))


# -- the documents of a row --------------------------------------------------------------------


def _regression_doc(found: Regression) -> dict[str, Any]:
    return {k: v for k, v in found.as_dict().items() if k != "run_id"}  # the row has it


def _convergence_doc(found: Convergence) -> dict[str, Any]:
    return {
        "references": list(found.references),
        "target": found.target,
        "epochs": found.epochs,
        "epochs_band": list(found.epochs_band),
        "final": found.final,
        "final_band": list(found.final_band),
        "throughput_change": found.throughput_change,
    }


@dataclass(frozen=True)
class Verdict:
    """A stored row: the run, its configuration (the flag's key) and what was found."""

    run_id: str
    key: ConfigKey
    regressions: list[Regression]
    convergence: Convergence | None
    warnings: list[str]


def _verdict(row: Mapping[Any, Any]) -> Verdict:
    run_id = str(row["run_id"])
    found = [
        Regression(
            run_id,
            str(r["metric"]),
            float(r["value"]),
            float(r["history_mean"]),
            float(r["history_sd"]),
            int(r["history_n"]),
        )
        for r in row["regressions"] or []
    ]
    c = row["convergence"]
    checked = None
    if c:
        low, high = c["epochs_band"]
        checked = Convergence(
            run_id,
            tuple(str(i) for i in c["references"]),
            float(c["target"]),
            c["epochs"],
            (low, high),
            float(c["final"]),
            (float(c["final_band"][0]), float(c["final_band"][1])),
            c["throughput_change"],
        )
    key = config_key({**row, "config": row["config_label"]})
    return Verdict(run_id, key, found, checked, [str(w) for w in row["warnings"] or []])


def stored(
    conn: Connection,
    vendor: str | None = None,
    topology: str | None = None,
    precision: str | None = None,
) -> list[Verdict]:
    """The stored verdicts of the configurations these filters select, in the seed table's
    order (vendor, topology, precision, finish, run id)."""
    v = RunVerdict
    query = select(v)
    for column, value in ((v.vendor, vendor), (v.topology, topology), (v.precision, precision)):
        if value is not None:
            query = query.where(column == value)
    query = query.order_by(v.vendor, v.topology, v.precision, v.finished_at, v.run_id)
    return [_verdict(r) for r in conn.execute(query).mappings()]
