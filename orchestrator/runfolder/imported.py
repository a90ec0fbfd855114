"""A run imported from another tool's logs (FlagPerf): what those logs measured, kept in the
manifest's `imported` object. Such a run has no rank files; its metrics follow from this record
(orchestrator/store/metrics.py). docs/run-folder.md describes the object.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from orchestrator.errors import IngestError
from orchestrator.states import RUN_SOURCES, RunSource

_FIX = "fix the file; docs/run-folder.md describes every field"
# One result line's numbers: seconds, then images per second.
TIMES = ("e2e_s", "train_s", "train_no_eval_s", "core_s")
THROUGHPUTS = ("p_whole", "p_train", "p_core")


@dataclass(frozen=True)
class ImportedNode:
    """One node's result line: FlagPerf's local rank 0 of that node, timed by its own clocks."""

    node_rank: int
    host: str
    log: str  # the log file, relative to the folder that was imported
    e2e_s: float
    train_s: float
    train_no_eval_s: float
    core_s: float
    p_whole: float
    p_train: float
    p_core: float
    map: float | None
    converged: bool

    @property
    def trained_images(self) -> int:
        """The tool's own count of trained samples (FlagPerf: len(train set) per epoch)."""
        return round(self.p_whole * self.train_s)


@dataclass(frozen=True)
class ImportedResult:
    tool: RunSource  # never 'orchestrator'
    case: str  # the tool's case key, e.g. 'faster_rcnn:pytorch_2.0:C500:1:8:1'
    round: int
    path: str  # the folder the logs were read from
    hparams: dict[str, Any] | None  # in the workload's names; None: the logs do not say
    nodes: tuple[ImportedNode, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "case": self.case,
            "round": self.round,
            "path": self.path,
            "hparams": self.hparams,
            # Every field, in their order: rank, host, log, TIMES, THROUGHPUTS, map, converged.
            "nodes": [asdict(n) for n in self.nodes],
        }


def _fail(source: str, field: str, problem: str) -> IngestError:
    return IngestError(f"{source}: field imported.{field}: {problem}", _FIX)


def _number(source: str, field: str, value: Any, nullable: bool = False) -> float | None:
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(source, field, "expected a number")
    if not math.isfinite(value) or value < 0:
        raise _fail(source, field, "must be a finite number >= 0")
    return float(value)


def _text(source: str, field: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(source, field, "expected a non-empty string")
    return value


def _node(source: str, i: int, data: Any) -> ImportedNode:
    where = f"nodes[{i}]"
    if not isinstance(data, dict):
        raise _fail(source, where, "expected an object")
    rank = data.get("node_rank")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise _fail(source, f"{where}.node_rank", "expected an integer >= 0")
    numbers = {name: _number(source, f"{where}.{name}", data.get(name)) for name in TIMES}
    numbers.update(
        {name: _number(source, f"{where}.{name}", data.get(name)) for name in THROUGHPUTS}
    )
    if not isinstance(data.get("converged"), bool):
        raise _fail(source, f"{where}.converged", "expected true or false")
    return ImportedNode(
        node_rank=rank,
        host=_text(source, f"{where}.host", data.get("host")),
        log=_text(source, f"{where}.log", data.get("log")),
        map=_number(source, f"{where}.map", data.get("map"), nullable=True),
        converged=data["converged"],
        **{k: float(v or 0.0) for k, v in numbers.items()},
    )


def imported_from_dict(data: Any, source: str, nnodes: int) -> ImportedResult:
    """Validate a manifest's `imported` object; errors name `source` and the field."""
    if not isinstance(data, dict):
        raise IngestError(f"{source}: field imported: expected an object", _FIX)
    tool = data.get("tool")
    choices = [s for s in RUN_SOURCES if s != "orchestrator"]
    found = next((s for s in choices if s == tool), None)
    if found is None:
        raise _fail(source, "tool", f"{tool!r} is not one of {', '.join(choices)}")
    round_ = data.get("round")
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 1:
        raise _fail(source, "round", "expected an integer >= 1")
    hparams = data.get("hparams")
    if hparams is not None and not isinstance(hparams, dict):
        raise _fail(source, "hparams", "expected an object or null")
    items = data.get("nodes")
    if not isinstance(items, list) or not items:
        raise _fail(source, "nodes", "expected a list with one result per node")
    nodes = tuple(sorted((_node(source, i, d) for i, d in enumerate(items)), key=_rank))
    if [n.node_rank for n in nodes] != list(range(nnodes)):
        raise _fail(source, "nodes", f"needs one result for each node rank 0..{nnodes - 1}")
    return ImportedResult(
        tool=found,
        case=_text(source, "case", data.get("case")),
        round=round_,
        path=_text(source, "path", data.get("path")),
        hparams=dict(hparams) if hparams is not None else None,
        nodes=nodes,
    )


def _rank(node: ImportedNode) -> int:
    return node.node_rank
