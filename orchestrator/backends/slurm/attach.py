"""`orchestrator attach RUN` for a Slurm run: rank 0's progress from the shared folder while
another process follows the job; the job itself, adopted, when nobody does."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.backends.slurm.followers import SlurmFollowers
from orchestrator.errors import OrchestratorError
from orchestrator.runs.progress import ProgressView
from orchestrator.runs.request import cluster_from, decode_request
from orchestrator.store import follows
from orchestrator.store import status as run_status
from orchestrator.store.leases import QueueError

if TYPE_CHECKING:
    from rich.console import Console

    from orchestrator.store import Store

POLL_S = 1.0


def attach_slurm(
    store: Store, run_id: str, holder: str, runs_dir: Path, stop: threading.Event, console: Console
) -> None:
    """Until the run ends or `stop`: adopt it if nobody follows it, else show its progress."""
    from orchestrator.backends.slurm.execute import follow_ttl_s
    from orchestrator.backends.slurm.follow import JobTail
    from orchestrator.backends.slurm.plan import make_slurm_plan

    row = follows.job_of(store, run_id)
    if row is None or row.request is None or row.job_id is None:
        raise QueueError(
            f"slurm run {run_id} has no stored request or job yet", "try again in a moment"
        )
    plan = make_slurm_plan(
        cluster_from(row.request), decode_request(row.request, None), run_id=run_id
    )
    followers = SlurmFollowers(store, holder, runs_dir, stop, console, follow_ttl_s(), POLL_S)
    tail = JobTail(plan, row.job_id, console)
    with ProgressView(run_id, console) as view:
        while not stop.is_set() and _running(store, run_id):
            try:
                if followers.follow_one(run_id):
                    return
            except OrchestratorError as exc:
                console.print(f"[yellow]run {run_id}: {exc.one_line()}[/]")
            tail.tail(view)
            view.tick()
            stop.wait(POLL_S)


def _running(store: Store, run_id: str) -> bool:
    with store.reading() as conn:
        return run_status.status_of(conn, run_id) == "running"
