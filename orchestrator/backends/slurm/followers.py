"""The worker's side of Slurm runs that `campaign submit` or `submit --detach` handed to Slurm:
adopt each one nobody follows, follow its job in a thread (pending reason, progress, timeouts,
cancel requests) and, when the job ends, collect and publish the run. Slurm queues the jobs
and owns the nodes; a worker only follows. Stopping the worker leaves the jobs to Slurm and
releases their follow rows at once, so the next worker adopts them."""

from __future__ import annotations

import shutil
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.backends.slurm.board import StateBoard
from orchestrator.errors import OrchestratorError
from orchestrator.runs.follower_pool import FollowerPool
from orchestrator.runs.keeper import LeaseKeeper
from orchestrator.runs.request import cluster_from, decode_request
from orchestrator.runs.stopping import StopEvent, cancel_request_cause
from orchestrator.store import follows
from orchestrator.store.campaigns import finish_campaign_if_done
from orchestrator.store.cancel import cancel_note
from orchestrator.store.orphans import end_run

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.store import Store
    from orchestrator.store.follows import Unfollowed


class SlurmFollowers(FollowerPool):
    """A background thread that adopts unfollowed Slurm runs, and one thread per followed run."""

    daemon = True
    what = "following Slurm runs"

    def __init__(
        self,
        store: Store,
        holder: str,
        runs_dir: Path,
        worker_stop: threading.Event,
        console: Console,
        ttl_s: float,
        poll_s: float,
    ) -> None:
        super().__init__(worker_stop, console, poll_every_s=poll_s)
        self.store, self.holder, self.runs_dir, self.ttl_s = store, holder, runs_dir, ttl_s
        self._warned: set[str] = set()
        self.board = StateBoard(poll_s)  # one squeue per poll for every followed job

    def poll(self) -> int:
        """Adopt every Slurm run nobody follows that this machine can follow."""
        if self.stop.is_set():
            return 0
        taken = 0
        for item in follows.unfollowed(self.store, "slurm"):
            if self.following(item.run_id):
                continue  # ours, ending right now
            if not self._can_follow(item):
                continue
            if not follows.adopt(self.store, item.run_id, item.job_id, self.holder, self.ttl_s):
                continue
            self.follow_in_thread(item.run_id, partial(self._follow, item))
            taken += 1
        return taken

    def follow_one(self, run_id: str) -> bool:
        """Adopt one unfollowed run and follow it in this thread (`orchestrator attach`);
        False when it has a follower, or this machine cannot follow it."""
        for item in follows.unfollowed(self.store, "slurm"):
            if item.run_id != run_id or not self._can_follow(item):
                continue
            if follows.adopt(self.store, item.run_id, item.job_id, self.holder, self.ttl_s):
                self.follow_here(run_id, partial(self._follow, item))
                return True
        return False

    def _can_follow(self, item: Unfollowed) -> bool:
        """A worker without Slurm's commands or the shared folder must leave the run to one
        that has them, not fail it."""
        from orchestrator.backends.slurm.plan import settings_of

        problem = None
        if shutil.which("scontrol") is None:
            problem = "scontrol is not on this machine's PATH"
        else:
            try:
                settings = settings_of(cluster_from(item.request))
            except OrchestratorError as exc:
                problem = exc.one_line()
            else:
                if settings.fetch and shutil.which("srun") is None:
                    problem = "srun (to fetch results from node_dir) is not on this machine's PATH"
                elif not settings.fetch and not Path(settings.shared_dir).is_dir():
                    problem = f"slurm.shared_dir {settings.shared_dir} is not mounted here"
        if problem and problem not in self._warned:
            self._warned.add(problem)
            self.console.print(f"[yellow]not following Slurm runs here: {problem}[/]")
        return problem is None

    def _follow(self, item: Unfollowed) -> str | None:
        """Follow the run's job to its end; its status, or None when it was left to Slurm."""
        from orchestrator.backends.slurm.follow import follow
        from orchestrator.backends.slurm.plan import make_slurm_plan

        doc = item.request
        status: str | None = None
        try:
            try:
                cluster = cluster_from(doc)
                req = decode_request(doc, None)
                plan = make_slurm_plan(cluster, req, run_id=item.run_id)
            except OrchestratorError as exc:
                status = "failed"
                self._end_unplannable(item, exc)
                return status
            cancel, detach = StopEvent(), threading.Event()
            if item.cancel_requested_at is not None:
                # `orchestrator cancel` ran while nobody followed the run
                cancel.stop(cancel_request_cause(cancel_note(self.store, item.run_id)))
            self.console.print(
                f"[bold]run {item.run_id}[/]: following slurm job {item.job_id} ({doc['topology']})"
            )
            keeper = LeaseKeeper(
                self.store,
                item.run_id,
                self.holder,
                self.ttl_s,
                self.stop,
                cancel,
                lease="job",
                on_worker_stop=detach,
                on_lost=detach,
            )
            with keeper:
                outcome = follow(
                    plan,
                    req,
                    self.store,
                    self.runs_dir / item.run_id,
                    item.job_id,
                    item.submitted_at,
                    item.started_at,
                    cancel,
                    self.console,
                    detach=detach,
                    states=self.board.state,
                )
            if outcome is None:
                self.console.print(f"run {item.run_id}: left to Slurm ({keeper.why or 'stop'})")
            else:
                status = outcome.status
                self.console.print(f"run {item.run_id}: {status}")
        except OrchestratorError as exc:
            status = "failed"
            end_run(self.store, item.run_id, "failed", exc.one_line(), ["running"])
        finally:
            self.board.forget(item.job_id)
            follows.release(self.store, item.run_id, self.holder)
            finish_campaign_if_done(self.store, doc.get("campaign_id"))
        return status

    def _end_unplannable(self, item: Unfollowed, exc: OrchestratorError) -> None:
        from orchestrator.backends.slurm import commands

        commands.scancel_quietly(item.job_id)
        reason = f"cannot follow slurm job {item.job_id}: {exc.one_line()} (scancel)"
        end_run(self.store, item.run_id, "failed", reason, ["running"])
