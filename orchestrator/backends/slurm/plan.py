"""What a Slurm run is before it runs: its plan (the batch script and the sbatch command, with
the workload carried in the script on node_dir sites) and its manifest. Pure but for reading
the workload source."""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path
from typing import Any

from orchestrator.backends.slurm.script import (
    MONITOR_PROBE_FILE,
    PROBE_CHECK_FILE,
    PROBE_FILE,
    NodeSlot,
    SlurmPlan,
    build_slurm_plan,
)
from orchestrator.errors import ConfigError
from orchestrator.runfolder.folder import ImageRef, NodeRef, RunManifest
from orchestrator.runs.lifecycle import SubmitRequest, job_for, manifest_for
from orchestrator.slurm_settings import SlurmSettings
from orchestrator.specs import ClusterSpec
from orchestrator.states import RunStatus
from orchestrator.workload_source import (
    MONITOR_PROBE_PATH,
    NODE_PROBE_PATH,
    PROBE_CHECK_PATH,
    workload_files,
    workload_hash,
)


def settings_of(cluster: ClusterSpec) -> SlurmSettings:
    return cluster.slurm or SlurmSettings()


def make_slurm_plan(
    cluster: ClusterSpec, req: SubmitRequest, run_id: str | None = None
) -> SlurmPlan:
    from orchestrator.images.profiles import load_profile

    if req.node_names:
        raise ConfigError(
            "--nodes does not apply to the slurm backend", "Slurm chooses the nodes; drop --nodes"
        )
    job = job_for(cluster, req, (), run_id)
    profile = load_profile(cluster.vendor)
    runtime = profile.runtime
    return build_slurm_plan(
        job,
        settings_of(cluster),
        workload_hash=workload_hash(),
        vendor_env=runtime.env,
        master_port=cluster.master_port,
        hardware_label=profile.label,
        monitor_tool=runtime.monitor[0] if runtime.monitor else None,
        archive_b64=_workload_archive() if settings_of(cluster).fetch else None,
    )


def helper_files() -> tuple[tuple[Path, str], ...]:
    """The node-side helpers staged beside the workload source (not in its hash)."""
    return (
        (NODE_PROBE_PATH, PROBE_FILE),
        (PROBE_CHECK_PATH, PROBE_CHECK_FILE),
        (MONITOR_PROBE_PATH, MONITOR_PROBE_FILE),
    )


def _workload_archive() -> str:
    """The workload source and the helpers as base64 tar.gz, for a script that carries them
    (node_dir sites). Fixed mtimes: the same source gives the same script."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        for rel, local in [*workload_files(), *((name, p) for p, name in helper_files())]:
            data = Path(local).read_bytes()
            info = tarfile.TarInfo(str(rel))
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return base64.b64encode(buf.getvalue()).decode()


def _placeholders(plan: SlurmPlan) -> tuple[NodeSlot, ...]:
    """Before Slurm places the job its nodes are unknown; the row still lists nnodes."""
    return tuple(
        NodeSlot(f"unallocated-{i}", "unallocated", i) for i in range(plan.job.topology.nnodes)
    )


def slurm_manifest(
    plan: SlurmPlan, req: SubmitRequest, status: RunStatus, job_id: str | None, **extra: Any
) -> RunManifest:
    """The run's manifest: backend slurm, its job id, the allocation (placeholders before)."""
    return manifest_for(
        plan.job,
        req,
        status,
        backend="slurm",
        runtime=plan.runtime,
        nodes=[NodeRef(s.name, s.address, s.node_rank) for s in plan.nodes or _placeholders(plan)],
        image=ImageRef(plan.image, plan.image_id) if plan.image else None,
        hardware_label=plan.hardware_label,
        slurm_job_id=job_id,
        **extra,
    )
