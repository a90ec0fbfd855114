"""A stored run as an MLPerf Training logging file (`:::MLLOG {json}` lines), the format the
`mlperf-logging` package's compliance checker and result summariser read.

Built from the run's row and its rank files as the store keeps them: rank 0's timeline (process
start, end of init, each epoch's training and evaluation, end of training), the hyper-parameters
it resolved, and the run's global batch. A rank file holds each epoch's durations, not its clock
times, so epoch and evaluation times are laid end to end from the start of training; the gaps
between epochs (a few all-reduces) fall before `run_stop`. `RULES_FILE` is the checker's rule file
for this benchmark (docs/mlperf.md).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError
from workload.faster_rcnn.schedule import resolve_warmup_iters

RULES_FILE = Path(__file__).with_name("faster_rcnn_mllog_rules.yaml")
RULESET = "3.1.0"  # the checker's log parser; the rules themselves are RULES_FILE's
BENCHMARK = "faster_rcnn"
TARGET_MAP = 0.36  # the reference target (FlagPerf's target_mAP), as RULES_FILE checks it
PREFIX = ":::MLLOG "


class MllogError(OrchestratorError):
    """A run that cannot be exported (exit code 2, one line)."""


CHECKER_PACKAGE = "mlperf-logging>=4.1"  # pyproject.toml's dev extra has it


def checker_hint(log_file: str, python: str, installed: bool) -> str:
    """What `export` suggests next: the checker run by `python` (this interpreter), or, where
    the `mlperf-logging` package is missing (the default install lacks it), how to get it."""
    command = shlex.join([python, *checker_command(log_file)[1:]])
    if installed:
        return f"check it with: {command}"
    return (
        f"to check it, install MLPerf's checker ({shlex.join([python, '-m', 'pip', 'install', CHECKER_PACKAGE])}), "
        f"then run: {command}"
    )


def checker_command(log_file: str) -> list[str]:
    """The compliance checker's command line for an exported file."""
    return [
        "python",
        "-m",
        "mlperf_logging.compliance_checker",
        "--usage",
        "training",
        "--ruleset",
        RULESET,
        "--config",
        str(RULES_FILE),
        log_file,
    ]


class _Log:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, kind: str, key: str, time_s: float, value: Any = None, **metadata: Any) -> None:
        record = {
            "namespace": "",
            "time_ms": int(round(time_s * 1000)),
            "event_type": kind,
            "key": key,
            "value": value,
            "metadata": {"file": self.source, "lineno": len(self.lines) + 1, **metadata},
        }
        self.lines.append(PREFIX + json.dumps(record, allow_nan=False))

    def point(self, key: str, time_s: float, value: Any, **metadata: Any) -> None:
        self.add("POINT_IN_TIME", key, time_s, value, **metadata)


def _hyperparameters(doc: Mapping[str, Any], world_size: int) -> list[tuple[str, Any]]:
    hp = doc["config"]["hparams"]
    plan = doc.get("plan") or {}  # a version-1 file may lack it: the same numbers, derived
    epochs = max(1, int(doc["samples"]["epochs_completed"]))
    trained_per_epoch = int(doc["samples"]["global_images"]) // epochs
    first_epoch = doc["epochs"][0]["iterations"] if doc["epochs"] else 0
    warmup = plan.get("warmup_iters", resolve_warmup_iters(hp.get("warmup_iters"), first_epoch))
    return [
        ("global_batch_size", int(doc["config"]["batch_size"]) * world_size),
        ("opt_base_learning_rate", float(doc["config"]["lr"])),
        ("opt_learning_rate_warmup_steps", int(warmup)),
        ("opt_learning_rate_warmup_factor", float(hp["warmup_factor"])),
        ("opt_learning_rate_decay_factor", float(hp["lr_gamma"])),
        ("opt_learning_rate_decay_steps", list(hp["lr_steps"])),
        ("opt_weight_decay", float(hp["weight_decay"])),
        ("opt_momentum", float(hp["momentum"])),
        ("min_image_size", int(hp["min_size"])),
        ("max_image_size", int(hp["max_size"])),
        ("gradient_accumulation_steps", 1),
        ("seed", int(doc["config"]["seed"])),
        ("train_samples", int(plan.get("train_images") or trained_per_epoch)),
        ("eval_samples", int((doc.get("eval") or {}).get("images") or 0)),
    ]


def build(run: Mapping[str, Any], docs: Sequence[Mapping[str, Any]], org: str) -> list[str]:
    """The MLLOG lines of one run. `run`: its runs row; `docs`: its rank files, any order."""
    run_id = str(run["run_id"])
    if run.get("source", "orchestrator") != "orchestrator":
        raise MllogError(
            f"run {run_id} was imported from {run['source']}: its logs hold no timeline to export",
            "export a run of this orchestrator",
        )
    first = min(docs, key=lambda d: d["identity"]["rank"], default=None)
    if first is None:
        raise MllogError(
            f"run {run_id} has no rank files in the store: nothing to export",
            "export a run whose ranks wrote their files (orchestrator runs show RUN lists them)",
        )
    t = first["timings"]
    log = _Log(f"ranks/rank-{first['identity']['rank']:05d}.json")
    start = float(t["start_unix"])
    device = first["device"]["name"]
    for key, value in (
        ("submission_benchmark", BENCHMARK),
        ("submission_org", org),
        ("submission_division", "open"),
        ("submission_status", "research"),
        ("submission_platform", f"{run['topology']} {device}"),
        ("cache_clear", False),  # the page cache is not dropped before a run
    ):
        log.point(key, start, value)
    log.add("INTERVAL_START", "init_start", start)
    for key, value in _hyperparameters(first, int(run["world_size"])):
        log.point(key, start, value)
    train_start = start + float(t["init_s"])
    log.add("INTERVAL_END", "init_stop", train_start)
    log.add("INTERVAL_START", "run_start", train_start)
    reached = _epochs(log, first, train_start)
    ended = run.get("status") == "succeeded" and first["status"] == "ok"
    status = "success" if ended and reached else "aborted"
    log.add("INTERVAL_END", "run_stop", train_start + float(t["train_s"]), status=status)
    return log.lines


def _epochs(log: _Log, doc: Mapping[str, Any], train_start: float) -> bool:
    """epoch and eval events laid end to end; True when an evaluation reached TARGET_MAP."""
    world = int(doc["identity"]["world_size"])
    cursor, reached = train_start, False
    for epoch in doc["epochs"]:
        number = int(epoch["epoch"]) + 1  # MLPerf counts epochs from 1
        log.add("INTERVAL_START", "epoch_start", cursor, epoch_num=number)
        cursor += float(epoch["train_s"])
        if epoch["train_s"] > 0:
            images = int(epoch["images"]) * world  # every rank trains as many
            log.point(
                "tracked_stats", cursor, {"throughput": images / epoch["train_s"]}, step=number
            )
        log.add("INTERVAL_END", "epoch_stop", cursor, epoch_num=number)
        if epoch.get("eval_s") is not None and epoch.get("map") is not None:
            log.add("INTERVAL_START", "eval_start", cursor, epoch_num=number)
            cursor += float(epoch["eval_s"])
            log.point("eval_accuracy", cursor, float(epoch["map"]), epoch_num=number)
            log.add("INTERVAL_END", "eval_stop", cursor, epoch_num=number)
            reached = reached or float(epoch["map"]) >= TARGET_MAP
    return reached


def write(path: str, lines: Sequence[str]) -> None:
    """Atomically (a temporary file, then a rename): a reader never sees half a log."""
    import os

    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, target)
