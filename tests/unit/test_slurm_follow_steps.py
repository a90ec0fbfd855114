"""The follow of a Slurm job, one step per state (orchestrator.backends.slurm.follow._JobWatch):
pending reasons said once each, the start stamped once, the end, a vanished job, a stop and
the timeout rule. Slurm's commands and the store are stood in for (pure logic)."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.backends.slurm import commands, follow
from orchestrator.backends.slurm.commands import JobState
from orchestrator.backends.slurm.script import SlurmPlan, build_slurm_plan
from orchestrator.plan import make_job
from orchestrator.runs.lifecycle import PhaseClock
from orchestrator.runs.progress import ProgressView
from orchestrator.runs.stopping import StopEvent, signal_cause
from orchestrator.slurm_settings import SlurmSettings
from orchestrator.specs import ClusterSpec, Topology


class _Store:
    """Records the status changes the watch makes."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str | None]] = []

    def set_status(self, run_id: str, status: str, reason: str | None = None) -> None:
        self.changes.append((run_id, status, reason))


def _plan(tmp_path: Path, timeout_s: float | None = None) -> SlurmPlan:
    settings = SlurmSettings(shared_dir=str(tmp_path / "shared"), poll_interval_s=0.001)
    cluster = ClusterSpec(name="c", vendor="cpu", nodes=(), backend="slurm", slurm=settings)
    job = make_job(cluster, Topology.parse("2x1"), (), run_id="r1", timeout_s=timeout_s)
    return build_slurm_plan(job, settings, workload_hash="h")


def _watch(
    plan: SlurmPlan, stop: threading.Event | None = None
) -> tuple[follow._JobWatch, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=200)
    view = ProgressView("r1", console, live=False)
    store = _Store()
    source = Path(plan.run_dir)
    watch = follow._JobWatch(
        plan,
        store,
        "7",
        None,
        stop or threading.Event(),
        view,
        console,
        source,
        PhaseClock(),
    )
    return watch, out


def _script(*states: JobState | None | Exception):
    """A `states` function that answers each poll with the next of `states`."""
    answers = list(states)

    def states_of(job_id: str) -> JobState | None:
        assert job_id == "7"
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return states_of


def test_each_state_takes_its_step_until_the_job_ends(tmp_path: Path) -> None:
    watch, out = _watch(_plan(tmp_path))
    states = _script(
        JobState("7", "PENDING", "Priority"),
        JobState("7", "PENDING", "Priority"),
        JobState("7", "CONFIGURING", "Resources"),
        JobState("7", "RUNNING", None, None, "n[1-2]"),
        JobState("7", "COMPLETING", None, None, "n[1-2]"),  # unknown to the run: running
        JobState("7", "COMPLETED", None, "0:0", "n[1-2]"),
    )
    assert watch.run(states, None) is True
    assert watch.state is not None and watch.state.state == "COMPLETED"
    assert watch.failure is None and watch.started_at is not None
    # the start is stamped once, with the nodes Slurm gave the job
    assert watch.store.changes == [("r1", "running", "slurm job 7 on n[1-2]")]
    text = out.getvalue()
    assert text.count("pending: Priority") == 1 and text.count("pending: Resources") == 1
    assert "slurm job 7 running on n[1-2]" in text


def test_a_job_that_ends_before_it_starts_is_never_stamped_started(tmp_path: Path) -> None:
    watch, _ = _watch(_plan(tmp_path))
    assert watch.run(_script(JobState("7", "CANCELLED", None, "0:15", None)), None)
    assert watch.started_at is None and watch.store.changes == []
    assert watch.state is not None and watch.state.state == "CANCELLED"


def test_a_job_that_ran_and_ended_between_two_polls_is_stamped_started(tmp_path: Path) -> None:
    watch, _ = _watch(_plan(tmp_path))
    assert watch.run(_script(JobState("7", "FAILED", None, "1:0", "n1")), None)
    assert watch.started_at is not None
    assert watch.store.changes == [("r1", "running", "slurm job 7 on n1")]


def test_a_vanished_job_fails_the_run_and_a_stopped_one_is_cancelled(tmp_path: Path) -> None:
    watch, _ = _watch(_plan(tmp_path))
    assert watch.run(_script(JobState("7", "RUNNING", None, None, "n1"), None), None)
    assert (watch.status, watch.failure and watch.failure.reason) == (
        "failed",
        "slurm job 7 vanished from the controller",
    )
    stop = StopEvent()
    stop.stop(signal_cause("SIGTERM", "`orchestrator submit` pid 3 on lab1"))
    watch, _ = _watch(_plan(tmp_path), stop)
    assert watch.run(_script(None), None)
    assert (watch.status, watch.failure and watch.failure.reason) == (
        "cancelled",
        "cancelled: `orchestrator submit` pid 3 on lab1 got SIGTERM (scancel)",
    )


def test_the_timeout_rule_scancels_a_running_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cancelled: list[str] = []
    monkeypatch.setattr(commands, "scancel", cancelled.append)
    ended = JobState("7", "CANCELLED", None, "0:15", "n1")
    monkeypatch.setattr(commands, "job_state", lambda job_id: ended)
    watch, _ = _watch(_plan(tmp_path, timeout_s=0.0))
    running = JobState("7", "RUNNING", None, None, "n1")
    assert watch.run(_script(running), None)
    assert cancelled == ["7"] and watch.state == ended
    assert (watch.status, watch.failure and watch.failure.reason) == (
        "failed",
        "overall timeout of 0s reached",
    )


def test_slurm_errors_are_retried_for_a_while_and_detach_leaves_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(follow.time, "sleep", slept.append)
    watch, out = _watch(_plan(tmp_path))
    detach = threading.Event()
    states = _script(
        commands.SlurmError("squeue did not answer within 30s", "check slurmctld"),
        JobState("7", "PENDING", "Priority"),
    )

    def then_detach(job_id: str) -> JobState | None:
        state = states(job_id)
        detach.set()  # the follow row was taken over after this poll
        return state

    assert watch.run(then_detach, detach) is False
    said = "slurm job 7: squeue did not answer within 30s (check slurmctld); retrying"
    assert said in out.getvalue()
    assert slept[0] == 5.0  # slurmctld restarting: at least 5 s between tries
    assert watch.state is not None and watch.state.state == "PENDING"
    # failing for longer than STATE_RETRY_S fails the follow
    monkeypatch.setattr(follow, "STATE_RETRY_S", -1.0)
    watch, _ = _watch(_plan(tmp_path))
    error = commands.SlurmError("squeue did not answer within 30s", "check slurmctld")
    with pytest.raises(commands.SlurmError):
        watch.run(_script(error), None)
