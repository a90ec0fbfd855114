"""JobSpec + SlurmSettings -> the sbatch script and the sbatch command (pure: no I/O).

One task per node. The batch shell resolves the master address from the first host of the
allocation (its NodeAddr), captures every node's environment with the node probe (one step,
one task per node), then starts torchrun on every node in one step whose tasks take their node
rank from SLURM_NODEID. `--kill-on-bad-exit=1`: one failing task ends the whole step, and the
script's `set -e` ends the job. `orchestrator submit --dry-run` prints exactly this.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from orchestrator import monitor
from orchestrator.backends.slurm import nodelocal
from orchestrator.errors import ConfigError
from orchestrator.plan import WORKLOAD_MODULE, nccl_log_env, workload_args
from orchestrator.slurm_settings import SlurmSettings
from orchestrator.specs import JobSpec
from orchestrator.states import Runtime
from orchestrator.tables import control_character

PROBE_FILE = "node_probe.py"  # staged next to the workload source under shared_dir
PROBE_CHECK_FILE = "probe_check.py"  # fails the job when a node's probe failed a check
MONITOR_PROBE_FILE = "monitor_probe.py"  # the sampler started beside torchrun on every node
NODE_MARK = "@NODE@"  # replaced by $SLURM_NODEID in the sampler's output path
NODELIST_FILE = "nodelist"  # the allocation's hosts, in node-rank order
JOB_OUTPUT = "slurm-job.out"  # the batch shell's own stdout and stderr
EXIT_FILE = "job.exit"  # the batch shell's exit status, for when Slurm has forgotten the job


@dataclass(frozen=True)
class NodeSlot:
    """A node of the allocation, known once Slurm has placed the job (duck-types NodePlan for
    the manifest: .node.name, .node.address, .node_rank)."""

    name: str
    address: str
    node_rank: int

    @property
    def node(self) -> NodeSlot:
        return self


@dataclass(frozen=True)
class SlurmPlan:
    job: JobSpec
    settings: SlurmSettings
    run_dir: str  # on the shared file system
    workload_dir: str  # content-addressed workload source (plus the node probe)
    env: tuple[tuple[str, str], ...]
    script: str
    sbatch_argv: tuple[str, ...]
    master_port: int
    runtime: Runtime  # 'host', or 'docker' for a pyxis container
    image: str | None = None
    image_id: str | None = None
    hardware_label: str | None = None
    monitor_tool: str | None = None
    nodes: tuple[NodeSlot, ...] = ()  # filled in once the job has its allocation
    local_script: str | None = None  # node_dir sites: the script is written here, not shared

    @property
    def output_dir(self) -> str:
        return f"{self.run_dir}/ranks"

    @property
    def script_path(self) -> str:
        return self.local_script or f"{self.run_dir}/job.sbatch"

    def rank0_log(self) -> str:
        return f"{self.run_dir}/logs/node-0.log"

    def render(self) -> str:
        """What --dry-run prints: the script, then the command that submits it."""
        job = self.job
        head = (
            f"# run {job.run_id}: {job.case} on cluster {job.cluster.name} (vendor "
            f"{job.cluster.vendor}), topology {job.topology}, precision {job.precision}, "
            f"backend slurm\n"
            f"# stage: workload source -> {self.workload_dir}\n"
            f"# script -> {self.script_path}\n"
        )
        return head + self.script + "\n# submitted with:\n" + shlex.join(self.sbatch_argv) + "\n"


def slurm_env(
    job: JobSpec, settings: SlurmSettings, vendor_env: Mapping[str, str], workload_dir: str
) -> dict[str, str]:
    env = {"ORCHESTRATOR_RUN_ID": job.run_id, "PYTHONUNBUFFERED": "1"}
    env.update(vendor_env)
    if settings.socket_ifname:
        env["NCCL_SOCKET_IFNAME"] = settings.socket_ifname
        env["GLOO_SOCKET_IFNAME"] = settings.socket_ifname
    env["PYTHONPATH"] = workload_dir
    return env


def probe_args(job: JobSpec, settings: SlurmSettings, smi: str | None) -> dict[str, object]:
    """The node probe's input for the nodes of a Slurm job (the same keys the SSH preflight sends)."""
    return {
        "nproc": job.topology.nproc_per_node,
        "data_dir": job.cluster.case.data_dir,
        "weights": job.cluster.case.backbone_weights,
        "workdir": settings.root,
        "min_free_gb": 1.0,
        "ib_hcas": [],
        "smi": smi,
        "need_torch": True,
        "count_accelerators": job.cluster.vendor != "cpu",
        "need_docker": False,
        "docker_host": None,
    }


