"""Following a submitted Slurm job to its end, then collecting and publishing the run. Each
poll reads the job's state and takes one step for what it means for the run (`_STEPS`: queued,
running, ended); `stop` cancels the job (scancel), `detach` leaves it to Slurm."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.backends.slurm import commands, nodelocal
from orchestrator.backends.slurm.collect import (
    allocated,
    collect,
    ending,
    fetch_folders,
    state_from_exit_file,
)
from orchestrator.backends.slurm.plan import slurm_manifest
from orchestrator.backends.slurm.script import SlurmPlan
from orchestrator.clock import utcnow
from orchestrator.errors import OrchestratorError
from orchestrator.runfolder.folder import make_run_dir
from orchestrator.runs.ending import finalize, past_limits
from orchestrator.runs.failure import Failure
from orchestrator.runs.lifecycle import Outcome, PhaseClock, SubmitRequest, write_json
from orchestrator.runs.progress import ProgressView, parse_event
from orchestrator.runs.stopping import stop_reason
from orchestrator.states import FINAL_STATUSES, RunStatus

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.store import Store

FINAL_WAIT_S = 120.0  # after scancel: how long the job may take to leave the controller
STATE_RETRY_S = 300.0  # how long Slurm's commands may fail before a followed run fails
FETCHED_DIR = ".fetched"  # node_dir sites: the nodes' run folders, fetched into the run folder

JobStates = Callable[[str], commands.JobState | None]


class JobTail:
    """Rank 0's log, tailed into the progress view; the pending reason, said when it changes."""

    def __init__(self, plan: SlurmPlan, job_id: str, console: Console) -> None:
        self.plan, self.job_id, self.console = plan, job_id, console
        self.offset = 0
        self.partial = ""
        self.last_reason: str | None = None

    def tail(self, view: ProgressView) -> None:
        path = Path(self.plan.rank0_log())
        try:
            with path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return
        self.offset += len(data)
        text = self.partial + data.decode("utf-8", "replace")
        *lines, self.partial = text.split("\n")
        for line in lines:
            event = parse_event(line)
            if event:
                view.event(event)

    def pending(self, state: commands.JobState, view: ProgressView) -> None:
        if state.reason != self.last_reason:
            self.last_reason = state.reason
            view.phase(
                "queued", f"slurm job {self.job_id} pending: {state.reason or 'no reason given'}"
            )


def wait_final(
    job_id: str, interval: float, timeout: float = FINAL_WAIT_S
) -> commands.JobState | None:
    deadline = time.monotonic() + timeout
    state = commands.job_state(job_id)
    while state is not None and not state.final and time.monotonic() < deadline:
        time.sleep(interval)
        state = commands.job_state(job_id)
    return state


def finish_run(
    plan: SlurmPlan,
    req: SubmitRequest,
    run_dir: Path,
    store: Store,
    status: RunStatus,
    failure: Failure | None,
    times: tuple[datetime, datetime | None],
    job_id: str | None,
) -> Outcome:
    """The final manifest (with the Slurm job id and the allocation's nodes), published.
    `times`: when the run was submitted and when its job started (None: never)."""
    submitted_at, started_at = times
    manifest = slurm_manifest(
        plan, req, "running", job_id, submitted_at=submitted_at, started_at=started_at
    )
    return finalize(manifest, run_dir, store, status, failure)


