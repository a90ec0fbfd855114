"""Slurm's final job states -> the run's status and reason (orchestrator.backends.slurm.collect.ending),
and the held submit of detached runs (pure logic)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.backends.slurm.collect import ending
from orchestrator.backends.slurm.commands import JobState
from orchestrator.backends.slurm.detached import held_argv
from orchestrator.backends.slurm.script import NodeSlot, SlurmPlan, build_slurm_plan
from orchestrator.plan import make_job
from orchestrator.slurm_settings import SlurmSettings
from orchestrator.specs import ClusterSpec, Topology


def _plan() -> SlurmPlan:
    settings = SlurmSettings(shared_dir="/shared/o")
    cluster = ClusterSpec(name="c", vendor="cpu", nodes=(), backend="slurm", slurm=settings)
    job = make_job(cluster, Topology.parse("2x1"), (), run_id="r1")
    plan = build_slurm_plan(job, settings, workload_hash="h")
    return SlurmPlan(
        **{**plan.__dict__, "nodes": (NodeSlot("n1", "n1", 0), NodeSlot("n2", "n2", 1))}
    )


@pytest.mark.parametrize(
    ("state", "reason", "exit_code", "status", "words"),
    [
        ("COMPLETED", None, "0:0", "succeeded", None),
        ("TIMEOUT", "TimeLimit", "0:15", "failed", "slurm job 7 ended TIMEOUT (TimeLimit)"),
        ("NODE_FAIL", "NodeDown", "0:0", "failed", "slurm job 7 ended NODE_FAIL (NodeDown)"),
        ("OUT_OF_MEMORY", None, "0:125", "failed", "slurm job 7 ended OUT_OF_MEMORY"),
        ("PREEMPTED", None, "0:15", "failed", "slurm job 7 ended PREEMPTED"),
        ("CANCELLED", None, "0:15", "cancelled", "slurm job 7 ended CANCELLED: scancel"),
    ],
)
def test_every_final_state_maps_to_a_status_and_a_reason(
    tmp_path: Path, state: str, reason: str | None, exit_code: str, status: str, words: str | None
) -> None:
    got, failure = ending(_plan(), JobState("7", state, reason, exit_code, "n[1-2]"), tmp_path)
    assert got == status
    if words is None:
        assert failure is None
    else:
        assert failure is not None and words in failure.reason


def test_a_failed_job_names_the_rank_from_torchrun_s_summary(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "n2.log").write_text(
        "\n".join(
            [
                "Root Cause (first observed failure):",
                "[0]:",
                "  host      : n2",
                "  rank      : 1 (local_rank: 0)",
                "  exitcode  : -9 (pid: 42)",
                "  traceback : Signal 9 (SIGKILL) received by PID 42",
            ]
        )
    )
    status, failure = ending(_plan(), JobState("7", "FAILED", None, "1:0", "n[1-2]"), tmp_path)
    assert status == "failed" and failure is not None
    assert failure.node == "n2" and failure.rank == 1
    assert "rank 1 on node n2" in failure.reason and "slurm job 7 ended FAILED" in failure.reason


def test_detached_runs_are_submitted_held() -> None:
    plan = _plan()
    argv = held_argv(plan)
    assert argv[:3] == ("sbatch", "--hold", "--parsable") and argv[-1] == plan.script_path


def test_a_job_that_wrote_nothing_points_at_the_shared_folder(tmp_path: Path) -> None:
    plan = SlurmPlan(**{**_plan().__dict__, "nodes": ()})
    state = JobState("7", "FAILED", "NonZeroExitCode", "1:0", "n1")
    status, failure = ending(plan, state, tmp_path)
    assert status == "failed" and failure is not None
    assert "slurm.shared_dir mounted at the same path on every node" in failure.reason


def test_a_job_slurm_has_forgotten_ends_as_its_exit_file_says(tmp_path: Path) -> None:
    from orchestrator.backends.slurm.collect import state_from_exit_file

    plan = SlurmPlan(**{**_plan().__dict__, "run_dir": str(tmp_path), "nodes": ()})
    assert state_from_exit_file(plan, "7", tmp_path) is None  # no file: nothing is known
    (tmp_path / "nodelist").write_text("n1\nn2\n")
    (tmp_path / "job.exit").write_text("0\n")
    state = state_from_exit_file(plan, "7", tmp_path)
    assert state is not None and (state.state, state.node_list) == ("COMPLETED", "n1,n2")
    (tmp_path / "job.exit").write_text("137\n")
    state = state_from_exit_file(plan, "7", tmp_path)
    assert state is not None and (state.state, state.exit_code) == ("FAILED", "137:0")
    status, failure = ending(plan, state, tmp_path)
    assert status == "failed" and failure is not None and "no longer knows" in failure.reason


def test_one_squeue_line_per_job_gives_state_reason_nodes_and_comment() -> None:
    from orchestrator.backends.slurm.board import parse_squeue

    states = parse_squeue(
        "12|PENDING|Priority|(null)|(null)\n"
        "13|RUNNING|None|n[1-2]|orchestrator-fetch-ready\n"
        "garbage line\n"
    )
    assert states["12"] == JobState("12", "PENDING", "Priority", None, None, None)
    assert states["13"].node_list == "n[1-2]" and states["13"].reason is None
    assert states["13"].comment == "orchestrator-fetch-ready" and len(states) == 2
