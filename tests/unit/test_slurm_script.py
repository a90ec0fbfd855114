"""The sbatch script and command (golden text, plain and pyxis), and what the plan asks of
Slurm for a topology. Pure: no Slurm needed."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from orchestrator.backends.slurm.plan import make_slurm_plan
from orchestrator.backends.slurm.script import build_slurm_plan, sbatch_directives
from orchestrator.errors import ConfigError
from orchestrator.plan import make_job
from orchestrator.runs.lifecycle import SubmitRequest
from orchestrator.slurm_settings import SlurmSettings
from orchestrator.specs import CaseSettings, ClusterSpec, Topology
from tests.support.golden import check_golden

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"

SITE = SlurmSettings(
    partition="gpu",
    account="bench",
    qos="high",
    time_limit="02:00:00",
    gres="gpu",
    sbatch_options=("--exclusive",),
    shared_dir="/shared/orchestrator",
    python="/opt/venv/bin/python",
    socket_ifname="ib0",
)
PYXIS = SlurmSettings(
    partition="gpu",
    gres="gpu",
    pyxis=True,
    container_image="/shared/images/metax-c500.sqsh",
    container_mounts=("/dev/infiniband:/dev/infiniband",),
    shared_dir="/shared/orchestrator",
    python="python3",
)


NODE_LOCAL = SlurmSettings(
    partition="gpu",
    gres="gpu",
    node_dir="/local/orchestrator",
    script_dir="/home/alice/.cache/orchestrator/slurm-scripts",
)


def _cluster(settings: SlurmSettings) -> ClusterSpec:
    return ClusterSpec(
        name="lab",
        vendor="cpu",
        nodes=(),
        backend="slurm",
        case=CaseSettings(data_dir="/shared/data/coco", hparams={"epochs": "2"}),
        slurm=settings,
        source="lab.toml",
    )


def _plan(settings: SlurmSettings, topology: str = "2x8"):
    job = make_job(
        _cluster(settings),
        Topology.parse(topology),
        (),
        run_id="20260115-131500-abc123",
        precision="amp",
        sets={"batch_size": "16", "lr": "0.16"},
    )
    return build_slurm_plan(
        job,
        settings,
        workload_hash="0123456789abcdef",
        vendor_env={"OMP_NUM_THREADS": "1"},
        master_port=29500,
        archive_b64="H4sIAAAAAAAAA+3BAQ0AAADCoPdPbQ8HFAAAAAAAAAAA" if settings.fetch else None,
    )


def _check_golden(name: str, text: str) -> None:
    check_golden(GOLDEN / name, text)


def test_plain_sbatch_script_matches_the_golden_text() -> None:
    _check_golden("sbatch-plain.sh", _plan(SITE).render())


def test_pyxis_sbatch_script_matches_the_golden_text() -> None:
    _check_golden("sbatch-pyxis.sh", _plan(PYXIS).render())


def test_node_local_sbatch_script_matches_the_golden_text() -> None:
    # No shared file system: the workload rides in the script, results are fetched.
    plan = _plan(NODE_LOCAL)
    _check_golden("sbatch-node-local.sh", plan.render())
    # The script sbatch reads: in the user's own folder here, never a shared /tmp name.
    assert plan.script_path == f"{NODE_LOCAL.script_dir}/{plan.job.run_id}.sbatch"
    assert plan.run_dir.startswith("/local/")


def test_topology_asks_slurm_for_nodes_and_accelerators_per_node() -> None:
    plan = _plan(SITE, "2x8")
    opts = sbatch_directives(plan.job, SITE, plan.run_dir)
    assert "--nodes=2" in opts and "--ntasks-per-node=1" in opts and "--gres=gpu:8" in opts
    assert all(f"#SBATCH {o}" in plan.script for o in opts)
    assert plan.sbatch_argv == ("sbatch", "--parsable", f"{plan.run_dir}/job.sbatch")
    one = _plan(SITE, "1x4")
    assert "--nodes=1" in one.script and "--gres=gpu:4" in one.script


def test_every_task_gets_its_node_rank_from_slurm_and_one_failure_ends_all() -> None:
    script = _plan(SITE).script
    step = [ln for ln in script.splitlines() if "torch.distributed.run" in ln][0]
    argv = shlex.split(step)
    assert argv[:3] == ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert '--node-rank="$SLURM_NODEID"' in step and '--master-addr="$MASTER_ADDR"' in step
    assert "--nnodes=2" in argv and "--nproc-per-node=8" in argv
    assert "export ORCHESTRATOR_RUN_ID=20260115-131500-abc123" in script
    assert "set -euo pipefail" in script


def test_plain_script_has_no_container_options_and_pyxis_mounts_shared_and_data() -> None:
    assert "--container-image" not in _plan(SITE).script
    pyxis = _plan(PYXIS)
    assert pyxis.runtime == "docker" and pyxis.image == PYXIS.container_image
    step = [ln for ln in pyxis.script.splitlines() if "torch.distributed.run" in ln][0]
    assert "--container-image=/shared/images/metax-c500.sqsh" in step
    assert (
        "--container-mounts=/shared/orchestrator:/shared/orchestrator,"
        "/shared/data/coco:/shared/data/coco:ro,/dev/infiniband:/dev/infiniband" in step
    )


def test_a_hostile_data_path_stays_one_quoted_argument() -> None:
    from dataclasses import replace

    hostile = '/data/co co\'s "set" $(touch /tmp/pwned) ;x'
    cluster = replace(_cluster(SITE), case=CaseSettings(data_dir=hostile))
    job = make_job(cluster, Topology.parse("1x1"), (), run_id="r1")
    script = build_slurm_plan(job, SITE, workload_hash="x").script
    step = [ln for ln in script.splitlines() if "torch.distributed.run" in ln][0]
    argv = shlex.split(step)
    assert argv[argv.index("--data-dir") + 1] == hostile


def test_nodes_option_is_refused_for_slurm() -> None:
    req = SubmitRequest(topology=Topology.parse("2x1"), node_names=("a", "b"))
    with pytest.raises(ConfigError, match="--nodes does not apply"):
        make_slurm_plan(_cluster(SITE), req)


def test_jobs_sharing_a_node_get_their_own_rendezvous_port() -> None:
    import subprocess

    script = _plan(SITE).render()
    assert '--master-port="$MASTER_PORT"' in script and "--master-port=29500" not in script
    line = next(ln for ln in script.splitlines() if ln.startswith("export MASTER_PORT="))
    ports = {
        subprocess.run(
            ["bash", "-c", f"{line}; echo $MASTER_PORT"],
            env={"SLURM_JOB_ID": str(job_id)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for job_id in (41, 42, 1041)
    }
    assert ports == {"29541", "29542"}  # 1041 wraps onto 41: a thousand jobs apart


def test_an_accelerator_cluster_exports_the_nccl_log_file_and_makes_its_folder() -> None:
    from dataclasses import replace

    job = make_job(
        replace(_cluster(SITE), vendor="nvidia"),
        Topology.parse("2x8"),
        (),
        run_id="20260115-131500-abc123",
    )
    plan = build_slurm_plan(job, SITE, workload_hash="x")
    run_dir = "/shared/orchestrator/runs/20260115-131500-abc123"
    assert f"export NCCL_DEBUG_FILE={run_dir}/nccl/%h.%p.log\n" in plan.script
    assert "export NCCL_DEBUG=INFO\n" in plan.script
    assert '"$RUN_DIR/nccl"' in plan.script.split("mkdir -p", 1)[1].splitlines()[0]
    assert "NCCL_DEBUG" not in _plan(SITE).script  # the cpu cluster: gloo, no NCCL


def test_collect_joins_each_hosts_nccl_files_into_its_node_folder(tmp_path: Path) -> None:
    from dataclasses import replace

    from orchestrator.backends.slurm.collect import collect
    from orchestrator.backends.slurm.script import NodeSlot

    plan = replace(
        _plan(SITE), nodes=(NodeSlot("gpu-a", "gpu-a", 0), NodeSlot("gpu-b", "gpu-b", 1))
    )
    shared = tmp_path / "shared"
    (shared / "nccl").mkdir(parents=True)
    # NCCL_DEBUG_FILE=$RUN_DIR/nccl/%h.%p.log: the short host name, then the pid
    for name, text in {
        "gpu-a.202.log": "a 202\n",
        "gpu-a.201.log": "a 201\n",
        "gpu-b.301.log": "b 301\n",
        "gpu-ab.401.log": "not gpu-a's\n",
    }.items():
        (shared / "nccl" / name).write_text(text)
    assert collect(plan, tmp_path / "run", None, shared) == ""  # type: ignore[arg-type]
    nodes = tmp_path / "run" / "nodes"
    assert (nodes / "gpu-a" / "nccl.log").read_text() == "a 201\na 202\n"
    assert (nodes / "gpu-b" / "nccl.log").read_text() == "b 301\n"
    assert not shared.exists()


@pytest.mark.parametrize(("path", "chars"), [("/data/co:co", "':'"), ("/d,a:t", "',' and ':'")])
def test_a_data_path_pyxis_cannot_mount_is_refused_in_one_line(path: str, chars: str) -> None:
    from dataclasses import replace

    cluster = replace(_cluster(PYXIS), case=CaseSettings(data_dir=path))
    with pytest.raises(ConfigError) as caught:
        make_slurm_plan(cluster, SubmitRequest(Topology.parse("1x1")), "r1")
    assert caught.value.one_line() == (
        f"{path!r} holds {chars}, which pyxis's --container-mounts cannot carry (move or link "
        "it to a path without ',' and ':', and name that in the cluster file)"
    )
    # The plain (no container) script takes the same path, quoted.
    plain = replace(_cluster(SITE), case=CaseSettings(data_dir=path))
    assert (
        shlex.quote(path)
        in make_slurm_plan(plain, SubmitRequest(Topology.parse("1x1")), "r1").script
    )
