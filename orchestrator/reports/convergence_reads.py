"""The curves a convergence check needs, read from the store: a run's per-epoch mAP and that
of its references (the configuration's last REFERENCE_RUNS succeeded runs before it)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Connection

from orchestrator.convergence import (
    REFERENCE_RUNS,
    Convergence,
    Curve,
    check,
    curve_from_epochs,
)
from orchestrator.regressions import config_key
from orchestrator.store.config_queries import flag_inputs
from orchestrator.store.epochs import epochs_of


def curves_of(conn: Connection, rows: Sequence[Mapping[Any, Any]]) -> dict[str, Curve]:
    """The runs' curves (runs without an evaluated epoch are left out)."""
    ids = [str(r["run_id"]) for r in rows]
    epochs = epochs_of(conn, ids)
    found = {}
    for row in rows:
        run_id = str(row["run_id"])
        curve = curve_from_epochs(run_id, epochs.get(run_id, []), row.get("p_core"))
        if curve is not None:
            found[run_id] = curve
    return found


def convergence_checks(
    conn: Connection,
    rows: Sequence[Mapping[Any, Any]],
    references: Sequence[Curve] | None = None,
    target: float | None = None,
) -> dict[str, Convergence]:
    """Each succeeded run of `rows` against `references` (a reference file's) or, without them,
    against the last REFERENCE_RUNS succeeded runs of its configuration that finished before it."""
    chosen = [r for r in rows if r.get("status", "succeeded") == "succeeded"]
    mine = curves_of(conn, chosen)
    earlier: dict[str, Sequence[Mapping[Any, Any]]] = {}
    if references is None:
        # per configuration, its runs in finishing order from the REFERENCE_RUNS before its
        # earliest chosen run to its latest (a run's page reads six runs, not its
        # configuration's whole history): each run's references are the REFERENCE_RUNS
        # before its own place (bisect, not a scan per run)
        finished = [r for r in chosen if r.get("finished_at") is not None]
        around: dict[Any, list[Mapping[Any, Any]]] = {}
        for h in flag_inputs(conn, finished, REFERENCE_RUNS):
            around.setdefault(config_key(h), []).append(h)
        orders: dict[Any, tuple[list[tuple[Any, str]], Sequence[Mapping[Any, Any]]]] = {}
        for key, window in around.items():
            window.sort(key=lambda h: (h["finished_at"], str(h["run_id"])))
            orders[key] = ([(h["finished_at"], str(h["run_id"])) for h in window], window)
        for row in finished:
            places, runs = orders.get(config_key(row), ([], []))
            at = bisect_left(places, (row["finished_at"], str(row["run_id"])))
            earlier[str(row["run_id"])] = runs[max(0, at - REFERENCE_RUNS) : at]
        # a run's references are mostly runs of `rows` too (a configuration's whole history):
        # their curves are read once
        others = {str(h["run_id"]): h for found in earlier.values() for h in found}
        ref_curves = {i: mine[i] for i in others if i in mine}
        ref_curves.update(curves_of(conn, [h for i, h in others.items() if i not in mine]))
    found = {}
    for run_id, curve in mine.items():
        if references is None:
            refs = [
                ref_curves[str(h["run_id"])]
                for h in earlier.get(run_id, ())
                if str(h["run_id"]) in ref_curves
            ]
        else:
            refs = list(references)
        result = check(curve, refs, target)
        if result is not None:
            found[run_id] = result
    return found