class _JobWatch:
    """The follow of one job: a step per poll, until the job ended, was stopped or vanished.
    Afterwards `state` is its last state (None: vanished), `status`/`failure` what stopping
    it decided (failure None: Slurm's final state decides)."""

    def __init__(
        self,
        plan: SlurmPlan,
        store: Store,
        job_id: str,
        started_at: datetime | None,
        stop: threading.Event,
        view: ProgressView,
        console: Console,
        source: Path,
        phases: PhaseClock,
    ) -> None:
        self.plan, self.store, self.job_id, self.started_at = plan, store, job_id, started_at
        self.stop, self.view, self.console, self.source = stop, view, console, source
        self.phases = phases
        self.tail = JobTail(plan, job_id, console)
        self.state: commands.JobState | None = None
        self.status: RunStatus = "failed"
        self.failure: Failure | None = None
        self.fetch_problem: str | None = None
        self._failing_since: float | None = None

    def run(self, states: JobStates, detach: threading.Event | None) -> bool:
        """Poll until the job's watch is over; False when `detach` was set first."""
        interval = self.plan.settings.poll_interval_s
        while True:
            if detach is not None and detach.is_set():
                return False
            try:
                state = states(self.job_id) or state_from_exit_file(
                    self.plan, self.job_id, self.source
                )
            except commands.SlurmError as exc:
                self._retry_later(exc, interval)
                continue
            self._failing_since = None
            if self.step(state):
                break
            time.sleep(interval)
        if self.started_at is not None:
            self.tail.tail(self.view)
        return True

    def _retry_later(self, exc: commands.SlurmError, interval: float) -> None:
        """slurmctld restarting must not fail a run that Slurm still runs (for a while)."""
        self._failing_since = self._failing_since or time.monotonic()
        if time.monotonic() - self._failing_since > STATE_RETRY_S:
            raise exc
        self.console.print(f"[yellow]slurm job {self.job_id}: {exc.one_line()}; retrying[/]")
        time.sleep(max(interval, 5.0))

    def step(self, state: commands.JobState | None) -> bool:
        """One poll's step; True when the watch is over."""
        self.state = state
        if state is None:
            return self._vanished()
        if state.comment == nodelocal.READY and not self.source.exists():
            self.fetch_problem = fetch_folders(self.plan, self.job_id, self.source, self.console)
        return _STEPS[state.run_status](self, state)

    def _vanished(self) -> bool:
        if self.stop.is_set():
            self.status, self.failure = "cancelled", Failure(f"{stop_reason(self.stop)} (scancel)")
        else:
            self.failure = Failure(f"slurm job {self.job_id} vanished from the controller")
        return True

    def _queued(self, state: commands.JobState) -> bool:
        self.tail.pending(state, self.view)
        return self._polled(state)

    def _running(self, state: commands.JobState) -> bool:
        self._started(state)
        return self._polled(state)

    def _ended(self, state: commands.JobState) -> bool:
        if state.node_list:  # it ran (an ending before it started has no nodes)
            self._started(state)
        return self._polled(state)

    def _started(self, state: commands.JobState) -> None:
        if self.started_at is not None:
            return
        self.started_at = utcnow()
        self.phases.lap("queue")
        job, nodes = f"slurm job {self.job_id}", state.node_list
        self.store.set_status(self.plan.job.run_id, "running", reason=f"{job} on {nodes}")
        self.view.last_event_at = time.monotonic()
        self.view.phase(
            "preflight", f"{job} running on {nodes}: the nodes' checks (the job's first step)"
        )

    def _polled(self, state: commands.JobState) -> bool:
        """Every state's last part: rank 0's progress, then the end or the limits."""
        if self.started_at is not None:
            self.tail.tail(self.view)
        self.view.tick()
        if state.final:
            return True
        why = self._why_stop()
        if why is None:
            return False
        if self.stop.is_set():
            self.status = "cancelled"
        commands.scancel(self.job_id)
        self.state = wait_final(self.job_id, self.plan.settings.poll_interval_s)
        self.failure = why
        return True

    def _why_stop(self) -> Failure | None:
        """Why the orchestrator ends the job now (cancel, timeout, no progress), or None.
        `--timeout` counts from the job's start: time in Slurm's queue is Slurm's business."""
        if self.stop.is_set():
            return Failure(f"{stop_reason(self.stop)} (scancel)")
        if self.started_at is None:
            return None
        job = self.plan.job
        ran_s = (utcnow() - self.started_at).total_seconds()
        quiet_s = time.monotonic() - self.view.last_event_at
        return past_limits(job.timeout_s, job.no_progress_timeout_s, ran_s, quiet_s)

    def collected(self, run_dir: Path) -> tuple[SlurmPlan, str]:
        """The job's folder collected into the run folder: the plan with the allocation's
        nodes, and the problems ('' for none)."""
        plan, state = self.plan, self.state
        if state is not None and state.final and state.node_list and not plan.nodes:
            plan = replace(plan, nodes=allocated(plan, self.source))
        problem = self.fetch_problem
        if plan.settings.fetch and not self.source.exists() and problem is None:
            problem = (
                "the run folders were not fetched from the nodes before the job ended (a node_dir "
                "site needs a follower while the job ends: its submit, or a worker)"
            )
        self.plan = plan
        problems = collect(plan, run_dir, self.store, self.source)
        if problem:
            problems = "; ".join(p for p in (problem, problems) if p)
        return plan, problems

    def ending(self, run_dir: Path, problems: str) -> tuple[RunStatus, Failure | None]:
        """How the run ended: as stopping it decided, else as Slurm's final state says."""
        if self.failure is not None or self.state is None:
            return self.status, self.failure
        status, failure = ending(self.plan, self.state, run_dir)
        if status == "succeeded" and problems:
            return "failed", Failure("collection failed: " + problems)
        return status, failure