def sbatch_directives(job: JobSpec, settings: SlurmSettings, run_dir: str) -> list[str]:
    topo = job.topology
    opts = [
        f"--job-name=orchestrator-{job.run_id}",
        f"--nodes={topo.nnodes}",
        "--ntasks-per-node=1",
        f"--chdir={'/tmp' if settings.fetch else run_dir}",
        # node_dir sites: no folder of ours exists on the node yet (nodelocal.output_lines)
        f"--output={'/dev/null' if settings.fetch else run_dir + '/' + JOB_OUTPUT}",
    ]
    if settings.partition:
        opts.append(f"--partition={settings.partition}")
    if settings.account:
        opts.append(f"--account={settings.account}")
    if settings.qos:
        opts.append(f"--qos={settings.qos}")
    if settings.time_limit:
        opts.append(f"--time={settings.time_limit}")
    if settings.gres:
        opts.append(f"--gres={settings.gres}:{topo.nproc_per_node}")
    opts += list(settings.sbatch_options)
    return opts


def pyxis_mount(path: str, read_only: bool = False) -> str:
    """SRC:DST[:ro] of --container-mounts. pyxis splits the list at ',' and each mount at ':'
    with no quoting, so a path holding either is refused rather than mounted as another path."""
    bad = sorted({c for c in path if c in ",:"})
    if bad:
        raise ConfigError(
            f"{path!r} holds {' and '.join(repr(c) for c in bad)}, which pyxis's "
            "--container-mounts cannot carry",
            "move or link it to a path without ',' and ':', and name that in the cluster file",
        )
    return f"{path}:{path}{':ro' if read_only else ''}"


def render_script(
    job: JobSpec,
    settings: SlurmSettings,
    *,
    run_dir: str,
    workload_dir: str,
    env: Mapping[str, str],
    master_port: int,
    smi: str | None = None,
    archive_b64: str | None = None,
) -> str:
    topo = job.topology
    q = shlex.quote
    python = settings.python
    container: list[str] = []
    if settings.pyxis:
        assert settings.container_image
        mounts = [pyxis_mount(settings.root)]
        data = job.cluster.case.data_dir
        if data.startswith("/"):
            mounts.append(pyxis_mount(data, read_only=True))
        weights = job.cluster.case.backbone_weights
        if weights.startswith("/"):
            mounts.append(pyxis_mount(weights, read_only=True))
        mounts += list(settings.container_mounts)
        container = [
            f"--container-image={settings.container_image}",
            f"--container-mounts={','.join(mounts)}",
            f"--container-workdir={run_dir}",
        ]
    step = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *container]
    torchrun = [
        python,
        f"--nnodes={topo.nnodes}",
        f"--nproc-per-node={topo.nproc_per_node}",
        "--max-restarts=0",
    ]
    workload = ["-m", WORKLOAD_MODULE, *workload_args(job, f"{run_dir}/ranks")]
    # Per task: the monitor sampler in the background, then torchrun exec'd in the task's own
    # process (so Slurm's signals reach it); the sampler stops when torchrun, its parent after
    # the exec, exits. The node rank comes from Slurm; "$@" carries the rest, quoted here once.
    per_task = (
        '"$0" "$ORCHESTRATOR_MONITOR" "${ORCHESTRATOR_MONITOR_ARGS//'
        + NODE_MARK
        + '/$SLURM_NODEID}" & '
        'exec "$0" -m torch.distributed.run --node-rank="$SLURM_NODEID" '
        '--master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" "$@"'
    )
    sampler = monitor.sampler_args(
        [smi] if smi else [], f"{run_dir}/nodes/monitor-{NODE_MARK}.jsonl", monitor.interval_s()
    )
    sampler["follow_parent"] = True
    # Jobs that share a node (a 1x1 beside a 2x1, or any partition that is not exclusive) must
    # not share a rendezvous port: offset master_port by the job id.
    port_span = max(1, min(1000, 65536 - master_port))
    probe_py, check_py = f"{workload_dir}/{PROBE_FILE}", f"{workload_dir}/{PROBE_CHECK_FILE}"
    probe_json = json.dumps(probe_args(job, settings, smi), sort_keys=True)
    probe_cmd = shlex.join([python, probe_py, probe_json])
    check_cmd = shlex.join([python, check_py]) + ' "$RUN_DIR"/nodes/probe-*.json'
    directives = sbatch_directives(job, settings, run_dir)
    _one_line_each(
        [*directives, *env, *env.values(), run_dir, workload_dir, *step, *torchrun, *workload]
    )
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {opt}" for opt in directives]
    lines += [
        "set -euo pipefail",
        "",
        "# the run's identity and the vendor environment (every task inherits them)",
        *[f"export {k}={q(v)}" for k, v in sorted(env.items())],
        *(nodelocal.private_root_lines(settings.root) if settings.fetch else []),
        f"RUN_DIR={q(run_dir)}",
        'mkdir -p "$RUN_DIR/ranks" "$RUN_DIR/logs" "$RUN_DIR/nodes" "$RUN_DIR/nccl"',
        *(
            [*nodelocal.output_lines(JOB_OUTPUT), *nodelocal.finish_lines(EXIT_FILE)]
            if settings.fetch
            else [
                "# the exit status, for a follower that comes after Slurm has forgotten the job",
                f'trap \'echo "$?" > "$RUN_DIR/{EXIT_FILE}"\' EXIT',
            ]
        ),
        *(
            nodelocal.unpack_lines(archive_b64 or "", workload_dir, step, settings.root)
            if settings.fetch
            else []
        ),
        "# the monitor sampler (docs/monitors.md): one file per node, nodes/monitor-<i>.jsonl",
        f"export ORCHESTRATOR_MONITOR={q(workload_dir + '/' + MONITOR_PROBE_FILE)}",
        f"export ORCHESTRATOR_MONITOR_ARGS={q(json.dumps(sampler, sort_keys=True))}",
        "",
        "# the allocation's hosts in node-rank order; master: the first host's address, a port",
        "# of this job's own (master_port + job id modulo the span)",
        f'scontrol show hostnames "$SLURM_JOB_NODELIST" > "$RUN_DIR/{NODELIST_FILE}"',
        f'FIRST_HOST=$(head -n 1 "$RUN_DIR/{NODELIST_FILE}")',
        'MASTER_ADDR=$(scontrol -o show node "$FIRST_HOST" | tr " " "\\n" '
        "| sed -n 's/^NodeAddr=//p')",
        'export MASTER_ADDR="${MASTER_ADDR:-$FIRST_HOST}"',
        f"export MASTER_PORT=$(( {master_port} + SLURM_JOB_ID % {port_span} ))",
        'echo "orchestrator: allocation $SLURM_JOB_NODELIST, master $MASTER_ADDR:$MASTER_PORT"',
        "",
        "# environment and preflight on every allocated node",
        *(
            nodelocal.probe_lines(step, python, probe_py, probe_json, check_py)
            if settings.fetch
            else [
                shlex.join([*step, "--output=" + run_dir + "/nodes/probe-%n.json"])
                + " "
                + probe_cmd,
                check_cmd,
            ]
        ),
        "",
        "# the benchmark: torchrun on every node, one failing task ends them all",
        shlex.join([*step, "--output=" + run_dir + "/logs/node-%n.log"])
        + " bash -c "
        + q(per_task)
        + " "
        + shlex.join([*torchrun, *workload]),
        "",
    ]
    return "\n".join(lines)


