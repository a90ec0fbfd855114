"""FlagPerf's result logs for the faster_rcnn case, read into ImportedResult records.

FlagPerf (FlagOpen/FlagPerf, training/) lays its logs out as

    <log root>/run<YYYYmmddHHMMSS>/flagperf_run.log          its driver's log ("Vendor: metax")
    <log root>/run<...>/<case>/round<N>/<host>_noderank<K>/rank<R>.out.log

(`run_benchmarks/run.py`, `utils/start_task_helper.py`, `run_benchmarks/pytorch/
start_pytorch_task.py`), where <case> is `model:framework:hardware:nnodes:nproc:repeat`, e.g.
`faster_rcnn:pytorch_2.0:C500:1:8:1`, and rank<R>.out.log is everything rank R printed. Its
driver's PerfLogger (`benchmarks/driver/perf_logger.py`) prints events as
`[PerfLog] {"event": ..., "value": ..., "metadata": {"file", "lineno", "time_ms", "rank"}}`; at
the end `run_pretraining.py` has local rank 0 of every node print FINISHED with `e2e_time`,
`train_time`, `train_no_eval_time`, `pure_training_computing_time`, the three
`throuhgput(ips)_*` (sic) and `final_mAP`. Pure: reading files, no store.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.runfolder.imported import ImportedNode, ImportedResult
from workload.faster_rcnn.errors import ConfigError
from workload.faster_rcnn.hparams import resolve

MODEL = "faster_rcnn"
PERFLOG = "[PerfLog] "
# FINISHED's keys -> ImportedNode's fields (the misspelling is FlagPerf's own).
FINISHED_KEYS = {
    "e2e_time": "e2e_s",
    "train_time": "train_s",
    "train_no_eval_time": "train_no_eval_s",
    "pure_training_computing_time": "core_s",
    "throuhgput(ips)_raw": "p_whole",
    "throuhgput(ips)_no_eval": "p_train",
    "throuhgput(ips)_pure_compute": "p_core",
}
# FlagPerf's hardware names -> (the vendor as this orchestrator's runs name it, the workload's
# config set holding that vendor's FlagPerf configurations).
HARDWARE = {
    "C500": ("metax-c500", "metax-c500"),
    "A100": ("nvidia", "nvidia-a100"),
    "R300": ("kunlunxin-r300", "kunlunxin-r300"),
    "BI-V100": ("iluvatar-bi-v100", "iluvatar-bi-v100"),
}
_NODE_DIR = re.compile(r"^(?P<host>.+)_noderank(?P<rank>\d+)$")
_RANK_LOG = re.compile(r"^rank(\d+)\.out\.log$")
_ROUND_DIR = re.compile(r"^round(\d+)$")
_RUN_DIR = re.compile(r"^run(\d{14})$")
_VENDOR_LINE = re.compile(r"Vendor:\s*(\S+)")


class FlagPerfLogError(OrchestratorError):
    """A FlagPerf log that cannot be imported; nothing was written."""


@dataclass(frozen=True)
class Case:
    key: str  # 'faster_rcnn:pytorch_2.0:C500:1:8:1'
    framework: str
    hardware: str
    nnodes: int
    nproc: int

    @property
    def topology(self) -> str:
        return f"{self.nnodes}x{self.nproc}"


@dataclass(frozen=True)
class FlagPerfRun:
    """One round of one case: what a run folder is made of."""

    run_id: str
    case: Case
    vendor: str
    config_name: str | None
    started_at: datetime
    finished_at: datetime
    result: ImportedResult
    logs: tuple[Path, ...]  # node 0's first: each node's local rank 0 log


def parse_case(key: str, where: str) -> Case:
    parts = key.split(":")
    if len(parts) < 6 or not parts[3].isdigit() or not parts[4].isdigit():
        raise FlagPerfLogError(
            f"{where}: {key!r} is not a FlagPerf case folder (model:framework:hardware:nnodes:nproc:repeat)",
            "give a folder that FlagPerf's run.py wrote, or one inside it",
        )
    if parts[0] != MODEL:
        raise FlagPerfLogError(
            f"{where}: case {key!r} is FlagPerf's {parts[0]}, not {MODEL}",
            f"import the {MODEL} case's logs only",
        )
    nnodes, nproc = int(parts[3]), int(parts[4])
    if nnodes < 1 or nproc < 1:
        raise FlagPerfLogError(f"{where}: case {key!r} has no node or process", "check the folder")
    return Case(key, parts[1], parts[2], nnodes, nproc)


def perflog_events(text: str, where: str) -> list[dict[str, Any]]:
    """Every `[PerfLog] {...}` line's object, in order. A FINISHED line that is not whole JSON
    is an error; other broken lines (interleaved output) are skipped."""
    events = []
    for number, line in enumerate(text.splitlines(), 1):
        at = line.find(PERFLOG + "{")
        if at < 0:
            continue
        try:
            event = json.loads(line[at + len(PERFLOG) :])
        except ValueError:
            if '"FINISHED"' in line:
                raise FlagPerfLogError(
                    f"{where}: line {number}: the FINISHED line is cut short or not JSON",
                    "the log is damaged or was copied while the run was writing it",
                ) from None
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _finished(events: list[dict[str, Any]], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    found = [e for e in events if e.get("event") == "FINISHED"]
    if not found:
        raise FlagPerfLogError(
            f"{where}: no FINISHED line: the run did not finish (or this is not a local rank 0 log)",
            "import the rounds that finished; FlagPerf writes FINISHED as the last line",
        )
    if len(found) > 1:
        raise FlagPerfLogError(f"{where}: {len(found)} FINISHED lines", "one log per run")
    value = found[0].get("value")
    if not isinstance(value, dict) or set(value) == {"e2e_time"}:
        raise FlagPerfLogError(
            f"{where}: the FINISHED line has no training numbers (do_train was off)",
            "import runs that trained",
        )
    return found[0], value


def _number(value: dict[str, Any], key: str, where: str) -> float:
    number = value.get(key)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise FlagPerfLogError(
            f"{where}: the FINISHED line has no number {key!r}",
            "the log is from another FlagPerf version or was edited",
        )
    if not math.isfinite(number) or number < 0:
        raise FlagPerfLogError(f"{where}: FINISHED {key!r} is {number}", "not a usable result")
    return float(number)


def read_node(
    path: Path, root: Path, host: str, node_rank: int
) -> tuple[ImportedNode, float, float]:
    """One node's local rank 0 log: its result, and the times (s) it started and finished."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise FlagPerfLogError(f"{where}: cannot read: {exc.strerror}", "check the file") from None
    events = perflog_events(text, where)
    finished, value = _finished(events, where)
    numbers = {field: _number(value, key, where) for key, field in FINISHED_KEYS.items()}
    if numbers["train_s"] <= 0 or numbers["core_s"] <= 0:
        raise FlagPerfLogError(f"{where}: FINISHED reports no training time", "not a usable result")
    final_map = value.get("final_mAP")
    if final_map is not None:
        final_map = _number(value, "final_mAP", where)
    ended = _time_ms(finished, where) / 1000.0
    starts = [e for e in events if e.get("event") == "INIT_START"]
    began = _time_ms(starts[0], where) / 1000.0 if starts else ended - numbers["e2e_s"]
    node = ImportedNode(
        node_rank=node_rank,
        host=host,
        log=str(path.relative_to(root)),
        map=final_map,
        converged=bool(value.get("converged")),
        **numbers,
    )
    return node, began, ended