_Step = Callable[[_JobWatch, commands.JobState], bool]
# What each of the run's statuses (commands.SLURM_STATES maps Slurm's states to them) asks of
# the follower; 'lost' is not one of SLURM_STATES's but ends a watch like every final status.
_STEPS: dict[RunStatus, _Step] = {
    "queued": _JobWatch._queued,
    "running": _JobWatch._running,
    **{status: _JobWatch._ended for status in FINAL_STATUSES},
}


def follow(
    plan: SlurmPlan,
    req: SubmitRequest,
    store: Store,
    run_dir: Path,
    job_id: str,
    submitted_at: datetime,
    started_at: datetime | None,
    stop: threading.Event,
    console: Console,
    phases: PhaseClock | None = None,
    detach: threading.Event | None = None,
    live: bool = False,
    states: JobStates = commands.job_state,
    view: ProgressView | None = None,
) -> Outcome | None:
    """Follow a submitted job to its end, then collect and publish the run. `stop` cancels the
    job (scancel); `detach` stops following and leaves the job to Slurm (a worker that stops,
    or one whose follow was taken over): returns None then, and the run stays `running` for
    the next follower. `--timeout` counts from the job's start (Slurm's time_limit bounds the
    run too)."""
    phases = phases or PhaseClock()
    make_run_dir(run_dir, exist_ok=True)
    # Where the job's run folder is read from: the shared folder, or (node_dir sites) what was
    # fetched from the nodes into the local run folder.
    source = run_dir / FETCHED_DIR if plan.settings.fetch else Path(plan.run_dir)
    view = view or ProgressView(plan.job.run_id, console, live=live)
    watch = _JobWatch(plan, store, job_id, started_at, stop, view, console, source, phases)
    try:
        with view:
            if not watch.run(states, detach):
                return None
            view.phase("collecting", "rank files, logs and environments of the job")
        phases.lap("workload")
        plan, problems = watch.collected(run_dir)
        phases.lap("collect")
        status, failure = watch.ending(run_dir, problems)
    except OrchestratorError as exc:
        status, failure = watch.status, Failure(exc.one_line())
    except BaseException as exc:
        commands.scancel_quietly(job_id)
        why = Failure(f"internal error: {exc!r}")
        times = (submitted_at, watch.started_at)
        finish_run(watch.plan, req, run_dir, store, "failed", why, times, job_id)
        raise
    view.phase("publishing", "into the results store")
    times = (submitted_at, watch.started_at)
    outcome = finish_run(watch.plan, req, run_dir, store, status, failure, times, job_id)
    phases.lap("publish")
    write_json(run_dir / "timings.json", phases.as_dict())
    return outcome