def _one_line_each(values: list[str]) -> None:
    """What the cluster file loader refuses, checked again where it would become script text
    (values from the command line and the store pass here too): a newline in a value would
    start a line of its own in the batch script."""
    for value in values:
        found = control_character(value)
        if found is not None:
            raise ConfigError(
                f"{value!r} holds the control character {found}: it would become a line of "
                "the sbatch script",
                "write the setting on one line (cluster file, --set, the run's options)",
            )


def build_slurm_plan(
    job: JobSpec,
    settings: SlurmSettings,
    *,
    workload_hash: str,
    vendor_env: Mapping[str, str] | None = None,
    master_port: int = 29500,
    hardware_label: str | None = None,
    monitor_tool: str | None = None,
    archive_b64: str | None = None,
) -> SlurmPlan:
    root = PurePosixPath(settings.root)
    run_dir = str(root / "runs" / job.run_id)
    workload_dir = str(root / "workload" / workload_hash)
    env = slurm_env(job, settings, vendor_env or {}, workload_dir)
    if job.cluster.vendor != "cpu":  # NCCL's lines per process (plan.nccl_log_env); vendor's win
        env = {**nccl_log_env(run_dir), **env}
    script = render_script(
        job,
        settings,
        run_dir=run_dir,
        workload_dir=workload_dir,
        env=env,
        master_port=master_port,
        smi=monitor_tool,
        archive_b64=archive_b64,
    )
    local = f"{settings.script_dir}/{job.run_id}.sbatch" if settings.fetch else None
    argv = ("sbatch", "--parsable", local or f"{run_dir}/job.sbatch")
    return SlurmPlan(
        job=job,
        settings=settings,
        run_dir=run_dir,
        workload_dir=workload_dir,
        env=tuple(sorted(env.items())),
        script=script,
        sbatch_argv=argv,
        master_port=master_port,
        runtime="docker" if settings.pyxis else "host",
        image=settings.container_image if settings.pyxis else None,
        hardware_label=hardware_label,
        monitor_tool=monitor_tool,
        local_script=local,
    )
