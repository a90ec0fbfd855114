"""Slurm runs handed to Slurm without a process waiting on them (`campaign submit`,
`submit --detach`): every job is submitted held, the runs rows are written in the caller's
one transaction, and only then are the jobs released. So a campaign is all or nothing: any
failure before the commit cancels every held job and removes its staged folder."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from orchestrator.backends.slurm import commands
from orchestrator.backends.slurm.script import SlurmPlan
from orchestrator.backends.slurm.stage import stage, submit_staged


def held_argv(plan: SlurmPlan) -> tuple[str, ...]:
    """The plan's sbatch command with --hold (the job waits for `scontrol release`)."""
    return (plan.sbatch_argv[0], "--hold", *plan.sbatch_argv[1:])


@contextmanager
def held_jobs(plans: Sequence[SlurmPlan]) -> Iterator[list[str]]:
    """Stage and submit every plan held; yields the job ids (in plan order). If the block
    raises, every held job is cancelled and its folder removed; if it returns, the jobs are
    released."""
    job_ids: list[str] = []
    try:
        for plan in plans:
            stage(plan)
            job_ids.append(submit_staged(plan, held_argv(plan)))
        yield job_ids
    except BaseException:
        for job_id in job_ids:
            commands.scancel_quietly(job_id)  # held, so it never ran
        for plan in plans:
            shutil.rmtree(plan.run_dir, ignore_errors=True)
        raise
    commands.release(job_ids)
