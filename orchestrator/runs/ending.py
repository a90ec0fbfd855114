"""How a run ends, the same for every backend: the limits that stop a running workload (one
rule, one message), the signal that a run was stopped before its workload started, and the
last write of every run (its final manifest, published)."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.clock import utcnow
from orchestrator.runs.failure import Failure
from orchestrator.runs.lifecycle import Outcome, publish_run
from orchestrator.runs.stopping import stop_reason
from orchestrator.states import RunStatus

if TYPE_CHECKING:
    from orchestrator.runfolder.folder import RunManifest
    from orchestrator.store import Store


class Cancelled(Exception):
    """The run was stopped before its workload started; the message says by whom and when."""


def check_stop(stop: threading.Event, before: str) -> None:
    """Raise Cancelled when `stop` is set: 'cancelled by SIGINT before the job was submitted'."""
    if stop.is_set():
        raise Cancelled(f"{stop_reason(stop)} before {before}")


def past_limits(
    timeout_s: float | None, no_progress_s: float | None, elapsed_s: float, quiet_s: float
) -> Failure | None:
    """The failure of a run past its overall timeout (`elapsed_s` since its workload started)
    or silent for too long (`quiet_s` since rank 0's last progress line), else None."""
    if timeout_s is not None and elapsed_s > timeout_s:
        return Failure(f"overall timeout of {timeout_s:g}s reached")
    if no_progress_s is not None and quiet_s > no_progress_s:
        return Failure(f"no progress from rank 0 for {no_progress_s:g}s")
    return None


def finalize(
    manifest: RunManifest, run_dir: Path, store: Store, status: RunStatus, failure: Failure | None
) -> Outcome:
    """The run's last write: its manifest made final (status, finish time, failure) and the
    folder published; if the store rejects the files the row still ends final, with why."""
    final = replace(
        manifest,
        status=status,
        finished_at=utcnow(),
        failure=failure.as_dict() if failure else None,
    )
    return publish_run(final, run_dir, store, failure)