def _time_ms(event: dict[str, Any], where: str) -> float:
    metadata = event.get("metadata")
    stamp = metadata.get("time_ms") if isinstance(metadata, dict) else None
    if isinstance(stamp, bool) or not isinstance(stamp, (int, float)) or stamp <= 0:
        raise FlagPerfLogError(
            f"{where}: a {event.get('event')} line has no metadata.time_ms", "the log is damaged"
        )
    return float(stamp)


def find_rounds(path: Path) -> list[Path]:
    """The round folders (<case>/round<N>) a path names: a log root, a run<...> folder, a case
    folder, a round folder or a node folder."""
    if not path.is_dir():
        raise FlagPerfLogError(f"{path} is not a folder", "give a FlagPerf log folder")
    if _NODE_DIR.match(path.name) and _ROUND_DIR.match(path.parent.name):
        return [path.parent]
    if _ROUND_DIR.match(path.name):
        return [path]
    rounds = sorted(
        p
        for p in path.rglob("round*")
        if p.is_dir() and _ROUND_DIR.match(p.name) and ":" in p.parent.name
    )
    if not rounds:
        raise FlagPerfLogError(
            f"{path}: no FlagPerf round folder (<case>/round<N>/<host>_noderank<K>/) in it",
            "give the folder FlagPerf's run.py wrote its logs to (FLAGPERF_LOG_PATH/run...)",
        )
    return rounds


