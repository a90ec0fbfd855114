"""One run on the Slurm backend from a foreground `submit`: plan (backends/slurm/plan.py) ->
run row -> stage on the shared file system and sbatch (stage.py) -> follow the job while
holding its follow row (follow.py) -> collect (collect.py) -> publish. Ctrl-C, a timeout or
`cancel_run` call scancel; every ending leaves the row final, the run folder written, and the
job gone from the controller."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.backends.slurm import commands
from orchestrator.backends.slurm.follow import finish_run, follow
from orchestrator.backends.slurm.plan import slurm_manifest
from orchestrator.backends.slurm.script import SlurmPlan
from orchestrator.backends.slurm.stage import stage, submit_staged
from orchestrator.clock import utcnow
from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.runfolder.folder import make_run_dir
from orchestrator.runs.ending import Cancelled, check_stop
from orchestrator.runs.failure import Failure
from orchestrator.runs.keeper import LeaseKeeper, default_worker_id
from orchestrator.runs.lifecycle import Outcome, PhaseClock, SubmitRequest
from orchestrator.runs.progress import ProgressView
from orchestrator.runs.request import encode_request
from orchestrator.runs.stopping import StopEvent
from orchestrator.states import FinalStatus
from orchestrator.store import follows
from orchestrator.store.cancel import CANCEL_NOTE, record_cancel_request
from orchestrator.store.follower import Follower

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.store import Store

FOLLOW_TTL_ENV = "ORCHESTRATOR_FOLLOW_TTL_S"  # a foreground submit's follow row (tests: short)


def follow_ttl_s() -> float:
    try:
        value = float(os.environ.get(FOLLOW_TTL_ENV) or 60.0)
    except ValueError:
        value = 60.0
    return value if value >= 3 else 60.0


def execute(
    plan: SlurmPlan,
    req: SubmitRequest,
    store: Store,
    runs_dir: Path,
    stop: threading.Event,
    console: Console,
) -> Outcome:
    """Run the plan through Slurm; the row and folder are final whatever happens."""
    job = plan.job
    run_dir = runs_dir / job.run_id
    make_run_dir(run_dir, exist_ok=False)
    submitted_at = utcnow()
    # "running" from the orchestrator's side, as for `submit` over SSH: "queued" belongs to the
    # worker queue (issue 6), which must not claim a run Slurm is queueing. started_at is
    # stamped when Slurm starts the job.
    store.create_run(
        slurm_manifest(plan, req, "running", None, submitted_at=submitted_at), status="running"
    )
    phases = PhaseClock()
    job_id: str | None = None
    holder, ttl_s = Follower("submit", default_worker_id()).encoded, follow_ttl_s()
    view = ProgressView(job.run_id, console, live=True)
    try:
        view.phase("staging", f"run folder and workload source in {plan.settings.shared_dir}")
        stage(plan)
        phases.lap("stage")
        check_stop(stop, "the job was submitted")
        view.phase("submitting", f"sbatch, {job.topology.nnodes} node(s)")
        job_id = submit_staged(plan, plan.sbatch_argv)
        request = encode_request(job.cluster, req)
        follows.record_followed(store, job.run_id, job_id, request, holder, ttl_s)
        view.phase("submitted", f"slurm job {job_id}")
        phases.lap("submit")
    except (Cancelled, OrchestratorError) as exc:
        cancelled = isinstance(exc, Cancelled)
        why = Failure(exc.one_line() if isinstance(exc, OrchestratorError) else str(exc))
        if job_id is not None:  # submitted but not recorded: nobody would follow it
            commands.scancel_quietly(job_id)
        shutil.rmtree(plan.run_dir, ignore_errors=True)
        status: FinalStatus = "cancelled" if cancelled else "failed"
        return finish_run(plan, req, run_dir, store, status, why, (submitted_at, None), job_id)
    except BaseException as exc:
        if job_id is not None:
            commands.scancel_quietly(job_id)
        why = Failure(f"internal error: {exc!r}")
        finish_run(plan, req, run_dir, store, "failed", why, (submitted_at, None), job_id)
        raise
    # Like a worker, this process holds a follow row while it follows the job: if it dies, the
    # row expires and a worker adopts the run, collects and stores it.
    cancel, detach = StopEvent(), threading.Event()
    keeper = LeaseKeeper(
        store, job.run_id, holder, ttl_s, stop, cancel, lease="job", on_lost=detach
    )
    try:
        with keeper:
            outcome = follow(
                plan, req, store, run_dir, job_id, submitted_at, None, cancel, console, phases,
                detach=detach, live=True, view=view,
            )  # fmt: skip
    finally:
        follows.release(store, job.run_id, holder)
    if outcome is None:
        raise commands.SlurmError(
            f"run {job.run_id}: another process follows slurm job {job_id} now (this submit "
            "stopped renewing its follow); it stores the run",
            "`orchestrator queue` shows who follows it",
        )
    return outcome


def cancel_run(store: Store, run_id: str, by: str) -> str:
    """`orchestrator cancel` for a Slurm run: record the request, then scancel its job; whoever
    follows the job (its `submit`, or a worker) sees it end and finalizes the run. Returns the
    job id."""
    row = follows.job_of(store, run_id)
    if row is None or not row.job_id:
        raise ConfigError(
            f"run {run_id} has no Slurm job", "check the run id (`orchestrator runs`)"
        )
    reason = f"{CANCEL_NOTE}{by} (scancel {row.job_id})"
    record_cancel_request(store, run_id, row.status, reason)
    commands.scancel(row.job_id)
    return str(row.job_id)
