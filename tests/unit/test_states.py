"""Every list of states is defined once (orchestrator/states.py) and used everywhere it is
offered or checked; the workload's own copy agrees; Slurm's states map to run statuses."""

from __future__ import annotations

import click
import pytest

from orchestrator import states
from orchestrator.backends.slurm.commands import FINAL_STATES, SLURM_STATES, JobState
from orchestrator.cli.runs_cmd import STATUS_CHOICES
from orchestrator.cli.submit_cmd import submit
from orchestrator.store.models import Campaign, Run
from workload.faster_rcnn import hparams, result_format


def test_the_lists_hold_exactly_the_documented_values() -> None:
    assert states.RUN_STATUSES == ("queued", "running", "succeeded", "failed", "cancelled", "lost")
    assert states.FINAL_STATUSES == ("succeeded", "failed", "cancelled", "lost")
    assert states.CAMPAIGN_STATUSES == ("queued", "running", "finished", "cancelled")
    assert states.BACKENDS == ("ssh", "slurm")
    assert states.RUNTIMES == ("host", "docker")
    assert states.PRECISIONS == ("fp32", "amp", "fp16")


def test_the_workload_s_own_precisions_agree_with_the_control_plane() -> None:
    assert tuple(result_format.PRECISIONS) == states.PRECISIONS
    assert hparams.PRECISIONS is result_format.PRECISIONS  # one copy inside the workload too


def _choices(command: click.Command, name: str) -> tuple[str, ...]:
    option = next(p for p in command.params if p.name == name)
    assert isinstance(option.type, click.Choice)
    return tuple(option.type.choices)


def test_the_cli_offers_the_states_lists() -> None:
    assert _choices(submit, "precision") == states.PRECISIONS
    assert _choices(submit, "backend") == states.BACKENDS
    assert tuple(STATUS_CHOICES.choices) == states.RUN_STATUSES


def test_the_store_checks_the_states_lists() -> None:
    def check(model: type, name: str = "status") -> str:
        constraint = next(c for c in model.__table__.constraints if str(c.name).endswith(name))
        return str(constraint.sqltext)

    assert (
        check(Run) == "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'lost')"
    )
    assert check(Campaign) == "status IN ('queued', 'running', 'finished', 'cancelled')"


def test_run_status_reads_known_values_and_refuses_others() -> None:
    assert states.run_status("lost") == "lost"
    with pytest.raises(ValueError, match="unknown run status 'done'; one of queued, running"):
        states.run_status("done")
    assert states.is_final("cancelled") and not states.is_final("running")


@pytest.mark.parametrize(
    ("slurm", "status"),
    [
        ("PENDING", "queued"),
        ("CONFIGURING", "queued"),
        ("RUNNING", "running"),
        ("COMPLETING", "running"),
        ("COMPLETED", "succeeded"),
        ("CANCELLED", "cancelled"),
        ("FAILED", "failed"),
        ("TIMEOUT", "failed"),
        ("NODE_FAIL", "failed"),
        ("OUT_OF_MEMORY", "failed"),
        ("PREEMPTED", "failed"),
        ("SOMETHING_NEW", "running"),  # an unknown state is followed, not ended
    ],
)
def test_slurm_states_map_to_run_statuses(slurm: str, status: str) -> None:
    job = JobState("42", slurm)
    assert job.run_status == status
    assert job.final == (status in states.FINAL_STATUSES)


def test_slurm_final_states_are_exactly_those_mapped_to_a_final_status() -> None:
    assert FINAL_STATES == {s for s, st in SLURM_STATES.items() if st in states.FINAL_STATUSES}
    assert "COMPLETING" not in FINAL_STATES and "DEADLINE" in FINAL_STATES
    assert set(SLURM_STATES.values()) <= set(states.RUN_STATUSES)
