"""A published run's own readings that need the store: straggler scores against each device's
history (earlier runs of the same node and device, same case, precision and hyper-parameters).
Written after the run's rows, in the caller's transaction (store/ingest.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from orchestrator.readings_settings import DEFAULT_HISTORY_RUNS
from orchestrator.runfolder.folder import RunFolder
from orchestrator.store.metrics import fix_hp
from orchestrator.store.models import RankResult, Run
from orchestrator.store.rows import STRAGGLER_COLUMNS
from orchestrator.store.stragglers import RankPace, pace_of, rank_paces


def write_stragglers(conn: Connection, folders: Sequence[RunFolder]) -> None:
    """Each rank's pace and scores, and the run's flagged ranks, for runs whose rank files
    measured the forward's time (older files: nothing to write)."""
    for folder in folders:
        if not any(pace_of(r.doc) is not None for r in folder.ranks):
            continue
        manifest = folder.manifest
        nodes = [n.name for n in manifest.nodes]
        first = min(folder.ranks, key=lambda r: r.rank).doc
        config = fix_hp(manifest.hparams, first["config"]["hparams"])
        history = _history(conn, manifest.run_id, nodes, manifest.case, manifest.precision, config)
        paces = rank_paces(folder.ranks, manifest, history, manifest.straggler_fraction)
        _update(conn, manifest.run_id, paces)


def _history(
    conn: Connection, run_id: str, nodes: list[str], case: str, precision: str, config: str
) -> dict[tuple[str, int | None], list[float]]:
    """Earlier paces per (node, device), newest first, at most DEFAULT_HISTORY_RUNS each."""
    query = (
        select(RankResult.node_name, RankResult.device_index, RankResult.pace_s)
        .join(Run, Run.run_id == RankResult.run_id)
        .where(
            RankResult.node_name.in_(nodes),
            RankResult.pace_s.is_not(None),
            RankResult.run_id != run_id,
            Run.status == "succeeded",
            Run.case == case,
            Run.precision == precision,
            Run.fix_hp == config,
        )
        .order_by(Run.finished_at.desc())
        .limit(DEFAULT_HISTORY_RUNS * 64)
    )
    found: dict[tuple[str, int | None], list[float]] = {}
    for node, device, pace in conn.execute(query):
        kept = found.setdefault((str(node), device), [])
        if pace is not None and len(kept) < DEFAULT_HISTORY_RUNS:
            kept.append(float(pace))
    return found


def _update(conn: Connection, run_id: str, paces: list[RankPace]) -> None:
    rows: list[dict[str, Any]] = [
        {
            "b_run_id": run_id,
            "b_rank": p.rank,
            "node_name": p.node,
            "device_index": p.device_index,
            "pace_s": p.pace_s,
            "straggler_ratio": p.ratio,
            "history_ratio": p.history_ratio,
            "straggler": p.slow,
        }
        for p in paces
    ]
    statement = (
        update(RankResult)
        .where(RankResult.run_id == bindparam("b_run_id"), RankResult.rank == bindparam("b_rank"))
        .values({name: bindparam(name) for name in STRAGGLER_COLUMNS})
    )
    conn.execute(statement, rows)
    flagged = [p.as_dict() for p in paces if p.slow]
    conn.execute(update(Run).where(Run.run_id == run_id).values(stragglers=flagged or None))
