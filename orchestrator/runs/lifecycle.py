"""The backend-neutral run lifecycle: what a submission asks for, how it ended, who follows
it, the manifest every backend writes, publishing a run folder into the store, and the exit
status of a submission. Backends (orchestrator/backends/*) execute runs; this room turns their
results into stored runs the same way for all of them, and imports no backend."""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator import __version__
from orchestrator.errors import OrchestratorError, RunCancelled, RunFailed
from orchestrator.plan import make_job, new_run_id
from orchestrator.readings_settings import straggler_fraction
from orchestrator.runfolder.folder import ImageRef, NodeRef, RunManifest, write_manifest
from orchestrator.runs.failure import Failure
from orchestrator.runs.stopping import EXIT_CANCEL_REQUESTED, StopCause
from orchestrator.specs import Topology
from orchestrator.states import BackendName, Precision, RunStatus, Runtime

if TYPE_CHECKING:
    from collections.abc import Sequence

    from orchestrator.specs import ClusterSpec, JobSpec, NodeSpec
    from orchestrator.store import Store
    from orchestrator.store.follower import FollowerKind
    from orchestrator.store.ingest import RunSummary


@dataclass(frozen=True)
class SubmitRequest:
    topology: Topology
    node_names: tuple[str, ...] | None = None
    precision: Precision = "fp32"
    sets: tuple[tuple[str, str], ...] = ()
    timeout_s: float | None = None
    no_progress_timeout_s: float | None = None
    command: str = ""
    campaign_id: str | None = None
    # submit --data-dir / --backbone-weights: this run's inputs instead of the cluster file's
    data_dir: str | None = None
    backbone_weights: str | None = None


@dataclass
class Outcome:
    run_id: str
    status: RunStatus
    run_dir: Path
    failure: Failure | None
    summary: RunSummary | None


def job_for(
    cluster: ClusterSpec, req: SubmitRequest, nodes: Sequence[NodeSpec], run_id: str | None
) -> JobSpec:
    """The job a request asks for on `nodes` (none: the backend places it), under a new run
    id unless one is given, submitted by this user."""
    return make_job(
        cluster,
        req.topology,
        tuple(nodes),
        run_id=run_id or new_run_id(salt=req.command),
        precision=req.precision,
        sets=dict(req.sets),
        timeout_s=req.timeout_s,
        no_progress_timeout_s=req.no_progress_timeout_s,
        submitted_by=submitter(),
    )


def write_json(path: Path, data: Any) -> None:
    """Write a run folder's JSON file whole or not at all (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def submitter() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):
        return "unknown"


def follower_id(kind: FollowerKind = "submit") -> str:
    """Who follows a foreground run (or attaches to one), as its leases and messages name it:
    "submit alice@lab1 pid 42"."""
    from orchestrator.store.follower import Follower

    return Follower(kind, f"{submitter()} pid {os.getpid()}").encoded


def manifest_for(
    job: JobSpec,
    req: SubmitRequest,
    status: RunStatus,
    *,
    backend: BackendName,
    runtime: Runtime,
    nodes: Sequence[NodeRef],
    image: ImageRef | None = None,
    hardware_label: str | None = None,
    **extra: Any,
) -> RunManifest:
    """The run's manifest as any backend describes it: the backend and its nodes are the
    caller's to say; `extra` holds the times, the failure and backend fields (slurm_job_id)."""
    return RunManifest(
        run_id=job.run_id,
        case=job.case,
        vendor=job.cluster.vendor,
        hardware_label=hardware_label,
        cluster=job.cluster.name,
        backend=backend,
        runtime=runtime,
        topology=str(job.topology),
        nnodes=job.topology.nnodes,
        nproc_per_node=job.topology.nproc_per_node,
        precision=job.precision,
        hparams=dict(job.hparams),
        config_name=job.cluster.case.config_name,
        submitted_by=job.submitted_by,
        submitted_at=extra.pop("submitted_at"),
        status=status,
        nodes=tuple(nodes),
        image=image,
        campaign_id=req.campaign_id,
        command=req.command,
        orchestrator_version=__version__,
        data_dir=job.cluster.case.data_dir,
        backbone_weights=job.cluster.case.backbone_weights,
        straggler_fraction=straggler_fraction(job.cluster.readings.slower_fraction),
        **extra,
    )


def publish_run(
    manifest: RunManifest, run_dir: Path, store: Store, failure: Failure | None
) -> Outcome:
    """Write the final manifest and publish the folder (any backend). If the store rejects
    the files, the row still ends with a final status and the reason."""
    status = manifest.status
    write_manifest(run_dir / "manifest.json", manifest)
    summary = None
    try:
        summary = store.publish(run_dir)
    except OrchestratorError as exc:
        if status == "succeeded":
            status, failure = "failed", Failure(f"results rejected: {exc.one_line()}")
        reason = failure.reason if failure else exc.one_line()
        store.set_status(
            manifest.run_id, status, reason=reason, failure=failure.as_dict() if failure else None
        )
        write_manifest(
            run_dir / "manifest.json",
            replace(manifest, status=status, failure=failure.as_dict() if failure else None),
        )
    return Outcome(manifest.run_id, status, run_dir, failure, summary)


class PhaseClock:
    """Seconds spent in each phase of a submission (runs/RUN/timings.json): where the
    orchestrator's own overhead goes, next to the workload's lifetime."""

    def __init__(self) -> None:
        self.t0 = self.last = time.monotonic()
        self.phases: dict[str, float] = {}

    def lap(self, name: str, at: float | None = None) -> None:
        """The phase `name` ended now, or at `at` (a time.monotonic() reading taken earlier)."""
        now = time.monotonic() if at is None else at
        self.phases[name] = round(now - self.last, 4)
        self.last = now

    def as_dict(self) -> dict[str, float]:
        total = round(time.monotonic() - self.t0, 4)
        overhead = round(total - self.phases.get("workload", 0.0), 4)
        return {**self.phases, "total": total, "overhead": overhead}


def raise_for(outcome: Outcome, cause: StopCause | None = None) -> None:
    """Exit status of a submission: 0 only for a succeeded run; a cancelled one exits with
    its stop's code (SIGINT 130, SIGTERM 143); without one this process was not signalled:
    `orchestrator cancel` (or scancel) ended it, 4."""
    if outcome.status == "succeeded":
        return
    reason = outcome.failure.reason if outcome.failure else "unknown reason"
    if outcome.status == "cancelled":
        said = reason if reason.startswith("cancelled") else f"cancelled: {reason}"
        raise RunCancelled(
            f"run {outcome.run_id} {said}",
            f"run folder {outcome.run_dir}",
            cause.exit_code if cause else EXIT_CANCEL_REQUESTED,
        )
    raise RunFailed(
        f"run {outcome.run_id} {outcome.status}: {reason}",
        f"logs in {outcome.run_dir / 'logs'}; `orchestrator runs show {outcome.run_id}`",
    )
