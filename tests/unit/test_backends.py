"""The backend seam: one place picks the backend from the cluster spec; both backends plan the
same request their own way, name where it runs, and describe how detached runs are counted;
the CLI's dry run prints exactly the backend's plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from orchestrator import backends
from orchestrator.backends.slurm.backend import DETACH_HINT, SlurmBackend, SlurmRun
from orchestrator.backends.ssh.backend import DETACH_HINT as SSH_DETACH_HINT
from orchestrator.backends.ssh.backend import SshBackend, SshRun
from orchestrator.config import load_cluster
from orchestrator.errors import ConfigError
from orchestrator.queue.enqueue import detach_hints, detached_counts
from orchestrator.runs.lifecycle import SubmitRequest
from orchestrator.specs import Topology

REPO = Path(__file__).resolve().parents[2]


def _ssh_cluster():
    return load_cluster(str(REPO / "examples" / "cluster.toml"))


def _slurm_cluster():
    return load_cluster(str(REPO / "examples" / "cluster-slurm.toml"))


def _req(topology: str = "2x8", **kw) -> SubmitRequest:
    return SubmitRequest(topology=Topology.parse(topology), precision="amp", **kw)


def test_the_cluster_spec_picks_the_backend() -> None:
    assert isinstance(backends.for_cluster(_ssh_cluster()), SshBackend)
    assert isinstance(backends.for_cluster(_slurm_cluster()), SlurmBackend)
    switched = dataclasses.replace(_ssh_cluster(), backend="slurm")
    assert backends.for_cluster(switched).name == "slurm"
    assert [b.name for b in backends.all_backends()] == ["ssh", "slurm"]


def test_an_unknown_backend_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError) as caught:
        backends.by_name("k8s")
    assert caught.value.one_line() == "unknown backend 'k8s' (use one of ssh, slurm)"


def test_ssh_plans_nodes_and_says_where() -> None:
    planned = SshBackend().plan(_ssh_cluster(), _req(), run_id="20261128-120000-abcdef")
    assert isinstance(planned, SshRun)
    assert planned.job.run_id == "20261128-120000-abcdef"
    assert planned.where() == "on c500-01, c500-02"
    assert planned.render() == planned.plan.render()
    text = planned.render()
    assert text.startswith("run 20261128-120000-abcdef: faster_rcnn on cluster lab-metax")
    assert "node c500-02 (node rank 1, root@c500-02.lab.example:22)" in text


def test_slurm_plans_a_batch_job_and_refuses_node_names() -> None:
    backend = SlurmBackend()
    planned = backend.plan(_slurm_cluster(), _req(), run_id="20261128-120000-abcdef")
    assert isinstance(planned, SlurmRun)
    assert planned.where() == "through Slurm"
    text = planned.render()
    assert "backend slurm\n" in text and "\n#!/bin/bash\n#SBATCH" in text  # then the script
    assert text.endswith(
        "sbatch --parsable /shared/orchestrator/runs/20261128-120000-abcdef/job.sbatch\n"
    )
    with pytest.raises(ConfigError, match="--nodes does not apply to the slurm backend"):
        backend.plan(_slurm_cluster(), _req(node_names=("n1",)))


def test_detached_runs_are_counted_per_backend_in_one_sentence() -> None:
    ssh, slurm = _ssh_cluster(), _slurm_cluster()
    items = [(ssh, _req(), {}), (slurm, _req(), {}), (ssh, _req(), {})]
    assert detached_counts(items) == [("queued", 2), ("submitted to Slurm", 1)]
    assert detach_hints(items) == [SSH_DETACH_HINT, DETACH_HINT]
    assert detach_hints(items[:1]) == [SSH_DETACH_HINT]
    assert "`orchestrator worker`" in SSH_DETACH_HINT


def test_a_backend_that_took_no_run_is_not_counted() -> None:
    ssh_only = [(_ssh_cluster(), _req(), {})] * 3
    assert detached_counts(ssh_only) == [("queued", 3)]
    slurm_only = [(_slurm_cluster(), _req(), {})]
    assert detached_counts(slurm_only) == [("submitted to Slurm", 1)]
