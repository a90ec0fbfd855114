"""Straggler scores of a finished run, from its rank files (pure).

A rank's pace is its own time per iteration without waiting for the others: the data loading
and the inner model's forward, both free of collectives (the workload's timings.data_s and
timings.forward_s, workload/faster_rcnn/forward_clock.py), over its iterations. Synchronous
data-parallel training evens out every other clock: a fast rank waits inside the all-reduce.
Each rank's pace is compared with the median rank's (`ratio`) and, where the store has one,
with the median of the same node and device in earlier runs of the same configuration
(`history_ratio`). A rank more than `slower_fraction` slower by either is a straggler
(docs/metrics.md, "Straggler score"; docs/health.md, "Stragglers").
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.readings_settings import DEFAULT_SLOWER_FRACTION
from orchestrator.runfolder.folder import RankFile, RunManifest

MIN_HISTORY = 3  # earlier runs of a node's device before its own history is a yardstick
# (node name, device index or None for a CPU rank) -> its paces in earlier runs
History = Mapping[tuple[str, int | None], Sequence[float]]


@dataclass(frozen=True)
class RankPace:
    rank: int
    node: str
    local_rank: int
    device_index: int | None  # SMI numbering; None for a CPU rank
    device: str  # "cpu", or the index as the monitors number it
    pace_s: float | None  # seconds per iteration without waiting; None: not measured
    ratio: float | None  # pace / the median rank's pace
    history_ratio: float | None  # pace / this node's device's median in earlier runs
    slow: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "node": self.node,
            "device": self.device,
            "pace_s": _round(self.pace_s),
            "ratio": _round(self.ratio),
            "history_ratio": _round(self.history_ratio),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def pace_of(doc: Mapping[str, Any]) -> float | None:
    """Seconds per iteration of data loading + forward, or None when the rank file does not
    have the forward's time (written before it was measured) or ran no iteration."""
    timings = doc.get("timings") or {}
    forward = timings.get("forward_s")
    iterations = (doc.get("samples") or {}).get("rank_iterations") or 0
    if not isinstance(forward, (int, float)) or iterations <= 0:
        return None
    data = timings.get("data_s")
    if not isinstance(data, (int, float)):
        data = sum(float(e.get("data_s") or 0.0) for e in doc.get("epochs") or [])
    return (float(forward) + float(data)) / iterations


def device_of(rank: RankFile, manifest: RunManifest) -> tuple[str, int | None, str]:
    """The rank's node name, its device index (the monitors' numbering) and its label."""
    ident = rank.doc["identity"]
    node = manifest.nodes[ident["node_rank"]] if ident["node_rank"] < len(manifest.nodes) else None
    name = node.name if node is not None else str(ident.get("host"))
    if (rank.doc.get("device") or {}).get("type") == "cpu":
        return name, None, "cpu"
    local = int(ident["local_rank"])
    listed = node.devices if node is not None else None
    index = listed[local] if listed and local < len(listed) else local
    return name, index, str(index)


def rank_paces(
    ranks: Sequence[RankFile],
    manifest: RunManifest,
    history: History | None = None,
    fraction: float | None = None,
) -> list[RankPace]:
    """Every rank's pace and scores, sorted by rank; `fraction`: the manifest's (None: the
    default); `history`: earlier paces per (node, device)."""
    limit = 1 + (fraction if fraction is not None else DEFAULT_SLOWER_FRACTION)
    paces = {r.rank: pace_of(r.doc) for r in ranks}
    measured = [p for p in paces.values() if p is not None and p > 0]
    median = statistics.median(measured) if measured else None
    found = []
    for rank in sorted(ranks, key=lambda r: r.rank):
        node, index, label = device_of(rank, manifest)
        pace = paces[rank.rank]
        ratio = pace / median if pace is not None and median else None
        before = [p for p in (history or {}).get((node, index), ()) if p > 0]
        own = (
            pace / statistics.median(before)
            if pace is not None and len(before) >= MIN_HISTORY
            else None
        )
        slow = any(r is not None and r > limit for r in (ratio, own))
        found.append(
            RankPace(
                rank.rank,
                node,
                int(rank.doc["identity"]["local_rank"]),
                index,
                label,
                pace,
                ratio,
                own,
                slow,
            )
        )
    return found


def stored_line(flagged: Sequence[Mapping[str, Any]] | None, short: bool = False) -> str | None:
    """The stored runs.stragglers as people read them: `stragglers: rank 1 (node n2, device
    cpu) 63% slower than the median rank`; `short` for a run's final line: `straggler: rank 1
    on n2/cpu +63%`. None when no rank was flagged."""
    if not flagged:
        return None
    parts = []
    for f in flagged:
        ratio, own = f.get("ratio"), f.get("history_ratio")
        slower = max(r for r in (ratio, own, 1.0) if r is not None) - 1
        if short:
            parts.append(f"rank {f['rank']} on {f['node']}/{f['device']} +{slower:.0%}")
            continue
        said = []
        if ratio is not None:
            said.append(f"{ratio - 1:.0%} slower than the median rank")
        if own is not None:
            said.append(f"{own - 1:.0%} against its own history")
        parts.append(f"rank {f['rank']} (node {f['node']}, device {f['device']}) {', '.join(said)}")
    return f"straggler{'s' if len(flagged) > 1 else ''}: " + "; ".join(parts)