def _node_dirs(round_dir: Path, case: Case) -> dict[int, tuple[str, Path]]:
    nodes: dict[int, tuple[str, Path]] = {}
    for child in sorted(round_dir.iterdir()):
        match = _NODE_DIR.match(child.name)
        if not child.is_dir() or not match:
            continue
        rank = int(match.group("rank"))
        if rank in nodes:
            raise FlagPerfLogError(
                f"{round_dir}: node rank {rank} appears twice ({nodes[rank][1].name}, {child.name})",
                "keep one folder per node",
            )
        nodes[rank] = (match.group("host"), child)
    missing = [r for r in range(case.nnodes) if r not in nodes]
    if missing or len(nodes) != case.nnodes:
        raise FlagPerfLogError(
            f"{round_dir}: has the logs of node rank(s) {sorted(nodes) or 'none'}, the case "
            f"runs on {case.nnodes} node(s) (missing: {missing or 'none'})",
            "collect every node's logs into the round folder (FlagPerf's run.py does at the end)",
        )
    return nodes


def _vendor(case: Case, run_dir: Path, option: str | None, where: str) -> str:
    if option:
        return option
    if case.hardware in HARDWARE:
        return HARDWARE[case.hardware][0]
    log = run_dir / "flagperf_run.log"
    match = _VENDOR_LINE.search(log.read_text(errors="replace")) if log.is_file() else None
    if match:
        return match.group(1)
    raise FlagPerfLogError(
        f"{where}: cannot tell the vendor of hardware {case.hardware!r} (no flagperf_run.log)",
        "pass --vendor NAME",
    )


def _config(case: Case) -> tuple[str | None, dict[str, Any] | None]:
    """The workload's config set that holds FlagPerf's configuration of this case, if any."""
    known = HARDWARE.get(case.hardware)
    if known is None:
        return None, None
    name = f"{known[1]}:{case.topology}"
    try:
        return name, resolve(name, case.topology, {}).hparams
    except ConfigError:  # a topology the set does not have: the logs do not say the values
        return None, None


def read_round(round_dir: Path, vendor: str | None = None) -> FlagPerfRun:
    """One round of one case, every node's result read and checked."""
    case = parse_case(round_dir.parent.name, str(round_dir.parent))
    round_match = _ROUND_DIR.match(round_dir.name)
    if round_match is None:
        raise FlagPerfLogError(f"{round_dir}: not a round<N> folder", "give a round folder")
    number = int(round_match.group(1))
    run_dir = round_dir.parent.parent
    nodes, began, ended, logs = [], [], [], []
    for node_rank, (host, folder) in sorted(_node_dirs(round_dir, case).items()):
        log = folder / f"rank{case.nproc * node_rank}.out.log"
        if not log.is_file():
            raise FlagPerfLogError(
                f"{log} is missing: FlagPerf's local rank 0 writes the node's result there",
                "collect the node's logs again",
            )
        node, start, end = read_node(log, run_dir, host, node_rank)
        nodes.append(node)
        began.append(start)
        ended.append(end)
        logs.append(log)
    config_name, hparams = _config(case)
    stamp = _RUN_DIR.match(run_dir.name)
    when = stamp.group(1) if stamp else _utc(max(ended)).strftime("%Y%m%d%H%M%S")
    hardware = re.sub(r"[^A-Za-z0-9._-]", "-", case.hardware)
    run_id = f"flagperf-{when}-{hardware}-{case.topology}-r{number}"[:64]
    result = ImportedResult(
        tool="flagperf",
        case=case.key,
        round=number,
        path=str(run_dir),
        hparams=hparams,
        nodes=tuple(nodes),
    )
    return FlagPerfRun(
        run_id=run_id,
        case=case,
        vendor=_vendor(case, run_dir, vendor, str(round_dir)),
        config_name=config_name,
        started_at=_utc(min(began)),
        finished_at=_utc(max(ended)),
        result=result,
        logs=tuple(logs),
    )


def read_logs(path: Path, vendor: str | None = None) -> list[FlagPerfRun]:
    """Every round under `path`; any bad or partial log is an error and nothing is returned."""
    runs = [read_round(r, vendor) for r in find_rounds(path)]
    seen: dict[str, FlagPerfRun] = {}
    for run in runs:
        if run.run_id in seen:
            raise FlagPerfLogError(
                f"{path}: two rounds would both be run {run.run_id}",
                "import the two log folders one at a time",
            )
        seen[run.run_id] = run
    return runs


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)
