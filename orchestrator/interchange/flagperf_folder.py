"""A run folder made of one FlagPerf round (orchestrator/interchange/flagperf.py read it): the
manifest with `source: flagperf` and the logs' numbers as its `imported` object, and each node's
log under logs/. Publishing it is the store's ordinary ingest; docs/flagperf.md."""

from __future__ import annotations

import shutil
from pathlib import Path

from orchestrator import __version__
from orchestrator.interchange.flagperf import FlagPerfRun
from orchestrator.runfolder.folder import (
    LOGS_DIR,
    MANIFEST_FILE,
    NodeRef,
    RunManifest,
    write_manifest,
)
from orchestrator.states import Precision

CLUSTER = "flagperf"  # the runs' cluster: FlagPerf's own host list is not in its logs


def manifest_of(run: FlagPerfRun, precision: Precision) -> RunManifest:
    case = run.case
    return RunManifest(
        run_id=run.run_id,
        case="faster_rcnn",
        vendor=run.vendor,
        hardware_label=f"FlagPerf {case.hardware}",  # beside native runs, never their repeats
        cluster=CLUSTER,
        backend="ssh",  # FlagPerf reaches its hosts over SSH ...
        runtime="docker",  # ... and always runs in containers
        topology=case.topology,
        nnodes=case.nnodes,
        nproc_per_node=case.nproc,
        precision=precision,
        config_name=run.config_name,
        submitted_by=CLUSTER,
        submitted_at=run.started_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        status="succeeded",
        nodes=tuple(NodeRef(n.host, n.host, n.node_rank) for n in run.result.nodes),
        command=f"FlagPerf case {case.key} round {run.result.round}",
        orchestrator_version=__version__,
        source="flagperf",
        imported=run.result,
    )


def write_folder(run: FlagPerfRun, precision: Precision, target: Path) -> Path:
    """Write the run folder at `target` (which must not exist yet) and return it."""
    target.mkdir(parents=True)
    write_manifest(target / MANIFEST_FILE, manifest_of(run, precision))
    (target / LOGS_DIR).mkdir()
    for node, log in zip(run.result.nodes, run.logs):
        shutil.copyfile(log, target / LOGS_DIR / f"{node.host}.log")
    return target
